"""The fine-tuning stage: after the head, in order; BatchNormalization frozen; the cached way equals the tutorial's."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from conftest_data import class_files, real_images, write_files

from tlcore import runs
from tlcore.config import Phase
from tlcore.dataset import load_dataset
from tlcore.extraction import body_copy, forget_bodies, frozen_body
from tlcore.inputs import image_dataset
from tlcore.model import ModelConfig, fine_tune_boundaries, fine_tune_boundary, unfreeze_top
from tlcore.training import TrainConfig, TrainingJob, compile_for, train
from tlcore.training.events import EpochEnded, PhaseStarted

# No dropout: the cached and the tutorial way then draw no random numbers, and must agree.
CONFIG = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=96, dense_units=(16,), dropout=0.0)


@pytest.fixture(scope="module")
def data(horses_or_humans, tmp_path_factory):
    photos = {name: real_images(horses_or_humans / name, 30) for name in ("horses", "humans")}
    root = tmp_path_factory.mktemp("fine-tune")
    return load_dataset(write_files(root / "pets", class_files(photos)), work_dir=root / "work")


def run(tmp_path, data, settings, **kwargs):
    job = TrainingJob(data, CONFIG, settings, runs_dir=tmp_path / "runs", work_dir=tmp_path / "work", **kwargs)
    job.run()
    return job


def test_block_ends_are_offered_where_the_graph_can_be_cut(real_weights):
    body = frozen_body(CONFIG).body
    offered = dict(fine_tune_boundaries(body, "mobilenet_v2"))
    assert offered["block_15_add"] == 11  # block_16, Conv_1 and out_relu
    assert offered["block_14_add"] > offered["block_15_add"]
    assert fine_tune_boundary(body, "mobilenet_v2", layers=5) == ("block_15_add", 11), "whole blocks: at least 5"
    assert fine_tune_boundary(body, "mobilenet_v2", after="block_12_add")[0] == "block_12_add"
    assert "block_13_add" not in offered, "block 13 halves the map: it has no residual add"
    with pytest.raises(Exception, match="block_16_expand"):
        fine_tune_boundary(body, "mobilenet_v2", after="block_16_expand")


def test_the_head_trains_first_then_the_top_blocks(data, real_weights, tmp_path):
    events = []
    job = run(tmp_path, data, TrainConfig(epochs=2, fine_tune_layers=10, fine_tune_epochs=2), on_event=events.append)
    state = job.snapshot()
    assert state.status == runs.FINISHED, state.message
    history = json.loads((job.run_dir / "history.json").read_text())
    assert history["stages"] == ["head on features"] * 2 + ["fine-tune"] * 2
    phases = [event.phase for event in events if isinstance(event, PhaseStarted)]
    assert phases.index(Phase.FINE_TUNING) > phases.index(Phase.TRAINING)
    assert [event.epoch for event in events if isinstance(event, EpochEnded)] == [1, 2, 3, 4]
    assert runs.Run(job.run_dir).fine_tuned == {"after": "block_15_add", "layers": 11}
    assert runs.read_run(job.run_dir).fine_tuned["layers"] == 11
    kept = frozen_body(CONFIG).body
    model = runs.load_model(job.run_dir)
    saved = model.get_layer("backbone")
    for layer in saved.layers:
        before = kept.get_layer(layer.name).get_weights()
        after = layer.get_weights()
        changed = any(not np.array_equal(a, b) for a, b in zip(before, after))
        top = layer.name.startswith(("block_16", "Conv_1")) and layer.name != "Conv_1_bn"
        if isinstance(layer, keras.layers.BatchNormalization) or not top:
            assert not changed, f"{layer.name} changed: frozen layers and every BatchNormalization keep their weights"
        elif layer.weights:
            assert changed, f"{layer.name} is in the fine-tuned top and should have learned"


def test_the_cached_way_trains_the_same_model_as_the_tutorials(data, real_weights, tmp_path):
    forget_bodies()
    head_only = run(tmp_path / "head", data, TrainConfig(epochs=2, seed=4))
    tuned = run(tmp_path / "tuned", data, TrainConfig(epochs=2, seed=4, fine_tune_layers=10, fine_tune_epochs=2))
    assert tuned.snapshot().status == runs.FINISHED, tuned.snapshot().message
    # The tutorial's way from the same first stage: the whole model on images every epoch.
    start = runs.load_model(head_only.run_dir)
    body = body_copy(frozen_body(CONFIG))
    unfreeze_top(body, "block_15_add")
    inputs = keras.Input((None, None, 3))
    x = start.get_layer("resize")(inputs)
    x = start.get_layer("preprocess")(x)
    head = keras.models.clone_model(start.get_layer("head"))
    head.set_weights(start.get_layer("head").get_weights())
    model = keras.Model(inputs, head(body(x, training=False)))
    compile_for(model, 2, TrainConfig(learning_rate=0.0001).resolved())
    train_set = image_dataset(data.train, 96, 32, shuffle_seed=4)
    model.fit(train_set, epochs=2, verbose=0)
    images = np.concatenate([x for x, _ in image_dataset(data.validation, 96, 64)])
    slow = model.predict(images, verbose=0)
    fast = runs.load_model(tuned.run_dir).predict(images, verbose=0)
    np.testing.assert_allclose(fast, slow, atol=2e-3)
    assert not np.allclose(fast, start.predict(images, verbose=0), atol=2e-3), "fine-tuning changed the answers"


def test_stopping_during_fine_tuning_keeps_its_best_epoch(data, real_weights, tmp_path):
    holder = {}

    class StopAfter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 4:  # the second fine-tuning epoch
                holder["job"].stop()

    job = TrainingJob(data, CONFIG, TrainConfig(epochs=2, fine_tune_layers=10, fine_tune_epochs=10, learning_rate=0.003,
                                                fine_tune_learning_rate=0.003),
                      runs_dir=tmp_path / "runs", work_dir=tmp_path / "work", callbacks=[StopAfter()])
    holder["job"] = job
    state = job.run()
    assert state.status == runs.STOPPED
    history = json.loads((job.run_dir / "history.json").read_text())
    # Stopped after the batch that was running: the epoch it was in ends early, and counts.
    assert history["stages"][:2] == ["head on features"] * 2 and 2 <= history["stages"].count("fine-tune") <= 3
    best = 3 + int(np.argmin(history["val_loss"][2:]))
    assert history["best_epoch"] == best
    model = runs.load_model(job.run_dir)
    model.compile(loss="binary_crossentropy")
    images = np.concatenate([x for x, _ in image_dataset(data.validation, 96, 64)])
    labels = np.asarray([item.label for item in data.validation])
    assert model.evaluate(images, labels, verbose=0) == pytest.approx(history["val_loss"][best - 1], rel=0.02, abs=1e-3)


def test_a_fine_tuned_run_exports_and_loads_like_any_other(data, real_weights, tmp_path):
    job = train(data, CONFIG, TrainConfig(epochs=1, fine_tune_from="block_14_add", fine_tune_epochs=1),
                runs_dir=tmp_path / "runs", work_dir=tmp_path / "work")
    assert job.snapshot().status == runs.FINISHED, job.snapshot().message
    from tlcore.exports import export_run

    report = export_run(job.run_dir, tmp_path / "export", ["keras", "tflite"])
    assert set(report["formats"]) == {"keras", "tflite"}
    reloaded = keras.saving.load_model(tmp_path / "export" / "model.keras", safe_mode=True)
    images = np.concatenate([x for x, _ in image_dataset(data.validation[:4], 96, 4)])
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), runs.load_model(job.run_dir).predict(images, verbose=0),
                               atol=1e-6)
