"""The engines: trainings queue in order and run in worker processes or Ray actors, never in the server.

Each test runs on the local engine and on the Ray engine (a local Ray cluster on this machine).
"""

import datetime
import io
import os
import re
import signal
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import types
import zipfile
from pathlib import Path

import pytest

from tlcore import runs
from tlcore.config import Status
from tlcore.engines.local import WORKER_DIED, LocalEngine
from tlcore.model import ModelConfig
from tlcore.training import TrainConfig

CONFIG = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=64, dense_units=(8,))
TIMEOUT = 300


@pytest.fixture
def tiny(horses_or_humans, tmp_path):
    root = tmp_path / "tiny"
    for name in ("horses", "humans"):
        (root / name).mkdir(parents=True)
        for path in sorted((horses_or_humans / name).glob("*.png"))[:8]:
            shutil.copy(path, root / name / path.name)
    return root


@pytest.fixture(scope="module", params=["local", "ray"])
def engine(request):
    """One worker, started once per engine: its process lives from job to job."""
    if request.param == "local":
        made = LocalEngine(workers=1)
    else:
        ray = pytest.importorskip("ray") if not os.environ.get("CI") else __import__("ray")
        from tlcore.engines.ray_engine import RayEngine

        # Made on a thread that then ends, as the dashboard makes it on a Streamlit script run's.
        made = in_a_thread_that_ends(lambda: RayEngine(workers=1))
    yield made
    made.close()
    if request.param == "ray":
        ray.shutdown()


def in_a_thread_that_ends(make):
    made = {}

    def run():
        try:
            made["value"] = make()
        except BaseException as error:  # noqa: BLE001  (raised again in the test's own thread)
            made["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]
    return made["value"]


def wait_for(condition, timeout=TIMEOUT):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_training_runs_in_a_worker_process_not_in_the_server(engine, tiny, real_weights, tmp_path):
    job = engine.submit(tiny, CONFIG, TrainConfig(epochs=2), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    state = job.wait(TIMEOUT)
    assert state.status == Status.FINISHED, state.message
    assert len(state.history["val_accuracy"]) == 2 and state.classes == ("horses", "humans")
    recorded = runs.read_json(job.run_dir / "status.json", {})
    assert recorded["pid"] in engine.worker_pids() and recorded["pid"] != os.getpid()
    assert runs.Run(job.run_dir).config["data"]["source"] == str(tiny), "a dataset given as a Path is recorded"
    assert runs.read_run(job.run_dir).status == runs.FINISHED and runs.Run(job.run_dir).has_model
    assert "tensorflow" not in sys.modules or engine.device() == "CPU", "the worker reports its device"
    names = zipfile.ZipFile(io.BytesIO(runs.Run(job.run_dir).bundle())).namelist()
    assert f"{job.run_dir.name}/model.keras" in names


def test_second_job_waits_for_the_first_then_runs(engine, tiny, real_weights, tmp_path):
    first = engine.submit(tiny, CONFIG, TrainConfig(epochs=40), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    second = engine.submit(tiny, CONFIG, TrainConfig(epochs=1), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    assert engine.position(second.id) in (1, 2)
    assert engine.estimated_start(second.id) > 0
    assert runs.read_run(second.run_dir).status == runs.QUEUED
    assert engine.jobs()[-2:] == [first, second]
    assert wait_for(lambda: first.snapshot().epoch >= 1)
    engine.stop(first.id)
    assert engine.wait_idle(timeout=TIMEOUT)
    assert first.status == runs.STOPPED and second.status == runs.FINISHED
    assert runs.Run(first.run_dir).has_model, "a stopped training keeps its model"
    assert engine.position(second.id) is None and engine.estimated_start(second.id) is None
    assert engine.get(second.id) is second


def test_a_waiting_job_can_be_cancelled(engine, tiny, real_weights, tmp_path):
    first = engine.submit(tiny, CONFIG, TrainConfig(epochs=40), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    waiting = engine.submit(tiny, CONFIG, TrainConfig(epochs=1), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    engine.stop(waiting.id)
    assert runs.read_run(waiting.run_dir).status == runs.STOPPED
    engine.stop(first.id)
    assert engine.wait_idle(timeout=TIMEOUT)
    assert waiting.snapshot().history == {}


def test_a_ray_worker_without_the_servers_files_gets_them_with_the_job(engine, tiny, real_weights, tmp_path,
                                                                       monkeypatch):
    if engine.name != "ray":
        pytest.skip("local workers always share the server's files")
    monkeypatch.setenv("TLCORE_RAY_SHARED_FILES", "no")  # as on a machine without a shared file system
    job = engine.submit(tiny, CONFIG, TrainConfig(epochs=2), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    state = job.wait(TIMEOUT)
    assert state.status == Status.FINISHED, state.message
    recorded = runs.read_run(job.run_dir)
    assert recorded.status == runs.FINISHED and recorded.classes == ("horses", "humans")
    assert len(runs.Run(job.run_dir).history().metrics["val_accuracy"]) == 2
    assert runs.Run(job.run_dir).load_model() is not None, "the model came back into the server's run folder"
    assert not (tmp_path / "w").exists(), "the worker computed its features in a folder of its own"


class OneSecond(datetime.datetime):
    """A clock stopped at one second: every run folder made now gets the same name."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 12, 1, 9, 0, 0, tzinfo=tz)


def test_runs_of_two_workspaces_started_in_the_same_second_stay_apart(engine, tiny, real_weights, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(runs, "_dt", types.SimpleNamespace(datetime=OneSecond))
    mine = engine.submit(tiny, CONFIG, TrainConfig(epochs=1), runs_dir=tmp_path / "ws-a", work_dir=tmp_path / "w")
    theirs = engine.submit(tiny, CONFIG, TrainConfig(epochs=1), runs_dir=tmp_path / "ws-b", work_dir=tmp_path / "w")
    assert mine.run_dir.name == theirs.run_dir.name and mine.id != theirs.id
    assert engine.get(mine.id) is mine and engine.get(theirs.id) is theirs
    assert engine.jobs()[-2:] == [mine, theirs]
    engine.stop(theirs.id)
    assert mine.wait(TIMEOUT).status == Status.FINISHED and theirs.wait(TIMEOUT).status == Status.STOPPED
    assert runs.read_run(mine.run_dir).status == runs.FINISHED


def test_a_worker_that_dies_fails_its_run_plainly_and_is_replaced(engine, tiny, real_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("TLCORE_CHECKPOINT_SECONDS", "0")  # a checkpoint after every epoch
    doomed = engine.submit(tiny, CONFIG, TrainConfig(epochs=200), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    after = engine.submit(tiny, CONFIG, TrainConfig(epochs=1), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    assert wait_for(lambda: doomed.snapshot().epoch >= 2)
    old = engine.worker_pids()
    assert engine.kill_worker_of(doomed.id)
    assert after.wait(TIMEOUT).status == Status.FINISHED, "the next training runs on a new worker"
    state = doomed.snapshot()
    assert state.status == Status.FAILED and state.message.startswith(WORKER_DIED)
    assert "Traceback" not in state.message
    recorded = runs.read_run(doomed.run_dir)
    assert recorded.status == runs.FAILED and "ran out of memory" in recorded.message
    epoch = int(re.search(r"model from epoch (\d+) is saved", recorded.message).group(1))
    assert epoch >= 1 and runs.Run(doomed.run_dir).load_model() is not None, "its last checkpoint is its model"
    assert engine.worker_pids() and engine.worker_pids() != old


def test_the_first_epoch_is_always_checkpointed_then_at_most_every_few_seconds():
    from tlcore.training.callbacks import Checkpoint

    saved = []
    folder = types.SimpleNamespace(save_checkpoint=lambda model, epoch: saved.append(epoch))
    job = types.SimpleNamespace(run_folder=folder, state=types.SimpleNamespace(epoch=0))
    checkpoint = Checkpoint(types.SimpleNamespace(model=object(), job=job), seconds=3600)
    for epoch in range(3):
        job.state.epoch = epoch + 1
        checkpoint.on_epoch_end(epoch)
    assert saved == [1], "a training killed after its first epoch, however quick, still leaves a model"


SERVER = textwrap.dedent("""
    import sys, time
    from tlcore.engines.local import LocalEngine
    from tlcore.model import ModelConfig
    from tlcore.training import TrainConfig

    engine = LocalEngine(workers=1)
    print(*engine.worker_pids(), flush=True)
    job = engine.submit(sys.argv[1], ModelConfig(alpha=0.35, input_size=64, dense_units=(8,)),
                        TrainConfig(epochs=500), runs_dir=sys.argv[2], work_dir=sys.argv[3])
    print(job.run_dir, flush=True)
    while job.snapshot().epoch < 2:
        time.sleep(0.1)
    print("training", flush=True)
    time.sleep(600)
""")


def test_a_killed_server_leaves_its_training_interrupted_with_the_model_so_far(tiny, real_weights, tmp_path):
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(tiny), str(tmp_path / "runs"), str(tmp_path / "w")],
                              stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        server.stdout.readline()
        run_dir = server.stdout.readline().strip()
        assert server.stdout.readline().strip() == "training"
    finally:
        server.kill()  # as `kill -9` would: no clean-up runs in the server
        server.wait(60)
    run = runs.Run(run_dir)
    assert wait_for(lambda: Status(runs.read_run(run_dir).status).done, 120)
    info = runs.read_run(run_dir)
    assert info.status == runs.INTERRUPTED, info.message
    assert "server stopped" in info.message and "model trained so far is saved" in info.message
    assert run.has_model and run.load_model() is not None
    assert len(runs.read_json(run.path / "history.json", {}).get("val_accuracy", [])) >= 2


def test_a_server_killed_with_its_worker_leaves_the_last_checkpoint_to_the_next_server(tiny, real_weights, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.setenv("TLCORE_CHECKPOINT_SECONDS", "0")
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(tiny), str(tmp_path / "runs"), str(tmp_path / "w")],
                              stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        worker = int(server.stdout.readline().split()[0])
        run_dir = server.stdout.readline().strip()
        assert server.stdout.readline().strip() == "training"
    finally:
        server.kill()
        os.kill(worker, signal.SIGKILL)  # both at once, as a machine's out-of-memory killer or a power cut might
        server.wait(60)
    assert wait_for(lambda: not os.path.exists(f"/proc/{worker}"), 60)
    info = runs.read_run(run_dir)
    assert info.status == runs.INTERRUPTED and not info.has_model
    assert runs.keep_checkpoints(tmp_path / "runs") == [Path(run_dir).name], "what a starting server does"
    info = runs.read_run(run_dir)
    assert info.status == runs.INTERRUPTED and info.has_model
    assert re.search(r"model from epoch \d+ is saved", info.message)
    assert runs.Run(run_dir).load_model() is not None
