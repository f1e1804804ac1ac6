"""Tests of `tlcore.samples`: the shapes set is repeatable, quick, loadable and learnable; downloads fail plainly."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from conftest_data import class_files, file_hashes, make_zip, real_images
from tlcore import samples
from tlcore.dataset import load_dataset
from tlcore.errors import DatasetError
from tlcore.images import load_array


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    first = file_hashes(samples.make_shapes_dataset(tmp_path / "a", seed=3, per_class=10))
    assert first == file_hashes(samples.make_shapes_dataset(tmp_path / "b", seed=3, per_class=10))
    other = file_hashes(samples.make_shapes_dataset(tmp_path / "c", seed=4, per_class=10))
    assert first.keys() == other.keys() and first != other


def test_default_set_is_quick_split_and_loads(tmp_path):
    started = time.perf_counter()
    folder = samples.make_shapes_dataset(tmp_path / "shapes")
    assert time.perf_counter() - started < 10
    data = load_dataset(folder, work_dir=tmp_path / "work")
    assert len(data.classes) >= 3 and data.classes == tuple(sorted(samples.SHAPES))
    assert data.presplit and data.skipped == () and data.warnings == ()
    assert set(data.counts()["train"].values()) == {96} and set(data.counts()["validation"].values()) == {24}
    assert load_array(data.train[0][0]).shape == (96, 96, 3)


def test_complete_set_is_reused_and_changed_settings_regenerate(tmp_path):
    folder = samples.make_shapes_dataset(tmp_path / "shapes", per_class=10)
    first_file = next((folder / "train" / "circle").iterdir())
    written = first_file.stat().st_mtime_ns
    started = time.perf_counter()
    samples.make_shapes_dataset(tmp_path / "shapes", per_class=10)
    assert time.perf_counter() - started < 0.1 and first_file.stat().st_mtime_ns == written
    samples.make_shapes_dataset(tmp_path / "shapes", per_class=20, size=48)
    assert len(list((folder / "train" / "circle").iterdir())) == 16
    assert [path.name for path in tmp_path.iterdir()] == ["shapes"]


def test_someone_elses_folder_is_not_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_bytes(b"precious")
    with pytest.raises(DatasetError, match="already holds other files"):
        samples.make_shapes_dataset(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.docx").read_bytes() == b"precious"


def test_shapes_are_learnable_by_a_frozen_imagenet_backbone(tmp_path, real_weights, assets_dir):
    keras = pytest.importorskip("keras")
    linear_model = pytest.importorskip("sklearn.linear_model")
    data = load_dataset(samples.make_shapes_dataset(tmp_path / "shapes", per_class=20), work_dir=tmp_path / "work")
    body = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(96, 96, 3), pooling="avg")
    body.load_weights(next(assets_dir.glob("weights/mobilenet_v2*.h5")))

    def features(items):
        pixels = np.stack([load_array(item.path) for item in items]).astype("float32")
        inputs = keras.applications.mobilenet_v2.preprocess_input(pixels)
        return body.predict(inputs, verbose=0), np.array([item.label for item in items])

    probe = linear_model.LogisticRegression(max_iter=2000).fit(*features(data.train))
    assert probe.score(*features(data.validation)) >= 0.8


def test_prepare_shapes_sample(tmp_path):
    folder = samples.prepare_sample("shapes", tmp_path)
    assert folder == tmp_path / "samples" / "shapes" and (folder / "validation" / "star").is_dir()


def test_registry_describes_each_sample():
    assert set(samples.SAMPLES) == {"shapes", "cats_and_dogs"}
    for name, sample in samples.SAMPLES.items():
        assert sample.name == name and sample.display_name and sample.description


def test_unknown_sample(tmp_path):
    with pytest.raises(DatasetError, match="no sample called `birds`. Choose one of: shapes, cats_and_dogs"):
        samples.prepare_sample("birds", tmp_path)


def test_cats_and_dogs_offline_fails_plainly(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(DatasetError, match="could not be downloaded.*upload a zip"):
        samples.prepare_sample("cats_and_dogs", tmp_path)
    assert not (tmp_path / "downloads" / "datasets" / samples.CATS_AND_DOGS_FILE).exists()


def test_cats_and_dogs_failed_download_fails_plainly(tmp_path, monkeypatch):
    keras = pytest.importorskip("keras")

    class Reachable:
        def close(self):
            pass

    def failing_get_file(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com: None -- timed out")

    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: Reachable())
    monkeypatch.setattr(keras.utils, "get_file", failing_get_file)
    with pytest.raises(DatasetError, match="could not be downloaded") as caught:
        samples.prepare_sample("cats_and_dogs", tmp_path)
    assert "URL fetch failure" not in str(caught.value)


def test_cats_and_dogs_from_the_download_cache(tmp_path, monkeypatch, horses_or_humans):
    """A zip already downloaded is unpacked safely and used without touching the network."""
    monkeypatch.setattr(socket, "create_connection", pytest.fail)
    pictures = {name: real_images(horses_or_humans / "horses", 4) for name in ("cats", "dogs")}
    files = {
        **class_files(pictures, prefix="cats_and_dogs_filtered/train/"),
        **class_files(pictures, prefix="cats_and_dogs_filtered/validation/"),
        "cats_and_dogs_filtered/vectorize.py": b"print('hello')",
    }
    cache = tmp_path / "downloads" / "datasets"
    cache.mkdir(parents=True)
    make_zip(cache / samples.CATS_AND_DOGS_FILE, files)
    folder = samples.prepare_sample("cats_and_dogs", tmp_path)
    assert folder.name == "cats_and_dogs_filtered" and folder.is_relative_to(tmp_path / "datasets")
    data = load_dataset(folder, work_dir=tmp_path)
    assert data.classes == ("cats", "dogs") and data.presplit
