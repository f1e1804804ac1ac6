"""A class of students against a real `streamlit run` server: throughput, responsiveness, memory, faults.

Every student has a private workspace. Most are simulated: each speaks the dashboard's own
websocket protocol, as a browser tab does (`streamlit_session.py`), without the cost of a
browser; a few more are real browser contexts (headless Chromium through Playwright), some of
which upload a zip of their own. The teacher publishes a small dataset; the other students pick
it; each then trains a short run. The script prints runs finished, failed and lost, the time
until the last run finished against one run alone times the number of runs, the server's
response times during the load, and peak memory of the server and of its workers. Then a fault
round: a worker killed mid-training (that run fails, the next one finishes), and the server
killed mid-training and started again (every run folder readable, each run finished or
interrupted with a saved model).

    python benchmarks/classroom.py                       # 30 simulated + 4 browsers, local engine then Ray
    python benchmarks/classroom.py --engine ray --students 10 --browsers 2
    python benchmarks/classroom.py --smoke               # 2 simulated + 1 browser, local engine, no fault round
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import parse_qs

from common import DATASETS, ROOT, machine_line, print_table, private_keras_home, scratch_dir
from streamlit_session import Session, SessionError

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
TEACHER_KEY = "classroom-benchmark"
SECOND = 1000  # Playwright counts milliseconds


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=30, help="simulated students, one workspace each")
    parser.add_argument("--browsers", type=int, default=4, help="students in real browser contexts, besides")
    parser.add_argument("--uploaders", type=int, default=2, help="browser students who upload their own zip")
    parser.add_argument("--engine", choices=("local", "ray", "both"), default="both")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each student's run")
    parser.add_argument("--per-class", type=int, default=20, help="images per class of the datasets")
    parser.add_argument("--workers", type=int, default=None, help="TLCORE_WORKERS of the server")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a student waits for its run")
    parser.add_argument("--no-faults", action="store_true", help="skip the fault round")
    parser.add_argument("--smoke", action="store_true", help="2 simulated students and 1 browser, local engine, "
                                                             "no fault round")
    args = parser.parse_args()
    if args.smoke:
        args.students, args.browsers, args.uploaders, args.engine = 2, 1, 1, "local"
        args.no_faults, args.per_class, args.timeout = True, 8, 150
    args.uploaders = min(args.uploaders, args.browsers)
    return args


def progress(message: str) -> None:
    """A line on stderr as each step ends, so that a slow or stuck round shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# The server and what it runs ---------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`streamlit run app.py` with its own folders; started again on the same folders after a kill."""

    def __init__(self, folder: Path, engine: str, workers: int | None):
        self.folder = folder
        self.env = {**os.environ, "TLCORE_HOME": str(folder / "home"), "TLCORE_RUNS": str(folder / "runs"),
                    "TLCORE_ENGINE": engine, "TLCORE_TEACHER_KEY": TEACHER_KEY, "TF_CPP_MIN_LOG_LEVEL": "2",
                    **({"TLCORE_WORKERS": str(workers)} if workers else {})}
        self.process = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Starts the server; the seconds until it answers its health check."""
        log = open(self.folder / "server.log", "a")
        command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                   "--server.port", str(self.port), "--server.address", "127.0.0.1",
                   "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
        started = time.perf_counter()
        self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        while time.perf_counter() - started < 120:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as answer:
                    if answer.read().strip() == b"ok":
                        return time.perf_counter() - started
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the server did not start: {(self.folder / 'server.log').read_text()[-2000:]}")

    def kill(self) -> None:
        """Kills the server alone, as `kill -9` would (its workers see it gone)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every process started under `pid`, by any of its threads (Ray's are started by one of its own)."""
    children, queue = [], [pid]
    while queue:
        parent = queue.pop()
        found = []
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
        children += found
        queue += found
    return children


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Probe:
    """Samples the server's memory and its answers to page requests while the class works."""

    def __init__(self, server: Server):
        self.server = server
        self.latencies: list[float] = []
        self.peak_server = 0.0
        self.peak_worker = 0.0
        self.peak_workers = 0.0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()

    def sample(self) -> None:
        while not self.stopping.wait(0.5):
            pid = self.server.process.pid
            self.peak_server = max(self.peak_server, rss_mb(pid))
            workers = [rss_mb(child) for child in descendants(pid)]
            self.peak_worker = max([self.peak_worker, *workers])
            self.peak_workers = max(self.peak_workers, sum(workers))
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(f"{self.server.url}/", timeout=30) as answer:
                    answer.read()
                self.latencies.append(time.perf_counter() - start)
            except OSError:
                self.latencies.append(float("inf"))


# Students --------------------------------------------------------------------------------------------

async def open_page(page, title: str) -> None:
    await page.get_by_test_id("stSidebarNav").get_by_role("link", name=title, exact=True).click()
    await page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=120 * SECOND)


def new_result(kind: str) -> dict:
    return {"kind": kind, "run": None, "status": "lost", "seconds": None}


async def simulated_student(url: str, epochs: int, timeout: float) -> dict:
    """A student over the websocket: picks the teacher's dataset and trains; what happened and when."""
    result = new_result("simulated")
    try:
        opened = time.perf_counter()
        async with Session(url) as session:
            result["first_page"] = time.perf_counter() - opened
            await session.click("Use the teacher's dataset")
            if not session.shows("Validation images"):
                raise SessionError("the teacher's dataset was not chosen")
            await session.open_page("Train")
            await session.set_number("Epochs", epochs)
            clicked = time.perf_counter()
            await session.click("Start training")
            result["run"] = parse_qs(session.query).get("job", [None])[0]
            ended = await session.wait_for_text("Training finished", "Training failed", timeout=timeout)
            result["seconds"] = time.perf_counter() - clicked
            result["ended_at"] = time.perf_counter()
            result["status"] = "finished" if ended == "Training finished" else "failed"
    except Exception as error:  # noqa: BLE001  (a student who got stuck is reported as lost)
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    progress(f"simulated student: run {result['run']} {result['status']} {result.get('error', '')}")
    return result


async def browser_student(browser, url: str, upload: Path | None, epochs: int, timeout: float,
                          shots: Path | None = None) -> dict:
    """A student in a browser context: uploads `upload` (or picks the teacher's dataset) and trains;
    what happened and when (a screenshot in `shots` when it got stuck)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(timeout * SECOND)
    result = new_result("browser")
    try:
        opened = time.perf_counter()
        await page.goto(url)
        await page.get_by_role("heading", name="Data", exact=True).first.wait_for()
        result["first_page"] = time.perf_counter() - opened
        if upload is not None:
            await page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(upload))
        else:
            await page.get_by_role("button", name="Use the teacher's dataset").click()
        await page.get_by_text("Images per class and split").first.wait_for()
        await open_page(page, "Train")
        field = page.get_by_label("Epochs", exact=True)
        await field.fill(str(epochs))
        await field.press("Enter")
        await page.wait_for_function(
            "(v) => [...document.querySelectorAll('input')].some(i => i.getAttribute('aria-label') === 'Epochs' && i.value === v)",
            arg=str(epochs))
        clicked = time.perf_counter()
        await page.get_by_role("button", name="Start training").click()
        await page.wait_for_url("**job=*")
        result["run"] = page.url.split("job=")[1].split("&")[0]
        ended = page.get_by_text("Training finished").or_(page.get_by_text("Training failed"))
        await ended.first.wait_for()
        result["seconds"] = time.perf_counter() - clicked
        result["ended_at"] = time.perf_counter()
        result["status"] = "finished" if await page.get_by_text("Training finished").count() else "failed"
    except Exception as error:  # noqa: BLE001  (a student who got stuck is reported as lost)
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(Exception):
                await page.screenshot(path=str(shots / f"stuck-{id(page)}.png"))
    finally:
        await context.close()
    progress(f"browser student: run {result['run']} {result['status']} {result.get('error', '')}")
    return result


async def launch(playwright):
    # Chromium keeps a socket in its temporary folder, whose path must stay short (a deep TMPDIR
    # such as a test's makes it refuse to start).
    return await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                            env={**os.environ, "TMPDIR": "/tmp"}, timeout=120 * SECOND)


async def first_visit(url: str) -> float:
    """Seconds until the first page of a fresh server is drawn in a new browser."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            page = await browser.new_page()
            started = time.perf_counter()
            await page.goto(url)
            await page.get_by_role("heading", name="Data", exact=True).first.wait_for(timeout=120 * SECOND)
            await page.get_by_text("Use this sample").first.wait_for(timeout=120 * SECOND)
            return time.perf_counter() - started
        finally:
            await browser.close()


async def class_round(url: str, simulated: int, browsers: int, uploads: list[Path], epochs: int,
                      timeout: float, shots: Path | None = None) -> list[dict]:
    """`simulated` websocket students and `browsers` browser students at once, the first browsers
    uploading `uploads`."""
    tasks = [simulated_student(url, epochs, timeout) for _ in range(simulated)]
    if not browsers:
        return await asyncio.gather(*tasks)
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            tasks += [browser_student(browser, url, uploads[i] if i < len(uploads) else None, epochs, timeout, shots)
                      for i in range(browsers)]
            return await asyncio.gather(*tasks)
        finally:
            await browser.close()


# Data ---------------------------------------------------------------------------------------------------

def make_zip(path: Path, offset: int, per_class: int) -> Path:
    source = DATASETS / "horse-or-human"
    with zipfile.ZipFile(path, "w") as archive:
        for folder in ("horses", "humans"):
            for image in sorted((source / folder).iterdir())[offset:offset + per_class]:
                archive.write(image, f"{folder}/{image.name}")
    return path


def publish(server: Server, per_class: int) -> None:
    """The teacher's dataset, unpacked and published as the Class page does it."""
    os.environ.update({key: server.env[key] for key in ("TLCORE_HOME", "TLCORE_RUNS")})
    from tlcore import workspaces
    from tlcore.dataset import load_dataset

    data = load_dataset(make_zip(server.folder / "teacher.zip", 0, per_class), work_dir=server.folder / "home")
    workspaces.publish(server.folder / "home", "Horses or humans (from the teacher)", data.root)


# Reading the run folders ---------------------------------------------------------------------------

def run_folders(server: Server) -> list[Path]:
    return sorted((server.folder / "runs" / "workspaces").glob("*/*/config.json"))


def audit(server: Server) -> dict:
    """What every run folder says: readable JSON, status, model."""
    from tlcore.runs import read_run

    found = {"readable": 0, "corrupt": 0, "by_status": {}, "without_model": []}
    for config in run_folders(server):
        folder = config.parent
        try:
            for name in ("config.json", "status.json", "history.json", "labels.json"):
                if (folder / name).exists():
                    json.loads((folder / name).read_text())
            info = read_run(folder)
        except (OSError, ValueError):
            found["corrupt"] += 1
            continue
        found["readable"] += 1
        found["by_status"][info.status] = found["by_status"].get(info.status, 0) + 1
        if info.status in ("interrupted", "stopped", "finished") and not info.has_model:
            found["without_model"].append((folder.name, info.status, info.message[:80]))
    return found


def read_history(folder: Path) -> dict:
    try:
        return json.loads((folder / "history.json").read_text())
    except (OSError, ValueError):
        return {}


def status_of(folder: Path) -> dict:
    """What a run folder's status file says now."""
    try:
        return json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def ended_as(folder: Path | None) -> tuple[str | None, str]:
    """How a run reads back in the app (a run whose process is gone reads as interrupted)."""
    from tlcore.runs import read_run

    if folder is None:
        return None, ""
    info = read_run(folder)
    return info.status, info.message[:200]


# Rounds -----------------------------------------------------------------------------------------------

def load_round(engine: str, args, folder: Path) -> dict:
    server = Server(folder, engine, args.workers)
    publish(server, args.per_class)
    uploads = [make_zip(folder / f"student-{i}.zip", args.per_class * (i + 1), args.per_class)
               for i in range(args.uploaders)]
    figures = {"engine": engine}
    try:
        figures["start_s"] = server.start()
        progress(f"{engine}: server answers after {figures['start_s']:.1f}s")
        figures["first_visit_s"] = asyncio.run(first_visit(server.url))
        progress(f"{engine}: first page drawn after {figures['first_visit_s']:.1f}s")
        # One student alone: the first computes the published dataset's features, the next find them.
        # Each worker starts cold (TensorFlow imported, body loaded), and which one takes a run is
        # not up to the student: the best of one more run than there may be workers is the warm run.
        alone_s = []
        for _ in range(1 + (args.workers or os.cpu_count() or 1) + 1):
            [alone] = asyncio.run(class_round(server.url, 1, 0, [], args.epochs, args.timeout))
            if alone["status"] != "finished":
                raise RuntimeError(f"one student alone did not finish: {alone}")
            alone_s.append(alone["seconds"])
            progress(f"{engine}: one student alone trained in {alone['seconds']:.1f}s")
        figures["alone_cold_s"], figures["alone_warm_s"] = alone_s[0], min(alone_s[1:])
        with Probe(server) as probe:
            started = time.perf_counter()
            results = asyncio.run(class_round(server.url, args.students, args.browsers, uploads, args.epochs, args.timeout,
                                              folder / "stuck"))
            ended = [r["ended_at"] for r in results if r.get("ended_at")]
            figures["all_s"] = (max(ended) - started) if ended else None
        figures["results"] = results
        for status in ("finished", "failed", "lost"):
            figures[status] = sum(r["status"] == status for r in results)
        figures["browsers_finished"] = sum(r["status"] == "finished" for r in results if r["kind"] == "browser")
        figures["errors"] = sorted({r["error"] for r in results if r.get("error")})[:5]
        progress(f"{engine}: the class is done: {figures['finished']} finished, {figures['failed']} failed, "
                 f"{figures['lost']} lost")
        finite = sorted(v for v in probe.latencies if v != float("inf"))
        figures["page_median_ms"] = statistics.median(finite) * 1000 if finite else None
        figures["page_p95_ms"] = finite[int(0.95 * (len(finite) - 1))] * 1000 if finite else None
        figures["page_failures"] = sum(v == float("inf") for v in probe.latencies)
        figures["first_page_median_s"] = statistics.median([r["first_page"] for r in results if "first_page" in r] or [0])
        figures["peak_server_mb"], figures["peak_worker_mb"] = probe.peak_server, probe.peak_worker
        figures["peak_workers_total_mb"] = probe.peak_workers
        if not args.no_faults:
            figures.update(fault_round(server, args))
    finally:
        server.stop()
    return figures


def running_runs(server: Server, epochs: int, min_epochs_done: int = 0) -> list[Path]:
    """Run folders of `epochs`-epoch runs now training, with at least `min_epochs_done` epochs done."""
    found = []
    for config in run_folders(server):
        status = status_of(config.parent)
        if (json.loads(config.read_text())["train"]["epochs"] == epochs and status.get("status") == "running"
                and status.get("phase") == "training"
                and len(read_history(config.parent).get("loss", [])) >= min_epochs_done):
            found.append(config.parent)
    return found


def fault_round(server: Server, args) -> dict:
    figures = {}
    long_epochs = 400

    # A worker killed mid-training: that run fails plainly, the next one (queued behind) finishes.
    async def kill_a_worker():
        victim = asyncio.create_task(simulated_student(server.url, long_epochs, 300))
        await asyncio.sleep(1)
        other = asyncio.create_task(simulated_student(server.url, args.epochs, 300))
        for _ in range(600):
            await asyncio.sleep(0.5)
            if running := running_runs(server, long_epochs):
                os.kill(int(status_of(running[0])["pid"]), signal.SIGKILL)
                return running[0], await asyncio.gather(victim, other)
        return None, await asyncio.gather(victim, other)

    killed, (victim, other) = asyncio.run(kill_a_worker())
    figures["kill_worker"] = {"killed_run": killed.name if killed else None, "victim": victim["status"],
                              "next": other["status"], "victim_message": ended_as(killed)[1][:160]}
    progress(f"fault round: worker killed during {figures['kill_worker']['killed_run']}: that run "
             f"{victim['status']}, the next {other['status']}")

    # The server killed mid-training (after a few epochs), then started again on the same folders.
    async def kill_the_server():
        student = asyncio.create_task(simulated_student(server.url, long_epochs, 300))
        running = []
        for _ in range(1200):
            await asyncio.sleep(0.5)
            if running := running_runs(server, long_epochs, min_epochs_done=3):
                break
        server.kill()
        await asyncio.gather(student, return_exceptions=True)
        return running[0] if running else None

    victim = asyncio.run(kill_the_server())
    time.sleep(15)  # a local worker, orphaned, saves the model so far and ends the run itself
    restart = server.start()
    # The first page of the restarted server creates its engine, which keeps interrupted runs' checkpoints.
    [after] = asyncio.run(class_round(server.url, 1, 0, [], 1, 300))
    after_status, after_message = ended_as(victim)
    figures["kill_server"] = {"run": victim.name if victim else None, "restart_s": restart, "after": after_status,
                              "message": after_message, "audit": audit(server),
                              "next_run": after["status"]}
    progress(f"fault round: server killed during {figures['kill_server']['run']}, restarted; that run is "
             f"{figures['kill_server']['after']}")
    return figures


def report(rounds: list[dict], args) -> None:
    """Prints the figures of `rounds` (one per engine)."""
    rows = []
    n = args.students + args.browsers
    for figures in rounds:
        alone = figures.get("alone_warm_s") or 0
        rows.append([
            figures["engine"], n, figures["finished"], figures["failed"], figures["lost"], figures.get("all_s"),
            alone, alone * n, (figures["all_s"] / (alone * n)) if figures.get("all_s") and alone else None,
            figures.get("alone_cold_s"), figures["page_median_ms"], figures["page_p95_ms"],
            figures["first_page_median_s"], figures["peak_server_mb"], figures["peak_worker_mb"],
        ])
    print_table(["engine", "students", "finished", "failed", "lost", "last done s", "one alone s", "alone x N s",
                 "ratio", "alone cold s", "page ms p50", "page ms p95", "first page s", "server MB", "worker MB"],
                rows, title=f"A class of {n}: {args.students} simulated, {args.browsers} in browsers "
                            f"({args.uploaders} upload their own zip), {args.epochs} epochs each")
    for figures in rounds:
        print(f"first visit of a fresh {figures['engine']} server: page drawn after {figures['first_visit_s']:.2f}s")
        print(f"{figures['engine']}: browser students finished {figures['browsers_finished']} of {args.browsers}; "
              f"all workers together peaked at {figures['peak_workers_total_mb']:.0f} MB")
        if figures.get("errors"):
            print(f"{figures['engine']}: stuck students: {figures['errors']}")
        if figures.get("page_failures"):
            print(f"{figures['engine']}: {figures['page_failures']} page requests failed or timed out")
        if "kill_worker" in figures:
            worker, server = figures["kill_worker"], figures["kill_server"]
            print(f"{figures['engine']} fault round: worker killed during {worker['killed_run']}: that run "
                  f"{worker['victim']} ({worker['victim_message']!r}), the next {worker['next']}")
            audit_ = server["audit"]
            print(f"{figures['engine']} fault round: server killed during {server['run']}, restarted in "
                  f"{server['restart_s']:.1f}s: that run is {server['after']} ({server['message']!r}); run folders "
                  f"readable {audit_['readable']}, corrupt {audit_['corrupt']}, by status {audit_['by_status']}, "
                  f"ended without a model {audit_['without_model']}; a run after the restart {server['next_run']}")


def main():
    args = parse_args()
    private_keras_home()
    print(machine_line())
    engines = ["local", "ray"] if args.engine == "both" else [args.engine]
    rounds = []
    for engine in engines:
        folder = scratch_dir(f"classroom-{engine}")
        rounds.append(load_round(engine, args, folder))
        if engine == "ray":
            subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
        report(rounds[-1:], args)  # each engine's figures as soon as they are measured


if __name__ == "__main__":
    main()
