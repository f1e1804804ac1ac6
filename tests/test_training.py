"""Training jobs on real images: real transfer, the fast path's equivalence, stop and failure."""

import json
import shutil

import keras
import numpy as np
import pytest

from tlcore import runs
from tlcore.config import Phase
from tlcore.dataset import Dataset, load_folder
from tlcore.inputs import image_dataset
from tlcore.model import ModelConfig
from tlcore.training import TrainConfig, TrainingJob, train
from tlcore.training.events import EpochEnded, PhaseStarted, Progress

SMALL = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=96, dense_units=(32,), dropout=0.2)


def run_job(tmp_path, data, model=SMALL, train_config=None, on_event=None, callbacks=()):
    job = TrainingJob(data, model, train_config or TrainConfig(epochs=2), runs_dir=tmp_path / "runs",
                      work_dir=tmp_path / "work", on_event=on_event, callbacks=callbacks)
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
    assert runs.Run(folder).status().status == runs.FINISHED
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
    extraction = [e for e in events if isinstance(e, Progress) and e.phase == Phase.EXTRACTING]
    assert extraction and all(e.cached for e in extraction)
    assert job.status == runs.FINISHED


def test_augmented_training_runs_the_backbone_every_epoch(small_dataset, real_weights, tmp_path):
    events = []
    job = run_job(tmp_path, small_dataset, train_config=TrainConfig(epochs=1, augment=True), on_event=events.append)
    assert job.status == runs.FINISHED
    phases = [e.phase for e in events if isinstance(e, PhaseStarted)]
    assert Phase.EXTRACTING not in phases and Phase.TRAINING in phases
    assert runs.load_model(job.run_dir).predict(np.zeros((1, 120, 80, 3)), verbose=0).shape == (1, 1)


def test_stop_finishes_the_batch_and_keeps_a_loadable_model(small_dataset, real_weights, tmp_path):
    holder = {}

    def stop_after_first_epoch(event):
        if isinstance(event, EpochEnded) and event.epoch == 1:
            holder["job"].stop()

    job = TrainingJob(small_dataset, SMALL, TrainConfig(epochs=50), runs_dir=tmp_path / "runs",
                      work_dir=tmp_path / "work", on_event=stop_after_first_epoch)
    holder["job"] = job
    state = job.start().wait(timeout=300)
    assert state.status == runs.STOPPED
    assert 1 <= len(state.history["loss"]) < 50
    assert runs.Run(job.run_dir).status().status == runs.STOPPED
    assert runs.load_model(job.run_dir).predict(np.zeros((1, 96, 96, 3)), verbose=0).shape == (1, 1)


class FailAtEpoch(keras.callbacks.Callback):
    """Fault injection: raises `error` as epoch `epoch` (counted from 1) begins."""

    def __init__(self, epoch: int, error: BaseException):
        super().__init__()
        self.epoch, self.error = epoch, error

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise self.error


class PoisonWeightsAtEpoch(keras.callbacks.Callback):
    """Fault injection: turns the trained weights into NaN as epoch `epoch` begins, as a far too high rate would."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            self.model.set_weights([np.full(w.shape, np.nan, w.dtype) for w in self.model.get_weights()])


def test_failure_mid_training_keeps_finished_epochs(small_dataset, real_weights, tmp_path):
    job = run_job(tmp_path, small_dataset, train_config=TrainConfig(epochs=5), callbacks=[FailAtEpoch(3, MemoryError())])
    state = job.snapshot()
    assert state.status == runs.FAILED
    assert "ran out of memory" in state.message and "last completed epoch is saved" in state.message
    assert len(json.loads((job.run_dir / "history.json").read_text())["loss"]) == 2
    assert runs.Run(job.run_dir).status().message == state.message
    model = runs.load_model(job.run_dir)
    images, _ = next(iter(image_dataset(small_dataset.validation, 96, 64)))
    assert np.isfinite(model.predict(images, verbose=0)).all()


def test_nan_loss_fails_with_advice_and_keeps_the_last_good_epoch(small_dataset, real_weights, tmp_path):
    job = run_job(tmp_path, small_dataset, train_config=TrainConfig(epochs=4), callbacks=[PoisonWeightsAtEpoch(3)])
    state = job.snapshot()
    assert state.status == runs.FAILED
    assert "NaN" in state.message and "learning rate" in state.message
    history = json.loads((job.run_dir / "history.json").read_text())
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    images, _ = next(iter(image_dataset(small_dataset.validation, 96, 64)))
    assert np.isfinite(runs.load_model(job.run_dir).predict(images, verbose=0)).all()


def test_a_run_left_running_by_a_dead_process_is_interrupted(tmp_path):
    run = runs.Run.create(tmp_path, ModelConfig().resolved(), TrainConfig(), {})
    runs.write_json(run.path / runs.STATUS_FILE, {"status": "running", "pid": 2**22 + 12345, "token": "another-process"})
    info = runs.read_run(run.path)
    assert info.status == runs.INTERRUPTED and "interrupted" in info.message


def test_a_run_left_running_by_a_process_whose_number_was_reused_is_interrupted(tmp_path):
    # After a restart in a container the new server may be PID 1 again, like the old one.
    run = runs.Run.create(tmp_path, ModelConfig().resolved(), TrainConfig(), {})
    run.write_status("running")
    status = json.loads((run.path / runs.STATUS_FILE).read_text())
    assert status["process_start"] is not None
    status.update(token="the-server-before-the-restart", process_start=status["process_start"] - 1)
    runs.write_json(run.path / runs.STATUS_FILE, status)
    assert run.status().status == runs.INTERRUPTED


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
    flipped = tuple((item.path, 1 - item.label) for item in small_dataset.validation)
    data = Dataset(root=small_dataset.root, classes=small_dataset.classes, train=small_dataset.train, validation=flipped)
    settings = TrainConfig(epochs=40, early_stopping=True, patience=2)
    job = run_job(tmp_path, data, train_config=settings)
    history = job.snapshot().history
    assert job.status == runs.FINISHED
    assert len(history["val_loss"]) < 40
    best = int(np.argmin(history["val_loss"]))
    assert best == len(history["val_loss"]) - 1 - settings.patience
    assert job.snapshot().best_epoch == best + 1
    model = runs.load_model(job.run_dir)
    model.compile(loss="binary_crossentropy", metrics=["accuracy"])
    images = np.concatenate([x for x, _ in image_dataset(flipped, 96, 64)])
    loss, _ = model.evaluate(images, np.asarray([item[1] for item in flipped]), verbose=0)
    assert loss == pytest.approx(history["val_loss"][best], rel=0.02, abs=1e-3)


def test_a_saved_model_loads_in_plain_keras_and_predicts_the_same(small_dataset, real_weights, tmp_path):
    import subprocess
    import sys

    job = run_job(tmp_path, small_dataset, train_config=TrainConfig(epochs=1))
    images, _ = next(iter(image_dataset(small_dataset.validation, 96, 8)))
    np.save(tmp_path / "images.npy", images.numpy())
    expected = runs.load_model(job.run_dir).predict(images, verbose=0)
    code = (
        "import sys, numpy, keras\n"
        f"model = keras.saving.load_model({str(job.run_dir / 'model.keras')!r}, safe_mode=True)\n"
        f"numpy.save({str(tmp_path / 'out.npy')!r}, model.predict(numpy.load({str(tmp_path / 'images.npy')!r}), verbose=0))\n"
        "print(any(name.startswith('tlcore') for name in sys.modules))\n"
    )
    # Run from an empty folder: tlcore is not importable there.
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-5, atol=1e-6)
