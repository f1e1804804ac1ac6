"""The fast paths behave like the slow ones: folded backbones, pooled and spilled features, kept results.

These tests check behaviour, never speed; `benchmarks/` measures speed.
"""

import os
import shutil

import keras
import numpy as np
import pytest

from tlcore import checking, features, images, runs
from tlcore.config import Phase
from tlcore.dataset import load_dataset
from tlcore.extraction import FeatureExtractor, body_fingerprint, forget_bodies, frozen_body
from tlcore.features import FeatureCache, Rows
from tlcore.inputs import ViewBatches, image_dataset
from tlcore.model import ModelConfig, assemble, build_body, build_head
from tlcore.training import TrainConfig, TrainingJob, compile_for, stages
from tlcore.training.events import Progress

SMALL = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=96, dense_units=(16,), dropout=0.0)


def run_job(tmp_path, data, model=SMALL, settings=None, events=None):
    job = TrainingJob(data, model, settings or TrainConfig(epochs=2, batch_size=8, seed=1), runs_dir=tmp_path / "runs",
                      work_dir=tmp_path / "work", on_event=None if events is None else events.append)
    state = job.run()
    assert state.status == runs.FINISHED, state.message
    return job


def extraction_events(events):
    return [e for e in events if isinstance(e, Progress) and e.phase == Phase.EXTRACTING]


def classic_predictions(config, settings, dataset):
    """Trains the whole model the classic way (frozen backbone inside, fitted on images) and predicts validation."""
    body = build_body(config)
    keras.utils.set_random_seed(settings.seed)
    head = build_head(body.output.shape[1:], 2, config)
    model = assemble(body, head, config)
    compile_for(model, 2, settings.resolved())
    size = config.resolved().input_size
    train = image_dataset(dataset.train, size, settings.batch_size, shuffle_seed=settings.seed)
    model.fit(train, epochs=settings.epochs, verbose=0)
    validation = np.concatenate([x for x, _ in image_dataset(dataset.validation, size, 64)])
    return model.predict(validation, verbose=0), validation


# The folded backbone -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=96, cut_layer="block_12_add"),
        ModelConfig(backbone="inception_v3", input_size=75, cut_layer="mixed2", weights="none"),
        ModelConfig(backbone="efficientnet_b0", input_size=64, cut_layer="block3b_add", weights="none"),
    ],
    ids=["mobilenet_v2", "inception_v3", "efficientnet_b0"],
)
def test_folded_batch_norm_gives_the_bodys_own_features(config, real_weights):
    body = build_body(config)
    folded = FeatureExtractor(body, config, ("map", "avg", "max"), map_dtype="float32")
    plain = FeatureExtractor(body, config, ("map", "avg", "max"), map_dtype="float32", fold=False)
    assert folded.folded and not plain.folded
    size = config.resolved().input_size
    batch = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype("float32")
    ours, theirs = folded(batch), plain(batch)
    scale = np.abs(theirs["map"]).max()
    for name in ("map", "avg", "max"):
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(ours["avg"], theirs["map"].mean(axis=(1, 2)), rtol=1e-4, atol=1e-5 * scale)


def test_a_cut_at_a_convolution_keeps_its_output_unnormalised(real_weights):
    # `Conv_1` is followed by `Conv_1_bn` in the whole network, but the cut leaves that out.
    config = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=96, cut_layer="Conv_1")
    body = build_body(config)
    assert "Conv_1_bn" not in [layer.name for layer in body.layers]
    folded = FeatureExtractor(body, config, ("map",), map_dtype="float32")
    plain = FeatureExtractor(body, config, ("map",), map_dtype="float32", fold=False)
    batch = np.random.default_rng(1).uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    reference = plain(batch)["map"]
    assert folded.folded
    np.testing.assert_allclose(folded(batch)["map"], reference, rtol=1e-3, atol=1e-4 * np.abs(reference).max())


# The fast path equals the classic path --------------------------------------------------------


@pytest.mark.parametrize("pooling", ["avg", "max", "flatten"])
def test_fast_path_predicts_like_the_classic_path_for_every_pooling(pooling, small_dataset, real_weights, tmp_path, monkeypatch):
    if pooling == "flatten":
        # Streams the Flatten head's features from disk, as for a cut too large for memory.
        monkeypatch.setattr(features, "IN_MEMORY_BYTES", 1)
    config = ModelConfig(**{**SMALL.to_dict(), "pooling": pooling})
    settings = TrainConfig(epochs=3, batch_size=8, seed=3)
    fed = []
    original = stages.feature_batches
    monkeypatch.setattr(stages, "feature_batches", lambda x, *a: fed.append(type(x)) or original(x, *a))
    job = run_job(tmp_path, small_dataset, config, settings)
    ours_model = runs.load_model(job.run_dir)
    theirs, validation = classic_predictions(config, settings, small_dataset)
    ours = ours_model.predict(validation, verbose=0)
    np.testing.assert_allclose(ours, theirs, atol=0.02)
    assert np.array_equal(ours > 0.5, theirs > 0.5)
    assert fed[:2] == ([Rows, Rows] if pooling == "flatten" else [np.ndarray, np.ndarray])


# What the cache keeps and reuses --------------------------------------------------------------


def test_pooled_features_are_cached_beside_the_map_and_reused_for_any_pooling(small_dataset, real_weights, tmp_path):
    run_job(tmp_path, small_dataset)
    shards = FeatureCache(tmp_path / "work" / "features").shards()
    assert len(shards) == 2, "one shard for the training images, one for the validation images"
    for shard in shards:
        assert set(shard.variants) == {"map", "avg", "max"}
        full, averaged = shard.array("map"), shard.array("avg")
        assert full.dtype == np.float16 and averaged.dtype == np.float32
        assert averaged.shape == (full.shape[0], full.shape[-1]) == (len(shard.ids), full.shape[-1])
        np.testing.assert_allclose(averaged, full.astype("float32").mean(axis=(1, 2)), rtol=2e-3, atol=2e-3)
    for pooling in ("max", "flatten"):
        events = []
        run_job(tmp_path, small_dataset, ModelConfig(**{**SMALL.to_dict(), "pooling": pooling}), events=events)
        assert extraction_events(events) and all(e.cached for e in extraction_events(events))


def test_random_weights_drawn_anew_never_reuse_features(small_dataset, tmp_path):
    config = ModelConfig(**{**SMALL.to_dict(), "weights": "none"})
    run_job(tmp_path, small_dataset, config)
    keras.utils.set_random_seed(12345)  # the next body's weights are drawn from another state
    events = []
    run_job(tmp_path, small_dataset, config, events=events)
    assert not any(e.cached for e in extraction_events(events))


# Kept bodies and image checks ------------------------------------------------------------------


def test_a_body_is_kept_per_backbone_cut_and_weights_file(real_weights, tmp_path, monkeypatch):
    home = tmp_path / "keras"
    shutil.copytree(real_weights, home)
    monkeypatch.setenv("KERAS_HOME", str(home))
    forget_bodies()
    config = SMALL.resolved()
    first = frozen_body(config)
    assert frozen_body(ModelConfig(**{**SMALL.to_dict(), "dense_units": (4,), "dropout": 0.3})) is first
    assert frozen_body(ModelConfig(**{**SMALL.to_dict(), "cut_layer": "block_12_add"})) is not first
    weights = next((home / "models").glob("*.h5"))
    info = weights.stat()
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    assert frozen_body(config) is first, "the same bytes with a new time are the same weights"
    weights.write_bytes(weights.read_bytes())  # rewritten, unchanged
    assert frozen_body(config) is first
    from weights_files import random_backbone_weights

    random_backbone_weights("MobileNetV2", weights, alpha=0.35)
    other = frozen_body(config)
    assert other is not first and other.weights.digest != first.weights.digest
    assert other.fingerprint != first.fingerprint
    random = ModelConfig(**{**SMALL.to_dict(), "weights": "none"})
    assert frozen_body(random) is not frozen_body(random)
    forget_bodies()


def test_a_stage_that_trains_the_body_gets_a_copy_and_the_kept_body_is_untouched(real_weights):
    from tlcore.extraction import body_copy

    kept = frozen_body(SMALL)
    copy = body_copy(kept)
    assert copy is not kept.body and [layer.name for layer in copy.layers] == [layer.name for layer in kept.body.layers]
    images = np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3)).astype("float32")
    np.testing.assert_allclose(copy(images, training=False), kept.body(images, training=False), rtol=1e-5, atol=1e-5)
    copy.set_weights([w * 0.5 for w in copy.get_weights()])
    assert body_fingerprint(kept.body) == kept.fingerprint
    assert frozen_body(SMALL) is kept


def test_image_checks_are_remembered_until_a_file_changes(tmp_path, horses_or_humans, monkeypatch):
    root = tmp_path / "data"
    for name in ("horses", "humans"):
        shutil.copytree(horses_or_humans / name, root / name)
    work = tmp_path / "work"
    first = load_dataset(root, work_dir=work)
    checked = []
    real_check = images.check_image
    monkeypatch.setattr(images, "check_image", lambda path: checked.append(path) or real_check(path))
    stages = []
    assert load_dataset(root, work_dir=work, progress=lambda *event: stages.append(event)) == first
    assert checked == [] and ("checking", 300, 300) in stages
    edited = sorted((root / "horses").glob("*.png"))[0]
    edited.write_bytes(b"not an image any more")
    again = load_dataset(root, work_dir=work)
    assert checked == [edited]
    assert [s.path for s in again.skipped] == [f"horses/{edited.name}"]
    assert checking.ImageChecks.MIN_IMAGES <= 300


# Cached augmented views ---------------------------------------------------------------------------


def test_cached_augmented_views_are_extracted_once_and_cycled_through(small_dataset, real_weights, tmp_path):
    settings = TrainConfig(epochs=3, batch_size=8, seed=2, augment=True, augment_views=2)
    events = []
    job = run_job(tmp_path, small_dataset, settings=settings, events=events)
    splits = {e.split for e in extraction_events(events)}
    assert splits == {"train, view 1", "train, view 2", "validation"}
    assert runs.load_model(job.run_dir).predict(np.zeros((1, 120, 80, 3)), verbose=0).shape == (1, 1)
    shards = FeatureCache(tmp_path / "work" / "features").shards()
    assert len({shard.folder.name for shard in shards}) == 3, "each view is features of its own"
    events = []
    run_job(tmp_path, small_dataset, ModelConfig(**{**SMALL.to_dict(), "dense_units": (8,)}), settings, events)
    assert all(e.cached for e in extraction_events(events))


def test_views_are_augmented_differently_and_batches_switch_view_each_epoch():
    views = [np.full((4, 2), v, dtype="float32") for v in range(3)]
    batches = ViewBatches(views, np.zeros(4, "int32"), 4, seed=0)
    seen = []
    for _ in range(4):
        batches.on_epoch_begin()
        seen.append(float(batches[0][0][0, 0]))
        batches.on_epoch_end()
    assert seen == [0.0, 1.0, 2.0, 0.0]


def test_augment_views_setting_is_checked():
    with pytest.raises(Exception, match="augmented copies"):
        TrainConfig(augment=True, augment_views=-1).resolved()
    assert TrainConfig.from_dict(TrainConfig(augment_views=3).to_dict()).augment_views == 3
