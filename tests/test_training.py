"""Training jobs on real images: real transfer, the fast path's equivalence, stop and failure."""

import json
import shutil

import keras
import numpy as np
import pytest

from tlcore import features, runs
from tlcore.dataset import Dataset, load_folder
from tlcore.model import ModelConfig
from tlcore.training import FeatureBatches, TrainConfig, TrainingJob, image_dataset, train

SMALL = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=96, dense_units=(32,), dropout=0.2)


def run_job(tmp_path, data, model=SMALL, train_config=None, on_event=None):
    job = TrainingJob(data, model, train_config or TrainConfig(epochs=2), runs_dir=tmp_path / "runs",
                      work_dir=tmp_path / "work", on_event=on_event)
    job.run()
    return job


def test_real_imagenet_weights_transfer_and_random_weights_do_not(horses_or_humans, real_weights, tmp_path):
    data = load_folder(horses_or_humans, val_split=0.2, seed=0)
    settings = TrainConfig(epochs=5, seed=0)
    config = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=128, dense_units=(64,))
    real = run_job(tmp_path, data, config, settings).snapshot()
    random = run_job(tmp_path, data, ModelConfig(**{**config.to_dict(), "weights": "none", "dense_units": (64,)}), settings).snapshot()
    assert real.status == random.status == runs.FINISHED
    print("val accuracy real", real.history["val_accuracy"], "random", random.history["val_accuracy"])
    print("phase seconds", real.phase_seconds)
    assert max(real.history["val_accuracy"]) >= 0.9
    assert max(random.history["val_accuracy"]) <= 0.75
    assert set(real.phase_seconds) >= {"loading data", "extracting features", "training", "saving"}


def test_run_folder_holds_everything_to_rebuild_the_run(small_dataset, real_weights, tmp_path):
    job = run_job(tmp_path, small_dataset)
    folder = job.run_dir
    config = json.loads((folder / "config.json").read_text())
    assert ModelConfig.from_dict(config["model"]) == SMALL.resolved()
    assert TrainConfig.from_dict(config["train"]) == TrainConfig(epochs=2).resolved()
    assert json.loads((folder / "labels.json").read_text()) == ["horses", "humans"]
    history = json.loads((folder / "history.json").read_text())
    assert {len(history[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy")} == {2}
    split = json.loads((folder / "split.json").read_text())
    assert len(split["validation"]) == len(small_dataset.validation)
    assert runs.read_status(folder)["status"] == runs.FINISHED
    info = runs.list_runs(tmp_path / "runs")[0]
    assert info.has_model and info.epochs_done == 2 and info.best_val_accuracy == max(history["val_accuracy"])


def test_reloaded_model_keeps_class_order_and_predicts_identically(small_dataset, real_weights, tmp_path):
    job = run_job(tmp_path, small_dataset, train_config=TrainConfig(epochs=4))
    loaded = runs.load_model(job.run_dir)
    again = keras.saving.load_model(job.run_dir / "model.keras", safe_mode=True)
    images, labels = next(iter(image_dataset(small_dataset.validation, 150, 64)))
    first = loaded.predict(images, verbose=0)
    np.testing.assert_array_equal(first, again.predict(images, verbose=0))
    # Binary output is P(classes[1]): humans score high, horses low.
    predicted = (first[:, 0] > 0.5).astype(int)
    assert runs.load_labels(job.run_dir) == ("horses", "humans")
    assert (predicted == labels.numpy()).mean() >= 0.8


def test_second_run_with_new_head_settings_reuses_cached_features(small_dataset, real_weights, tmp_path):
    run_job(tmp_path, small_dataset)
    events = []
    changed = ModelConfig(**{**SMALL.to_dict(), "dropout": 0.5, "dense_units": (8,)})
    job = run_job(tmp_path, small_dataset, changed, TrainConfig(epochs=1, optimizer="rmsprop"), on_event=events.append)
    extraction = [e for e in events if e["type"] == "progress" and e["phase"] == "extracting features"]
    assert extraction and all(e.get("cached") for e in extraction)
    assert job.status == runs.FINISHED


def test_augmented_training_runs_the_backbone_every_epoch(small_dataset, real_weights, tmp_path):
    events = []
    job = run_job(tmp_path, small_dataset, train_config=TrainConfig(epochs=1, augment=True), on_event=events.append)
    assert job.status == runs.FINISHED
    phases = [e["phase"] for e in events if e["type"] == "phase"]
    assert "extracting features" not in phases and "training" in phases
    assert runs.load_model(job.run_dir).predict(np.zeros((1, 120, 80, 3)), verbose=0).shape == (1, 1)


def test_stop_finishes_the_batch_and_keeps_a_loadable_model(small_dataset, real_weights, tmp_path):
    holder = {}

    def stop_after_first_epoch(event):
        if event["type"] == "epoch" and event["epoch"] == 1:
            holder["job"].stop()

    job = TrainingJob(small_dataset, SMALL, TrainConfig(epochs=50), runs_dir=tmp_path / "runs",
                      work_dir=tmp_path / "work", on_event=stop_after_first_epoch)
    holder["job"] = job
    state = job.start().wait(timeout=300)
    assert state.status == runs.STOPPED
    assert 1 <= len(state.history["loss"]) < 50
    assert runs.read_status(job.run_dir)["status"] == runs.STOPPED
    assert runs.load_model(job.run_dir).predict(np.zeros((1, 96, 96, 3)), verbose=0).shape == (1, 1)


def test_failure_mid_training_keeps_finished_epochs(small_dataset, real_weights, tmp_path, monkeypatch):
    epochs_done = []
    original = FeatureBatches.__getitem__

    def run_out_of_memory_after_two_epochs(self, index):
        if len(epochs_done) >= 2:
            raise MemoryError()
        return original(self, index)

    monkeypatch.setattr(features, "IN_MEMORY_BYTES", 1)  # features stream from disk through FeatureBatches
    monkeypatch.setattr(FeatureBatches, "__getitem__", run_out_of_memory_after_two_epochs)
    record = lambda event: epochs_done.append(event) if event["type"] == "epoch" else None  # noqa: E731
    job = run_job(tmp_path, small_dataset, train_config=TrainConfig(epochs=5), on_event=record)
    state = job.snapshot()
    assert state.status == runs.FAILED
    assert "ran out of memory" in state.message and "last completed epoch is saved" in state.message
    assert len(json.loads((job.run_dir / "history.json").read_text())["loss"]) == 2
    assert runs.read_status(job.run_dir)["message"] == state.message
    runs.load_model(job.run_dir)


def test_nan_loss_fails_with_advice(small_dataset, real_weights, tmp_path, monkeypatch):
    original = FeatureBatches.__getitem__
    monkeypatch.setattr(features, "IN_MEMORY_BYTES", 1)  # features stream from disk through FeatureBatches
    monkeypatch.setattr(FeatureBatches, "__getitem__", lambda self, i: (original(self, i)[0] * np.nan, original(self, i)[1]))
    state = run_job(tmp_path, small_dataset).snapshot()
    assert state.status == runs.FAILED
    assert "NaN" in state.message and "learning rate" in state.message


def test_an_undecodable_image_that_slipped_through_fails_the_job_readably(small_dataset, real_weights, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    data = Dataset(root=small_dataset.root, classes=small_dataset.classes,
                   train=small_dataset.train + ((bad, 0),), validation=small_dataset.validation)
    state = run_job(tmp_path, data).snapshot()
    assert state.status == runs.FAILED
    assert state.message.startswith("Training failed")
    assert runs.read_status(next((tmp_path / "runs").iterdir()))["status"] == runs.FAILED


def test_a_run_left_running_by_a_dead_process_is_interrupted(tmp_path):
    folder = runs.new_run_dir(tmp_path, "crashed")
    runs.write_json(folder / runs.CONFIG_FILE, {"model": {}, "train": {}})
    runs.write_json(folder / runs.STATUS_FILE, {"status": "running", "pid": 2**22 + 12345, "token": "another-process"})
    info = runs.read_run(folder)
    assert info.status == runs.INTERRUPTED and "interrupted" in info.message


def test_train_function_with_a_single_class_fails_plainly(tmp_path, horses_or_humans):
    root = tmp_path / "one"
    shutil.copytree(horses_or_humans / "horses", root / "horses")
    with pytest.raises(Exception) as caught:
        load_folder(root)
    assert "only one class" in str(caught.value)
    data = Dataset(root=root, classes=("horses",), train=(), validation=())
    job = train(data, SMALL, TrainConfig(epochs=1), runs_dir=tmp_path / "runs", work_dir=tmp_path / "work")
    assert job.status == runs.FAILED and "at least 2 classes" in job.snapshot().message


def test_same_seed_same_history(small_dataset, real_weights, tmp_path):
    settings = TrainConfig(epochs=3, seed=7)
    first = run_job(tmp_path, small_dataset, train_config=settings).snapshot().history
    second = run_job(tmp_path, small_dataset, train_config=settings).snapshot().history
    assert first["loss"] == second["loss"] and first["val_accuracy"] == second["val_accuracy"]
    other = run_job(tmp_path, small_dataset, train_config=TrainConfig(epochs=3, seed=8)).snapshot().history
    assert other["loss"] != first["loss"]


def test_early_stopping_ends_early_and_restores_the_best_epoch(small_dataset, real_weights, tmp_path):
    # Validation labels flipped: the better the model fits, the worse validation loss gets.
    flipped = tuple((path, 1 - label) for path, label in small_dataset.validation)
    data = Dataset(root=small_dataset.root, classes=small_dataset.classes, train=small_dataset.train, validation=flipped)
    settings = TrainConfig(epochs=40, early_stopping=True, patience=2)
    job = run_job(tmp_path, data, train_config=settings)
    history = job.snapshot().history
    assert job.status == runs.FINISHED
    assert len(history["val_loss"]) < 40
    best = int(np.argmin(history["val_loss"]))
    assert best == len(history["val_loss"]) - 1 - settings.patience
    model = runs.load_model(job.run_dir)
    model.compile(loss="binary_crossentropy", metrics=["accuracy"])
    images = np.concatenate([x for x, _ in image_dataset(flipped, 96, 64)])
    loss, _ = model.evaluate(images, np.asarray([y for _, y in flipped]), verbose=0)
    assert loss == pytest.approx(history["val_loss"][best], rel=0.02, abs=1e-3)
