"""The server's job queue: one training at a time, later ones wait their turn."""

import shutil

import pytest

from tlcore import runs
from tlcore.dataset import load_folder
from tlcore.jobs import JobManager
from tlcore.model import ModelConfig
from tlcore.training import TrainConfig

CONFIG = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=64, dense_units=(8,))


@pytest.fixture
def tiny(horses_or_humans, tmp_path):
    root = tmp_path / "tiny"
    for name in ("horses", "humans"):
        (root / name).mkdir(parents=True)
        for path in sorted((horses_or_humans / name).glob("*.png"))[:8]:
            shutil.copy(path, root / name / path.name)
    return load_folder(root, val_split=0.25)


def test_second_job_waits_for_the_first_then_runs(tiny, real_weights, tmp_path):
    manager = JobManager()
    first = manager.submit(tiny, CONFIG, TrainConfig(epochs=30), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    second = manager.submit(tiny, CONFIG, TrainConfig(epochs=1), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    assert manager.position(second.run_dir.name) in (1, 2)
    assert runs.read_run(second.run_dir).status == runs.QUEUED
    manager.stop(first.run_dir.name)
    assert manager.wait_idle(timeout=300)
    assert first.status == runs.STOPPED and second.status == runs.FINISHED
    assert manager.position(second.run_dir.name) is None
    assert manager.get(second.run_dir.name) is second


def test_a_waiting_job_can_be_cancelled(tiny, real_weights, tmp_path):
    manager = JobManager()
    first = manager.submit(tiny, CONFIG, TrainConfig(epochs=30), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    waiting = manager.submit(tiny, CONFIG, TrainConfig(epochs=1), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    manager.stop(waiting.run_dir.name)
    assert runs.read_run(waiting.run_dir).status == runs.STOPPED
    manager.stop(first.run_dir.name)
    assert manager.wait_idle(timeout=300)
    assert waiting.snapshot().history == {}


def test_jobs_lists_every_submission_oldest_first(tiny, real_weights, tmp_path):
    manager = JobManager()
    first = manager.submit(tiny, CONFIG, TrainConfig(epochs=1), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    second = manager.submit(tiny, CONFIG, TrainConfig(epochs=1), runs_dir=tmp_path / "runs", work_dir=tmp_path / "w")
    assert manager.jobs() == [first, second]
    assert manager.wait_idle(timeout=300)
    assert [job.status for job in manager.jobs()] == [runs.FINISHED, runs.FINISHED]

    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(runs.Run(second.run_dir).bundle())).namelist()
    folder = second.run_dir.name
    assert sorted(names) == sorted(f"{folder}/{n}" for n in ("model.keras", "labels.json", "config.json", "history.json"))
