"""Hostile uploads: every case of `hostile_cases` through `inspect`, `train` and `predict`, each in a fresh process.

For each case a child process gets a fresh TLCORE_HOME and TLCORE_RUNS and calls the command
line in-process (`tlcore.cli.main`):

- a zip: `inspect ZIP --json`, `train ZIP --input-size 96 --epochs 1 --batch-size 8 --json`,
  then `predict` of a normal photo with the run, if one finished;
- an image: the same on a two-class zip of normal photos holding it, then `predict` of the
  image itself with a reference run trained once, up front, on normal photos.

The outcome is read from the JSON and exit codes: "refused" (exit 2 with an "error"),
"skipped file" (accepted, and the hostile file is named in `skipped` of `inspect --json`) or
"accepted". A traceback is "Traceback" on the child's standard error, an exit code other than
0, 1 or 2, or a crashed child. Peak memory is the child's own `ru_maxrss`; "bytes left" is what
the case leaves under its TLCORE_HOME (run folders live elsewhere). A child above
`--kill-above-gb` or `--timeout` is killed and counted as unexpected.

Usage:
    python benchmarks/hostile.py                    # every case, one child at a time
    python benchmarks/hostile.py --only zip_slip png_bomb --jobs 2
    python benchmarks/hostile.py --quick            # `inspect` only: no training, no prediction
    python benchmarks/hostile.py --list             # the cases and their expected outcomes
    python benchmarks/hostile.py --smoke            # a few cases, `--quick`: only checks the script works
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import traceback
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from common import ROOT, machine_line, private_keras_home, scratch_dir

import hostile_cases as hc

MARKER = "HOSTILE-RESULT "
TRAIN_FLAGS = ["--input-size", "96", "--epochs", "1", "--batch-size", "8", "--json"]
SMOKE_CASES = ["normal_dataset", "zip_slip", "stray_image", "png_bad_idat_crc", "gif_huge_header"]
# A refused upload may leave empty lock files; more than this is reported.
LEFTOVER_BYTES = 64 * 1024
# The goal: no single upload costs more than this with the default limits (reported, not an outcome).
PEAK_GOAL_MB = 1024


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these cases")
    parser.add_argument("--quick", action="store_true", help="only `inspect`: skip training and prediction")
    parser.add_argument("--jobs", type=int, default=1, help="children running at once (default 1)")
    parser.add_argument("--smoke", action="store_true", help=f"`--quick` on {len(SMOKE_CASES)} cases: only checks the script works")
    parser.add_argument("--list", action="store_true", help="print the cases and their expected outcomes, and stop")
    parser.add_argument("--workdir", help="where cases, work folders and runs go (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a child is killed (default 900)")
    parser.add_argument("--kill-above-gb", type=float, default=4.0,
                        help="a child whose resident memory exceeds this is killed (default 4)")
    parser.add_argument("--json-out", help="also write every result as JSON to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.quick = True
        args.only = args.only or SMOKE_CASES
    return args


# The child: one case, in-process calls of the command line --------------------------------------


def child_main(spec: dict) -> int:
    from tlcore.cli import main as cli

    steps: dict[str, dict] = {}

    def run(step: str, argv: list[str]) -> dict:
        out = io.StringIO()
        start = time.perf_counter()
        record: dict = {}
        try:
            with contextlib.redirect_stdout(out):
                code = cli(argv)
        except SystemExit as stop:  # argparse
            code = stop.code if isinstance(stop.code, int) else 2
        except BaseException as error:  # noqa: BLE001  (the point is to see it)
            traceback.print_exc()
            code = "traceback"
            record["traceback"] = f"{type(error).__name__}: {error}"[:500]
        record.update(code=code, seconds=round(time.perf_counter() - start, 3), peak_mb=peak_mb())
        lines = out.getvalue().strip().splitlines()
        data = None
        if lines:
            try:
                data = json.loads(lines[-1])
            except ValueError:
                data = None
        record["data"] = trim(step, data)
        steps[step] = record
        return record

    zip_path = spec["zip"]
    if spec["mode"] == "reference":
        run("train", ["train", zip_path, *TRAIN_FLAGS])
    else:
        run("inspect", ["inspect", zip_path, "--json"])
        if spec.get("twice"):
            copy = Path(zip_path).with_name("copy-of-" + Path(zip_path).name)
            shutil.copy(zip_path, copy)
            run("inspect_copy", ["inspect", str(copy), "--json"])
            datasets = Path(os.environ["TLCORE_HOME"]) / "datasets"
            steps["inspect_copy"]["stored"] = sum(
                1 for path in datasets.iterdir() if path.is_dir() and not path.name.startswith(".")
            ) if datasets.is_dir() else 0
        if not spec["quick"]:
            train = run("train", ["train", zip_path, *TRAIN_FLAGS])
            data = train["data"] or {}
            if data.get("status") == "finished" and data.get("run_dir"):
                run("predict", ["predict", data["run_dir"], spec["normal_image"], "--json"])
            if spec.get("image") and spec.get("reference_run"):
                run("predict_image", ["predict", spec["reference_run"], spec["image"], "--json"])
    sys.stdout.flush()
    print(MARKER + json.dumps({"steps": steps, "peak_mb": peak_mb()}, default=str))
    sys.stdout.flush()
    return 0


def peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def trim(step: str, data):
    """The parts of a command's JSON the outcome is read from (image sizes and such are left out)."""
    if not isinstance(data, dict):
        return data
    if "error" in data:
        return {"error": data["error"]}
    if step.startswith("inspect"):
        keys = ("classes", "counts", "skipped", "errors", "warnings", "ok")
    elif step == "train":
        keys = ("run_dir", "status", "message", "val_accuracy", "seconds")
    else:
        return {"predictions": [
            {"image": Path(p.get("image", "")).name, "top_class": p.get("top_class"), "confidence": p.get("confidence")}
            for p in data.get("predictions", [])
        ]}
    return {key: data.get(key) for key in keys}


# The parent ---------------------------------------------------------------------------------------


@dataclass
class Result:
    case: hc.Case
    expected: str
    actual: str = ""
    peak_mb: float = 0.0
    seconds: float = 0.0
    inspect_seconds: float | None = None
    bytes_left: int = 0
    files_left: int = 0
    message: str = ""
    problems: list[str] = field(default_factory=list)
    traceback: str = ""
    steps: dict = field(default_factory=dict)

    @property
    def as_expected(self) -> bool:
        return self.actual == self.expected and not self.problems and not self.traceback

    def note(self) -> str:
        parts = []
        if self.peak_mb > PEAK_GOAL_MB:
            parts.append(f"PEAK {self.peak_mb / 1024:.2f} GB")
        if self.traceback:
            parts.append(f"TRACEBACK {self.traceback}")
        parts += self.problems
        if self.message and (not self.as_expected or self.actual in (hc.REFUSED, hc.SKIPPED)):
            parts.append(self.message)
        return "; ".join(parts)


def run_child(spec: dict, folder: Path, timeout: float, kill_above_mb: float) -> dict:
    """Runs one child in `folder` (its home and runs inside) and watches its memory and time."""
    env = {
        **os.environ,
        "TLCORE_HOME": str(folder / "home"),
        "TLCORE_RUNS": str(folder / "runs"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }
    (folder / "home").mkdir(parents=True, exist_ok=True)
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    out_path, err_path = folder / "child.out", folder / "child.err"
    start = time.perf_counter()
    watched_mb, killed = 0.0, ""
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
            cwd=folder, env=env, stdout=out, stderr=err,
        )
        while child.poll() is None:
            watched_mb = max(watched_mb, resident_mb(child.pid))
            if watched_mb > kill_above_mb:
                killed = f"killed above {kill_above_mb / 1024:.1f} GB resident"
            elif time.perf_counter() - start > timeout:
                killed = f"killed after {timeout:.0f} s"
            if killed:
                child.kill()
                child.wait()
                break
            time.sleep(0.1)
    seconds = time.perf_counter() - start
    stdout = out_path.read_text(errors="replace")
    stderr = err_path.read_text(errors="replace")
    report = None
    for line in stdout.splitlines():
        if line.startswith(MARKER):
            report = json.loads(line[len(MARKER):])
    return {"report": report, "returncode": child.returncode, "seconds": seconds, "stderr": stderr,
            "watched_mb": watched_mb, "killed": killed}


def resident_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def folder_bytes(folder: Path) -> tuple[int, int, list[str]]:
    """Bytes and files under a folder, with its largest files."""
    total, count, sizes = 0, 0, []
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            try:
                size = os.lstat(path).st_size
            except OSError:
                continue
            total += size
            count += 1
            sizes.append((size, os.path.relpath(path, folder)))
    return total, count, [f"{name} ({size:,} B)" for size, name in sorted(sizes, reverse=True)[:3]]


def escaped_files(folder: Path) -> list[str]:
    """Files whose names mark a zip entry that escaped its folder."""
    return [str(path) for path in Path(folder).rglob(hc.ESCAPED + "*")]


def normal(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def is_listed(name: str, skipped: list[str]) -> bool:
    """Whether an entry of the zip is in `skipped`, itself or through a folder left out whole."""
    name = normal(name.replace("\\", "/"))
    return any(name == path or name.startswith(path.rstrip("/") + "/") for path in map(normal, skipped))


def classify(case: hc.Case, child: dict, folder: Path) -> Result:
    expected = case.expected
    result = Result(case=case, expected=expected, seconds=child["seconds"])
    report = child["report"]
    stderr = child["stderr"]
    result.bytes_left, result.files_left, largest = folder_bytes(folder / "home")
    escaped = escaped_files(folder)
    if escaped:
        result.problems.append(f"ESCAPED: wrote {', '.join(escaped)}")
    if "Traceback" in stderr:
        result.traceback = last_traceback_line(stderr)
    if report is None:
        result.peak_mb = round(child["watched_mb"], 1)
        result.actual = child["killed"] or f"child died (exit {child['returncode']})"
        if not child["killed"]:
            result.traceback = result.traceback or f"child exited {child['returncode']}: {last_line(stderr)}"
        return result
    result.steps = steps = report["steps"]
    result.peak_mb = max(report["peak_mb"], 0.0)
    for name, step in steps.items():
        if step["code"] not in (0, 1, 2):
            result.traceback = result.traceback or f"{name}: {step.get('traceback') or 'exit ' + str(step['code'])}"
    inspect = steps["inspect"]
    result.inspect_seconds = inspect["seconds"]
    data = inspect["data"] or {}
    skip = case.skip if case.kind == "zip" else ((hc.image_zip_member(case),) if expected == hc.SKIPPED else ())
    keep = case.keep if case.kind == "zip" else ((hc.image_zip_member(case),) if expected == hc.ACCEPTED else ())
    if inspect["code"] == 2 and "error" in data:
        result.actual = hc.REFUSED
        result.message = data["error"]
    elif inspect["code"] == 0:
        skipped = [item["path"] for item in data.get("skipped") or []]
        missing = [name for name in skip if not is_listed(name, skipped)]
        wrongly = [name for name in keep if is_listed(name, skipped)]
        if wrongly:
            result.actual = hc.SKIPPED
            reasons = {item["path"]: item["reason"] for item in data.get("skipped") or []}
            result.message = "skipped: " + ", ".join(f"{n} ({reasons.get(n, '?')})" for n in wrongly[:4])
        elif skip and not missing:
            result.actual = hc.SKIPPED
        elif skip and len(missing) < len(skip):
            result.actual = "partly skipped"
            result.message = f"not skipped: {', '.join(missing[:4])}" + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        else:
            result.actual = hc.ACCEPTED
            if missing:
                result.message = f"not skipped: {', '.join(missing[:4])}" + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        if result.actual == expected and not result.message and skipped:
            reasons = sorted({item["reason"] for item in data.get("skipped") or []})
            result.message = f"skipped {len(skipped)}: {', '.join(reasons)}"
        classes = data.get("classes") or []
        if case.classes is not None and len(classes) != case.classes:
            result.problems.append(f"{len(classes)} classes, not {case.classes}: {classes}")
    else:
        result.actual = f"exit {inspect['code']}"
        result.message = str(data.get("error") or last_line(stderr))
    if "inspect_copy" in steps:
        stored = steps["inspect_copy"].get("stored")
        if steps["inspect_copy"]["code"] != inspect["code"]:
            result.problems.append(f"second upload: exit {steps['inspect_copy']['code']}")
        if stored != 1:
            result.problems.append(f"stored {stored} times, not once")
    train = steps.get("train")
    if train is not None:
        train_data = train["data"] or {}
        if result.actual == hc.REFUSED:
            if train["code"] != 2:
                result.problems.append(f"train exit {train['code']} although inspect refused")
        elif result.actual in (hc.ACCEPTED, hc.SKIPPED, "partly skipped"):
            if train["code"] != 0 or train_data.get("status") != "finished":
                why = train_data.get("error") or train_data.get("message") or train.get("traceback") or ""
                result.problems.append(f"train exit {train['code']} ({train_data.get('status')}): {why}")
    predict = steps.get("predict")
    if predict is not None and predict["code"] != 0:
        result.problems.append(f"predict of a normal photo: exit {predict['code']} {(predict['data'] or {}).get('error', '')}")
    direct = steps.get("predict_image")
    if direct is not None:
        wanted = 2 if expected == hc.SKIPPED else 0
        if direct["code"] != wanted:
            what = (direct["data"] or {}).get("error") or direct.get("traceback") or ""
            outcome = {0: "accepted", 2: "refused"}.get(direct["code"], f"exit {direct['code']}")
            result.problems.append(f"predict of the image itself: {outcome} {what}".strip())
    if result.actual == hc.REFUSED and result.bytes_left > LEFTOVER_BYTES:
        result.problems.append(f"refused but left {result.bytes_left:,} B: {', '.join(largest)}")
    return result


def last_traceback_line(stderr: str) -> str:
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    if not starts:
        return ""
    block = lines[starts[-1]:]
    for line in block[1:]:
        if line and not line.startswith((" ", "\t")):
            return line.strip()[:300]
    return block[-1].strip()[:300]


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def printable(text: str, limit: int | None = None) -> str:
    """Text safe to print in a table: control and direction characters are shown escaped."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return shown if limit is None or len(shown) <= limit else shown[: limit - 3] + "..."


def source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "tlcore").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def prepare(case: hc.Case, folder: Path) -> dict:
    """Builds a case into its folder; returns the child's spec."""
    folder.mkdir(parents=True, exist_ok=True)
    if case.kind == "zip":
        return {"mode": "case", "zip": str(case.build(folder)), "twice": case.twice}
    image = case.build(folder)
    return {"mode": "case", "zip": str(hc.image_zip(case, folder)), "image": str(image)}


def run_reference(workdir: Path, args) -> str | None:
    folder = workdir / "reference"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"mode": "reference", "zip": str(hc.reference_zip(folder))}
    child = run_child(spec, folder, args.timeout, args.kill_above_gb * 1024)
    report = child["report"] or {}
    train = (report.get("steps") or {}).get("train") or {}
    data = train.get("data") or {}
    if data.get("status") != "finished":
        print(f"The reference run failed ({data.get('error') or data.get('message') or last_line(child['stderr'])}): "
              "images are not predicted on their own.", file=sys.stderr)
        return None
    print(f"reference run: {data['run_dir']} ({child['seconds']:.0f} s, peak {report.get('peak_mb', 0):.0f} MB)")
    return data["run_dir"]


def print_results(results: list[Result], title: str, note_width: int = 110) -> None:
    """The table: fixed-width columns, numbers right-aligned."""
    headers = ["case", "kind", "expected", "actual", "ok?", "peak MB", "seconds", "inspect s", "bytes left", "note"]
    rows = [[r.case.name, r.case.kind, r.expected, r.actual, "" if r.as_expected else "NO", f"{r.peak_mb:.0f}",
             f"{r.seconds:.1f}", "" if r.inspect_seconds is None else f"{r.inspect_seconds:.2f}", f"{r.bytes_left:,}",
             printable(r.note(), note_width)] for r in results]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    right = {5, 6, 7, 8}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(f"\n{title}")
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))
    sys.stdout.flush()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child))
    cases = hc.by_name(args.only)
    if args.list:
        for case in cases:
            print(f"{case.name:28} {case.kind:5} {case.expected:12} {printable(case.about)}")
        return 0
    keras_home = private_keras_home()
    workdir = Path(args.workdir) if args.workdir else scratch_dir("hostile")
    # Only what this run made is removed afterwards: a folder given with --workdir may hold other things.
    made_workdir = not args.workdir or not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    source_before = source_digest()
    print(machine_line())
    print(f"hostile: {len(cases)} cases, {'inspect only' if args.quick else 'inspect, train and predict'}, "
          f"{args.jobs} at a time, work folder {workdir}")
    build_start = time.perf_counter()
    specs = {case.name: prepare(case, workdir / "cases" / case.name) for case in cases}
    normal_image = str(hc.predict_image(workdir))
    print(f"built {len(cases)} cases in {time.perf_counter() - build_start:.0f} s")
    reference = None
    if not args.quick and any(case.kind == "image" for case in cases):
        reference = run_reference(workdir, args)
    lock = threading.Lock()

    def one(case: hc.Case) -> Result:
        folder = workdir / "cases" / case.name
        spec = {**specs[case.name], "quick": args.quick, "normal_image": normal_image, "reference_run": reference}
        result = classify(case, run_child(spec, folder, args.timeout, args.kill_above_gb * 1024), folder)
        with lock:
            mark = "ok " if result.as_expected else "!! "
            print(f"{mark}{case.name:28} {result.actual:14} {result.peak_mb:7.0f} MB {result.seconds:6.1f} s "
                  f"{printable(result.note(), 90)}", flush=True)
        if not args.keep:
            for part in ("home", "runs"):
                shutil.rmtree(folder / part, ignore_errors=True)
        return result

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, cases))
    total_seconds = time.perf_counter() - started

    title = (f"Hostile uploads ({datetime.now().strftime('%Y-%m-%d %H:%M')}, "
             f"{'inspect only' if args.quick else 'inspect + train + predict'})")
    print_results(results, title)
    unexpected = [r for r in results if not r.as_expected]
    if unexpected:
        print("\nUnexpected outcomes:")
        for r in unexpected:
            print(f"- {r.case.name} ({r.case.kind}: {printable(r.case.about)}): expected {r.expected}, got {r.actual}")
            if r.traceback:
                print(f"    traceback: {printable(r.traceback)}")
            for problem in r.problems:
                print(f"    {printable(problem, 600)}")
            if r.message:
                print(f"    message: {printable(r.message, 600)}")
    heavy = [r for r in results if r.peak_mb > PEAK_GOAL_MB]
    if heavy:
        print(f"\nPeak memory over {PEAK_GOAL_MB / 1024:.0f} GB (resident, per step):")
        for r in heavy:
            per_step = ", ".join(f"{name} {step['peak_mb']:.0f} MB" for name, step in r.steps.items())
            print(f"- {r.case.name}: {r.peak_mb:.0f} MB ({per_step or 'killed'})")
    if source_digest() != source_before:
        print("\nNote: tlcore's source changed while the benchmark ran; results may mix two versions.")
    zips = sum(r.case.kind == "zip" for r in results)
    images = len(results) - zips
    ok = sum(r.as_expected for r in results)
    tracebacks = sum(bool(r.traceback) for r in results)
    peak = max((r.peak_mb for r in results), default=0.0)
    print(f"\ntotal {total_seconds / 60:.1f} min")
    print(f"hostile: {zips} zips, {images} images: {ok} as expected, {tracebacks} tracebacks, peak {peak / 1024:.1f} GB")
    records = [{
        "case": r.case.name, "kind": r.case.kind, "about": r.case.about, "expected": r.expected, "actual": r.actual,
        "as_expected": r.as_expected, "peak_mb": r.peak_mb, "seconds": round(r.seconds, 2),
        "inspect_seconds": r.inspect_seconds, "bytes_left": r.bytes_left, "files_left": r.files_left,
        "message": r.message, "problems": r.problems, "traceback": r.traceback, "steps": r.steps,
    } for r in results]
    summary = {"date": datetime.now().isoformat(timespec="seconds"), "machine": machine_line(), "quick": args.quick,
               "total_seconds": round(total_seconds, 1), "tlcore_source": source_before, "results": records}
    for target in filter(None, [args.json_out, args.keep and str(workdir / "results.json")]):
        Path(target).write_text(json.dumps(summary, indent=1, default=str))
    shutil.rmtree(keras_home, ignore_errors=True)
    if not args.keep:
        if made_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            for part in ("cases", "reference"):
                shutil.rmtree(workdir / part, ignore_errors=True)
            Path(normal_image).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
