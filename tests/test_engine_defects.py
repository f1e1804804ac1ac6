"""Models that must never be silently wrong: one test per engine defect found in the audit.

Each test trains or builds for real on small inputs and asserts what a user would check by
hand: the saved model scores what its history says, features follow the weights and the
image bytes, splits stay put, the figures shown are the restored model's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import MOBILENET_WEIGHTS, ROOT
from conftest_data import class_files, encode, make_zip, real_images, write_files
from weights_files import random_backbone_weights

from tlcore import runs
from tlcore.backbones import BACKBONES, fresh_layer_names
from tlcore.dataset import Dataset, load_dataset
from tlcore.images import load_array
from tlcore.model import ModelConfig, build_body
from tlcore.training import TrainConfig, train

SMALL = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=96, dense_units=(32,), dropout=0.2)


def cli(*args, env=None, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "tlcore", *map(str, args)],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def last_json(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_training(tmp_path, data, model=SMALL, settings=None, work="work"):
    job = train(data, model, settings or TrainConfig(epochs=2), runs_dir=tmp_path / "runs", work_dir=tmp_path / work)
    state = job.snapshot()
    assert state.status == runs.FINISHED, state.message
    return job


def saved_model_loss(run_dir: Path, items) -> float:
    """The saved model's binary cross-entropy on `items`, fed the raw files as a user would."""
    model = runs.load_model(run_dir)
    images = np.stack([load_array(item[0]) for item in items]).astype("float32")
    labels = np.asarray([item[1] for item in items], dtype="float32")
    probabilities = model.predict(images, verbose=0)[:, 0].astype("float64")
    probabilities = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities)))


def feature_files(work: Path) -> list[str]:
    folder = work / "features"
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def names(dataset: Dataset, split: str) -> list[str]:
    return sorted(dataset.display_path(item[0]) for item in getattr(dataset, split))


# 1. Stale features from other weights ---------------------------------------------------------


def test_features_follow_the_weights_file_actually_loaded(small_dataset, keras_home, tmp_path, monkeypatch):
    home = tmp_path / "keras"
    shutil.copytree(keras_home, home)
    monkeypatch.setenv("KERAS_HOME", str(home))
    run_training(tmp_path, small_dataset)
    # Another file under the same name, as a later download or a user's copy would put there.
    random_backbone_weights("MobileNetV2", home / "models" / MOBILENET_WEIGHTS, alpha=0.35)
    second = run_training(tmp_path, small_dataset)
    history = json.loads((second.run_dir / "history.json").read_text())
    loss = saved_model_loss(second.run_dir, small_dataset.validation)
    assert loss == pytest.approx(history["val_loss"][-1], rel=0.02, abs=1e-3)


# 2. Images keyed by their bytes ---------------------------------------------------------------


def test_the_same_pictures_elsewhere_reuse_their_features(small_dataset, real_weights, tmp_path):
    run_training(tmp_path, small_dataset, settings=TrainConfig(epochs=1))
    stored = feature_files(tmp_path / "work")
    assert stored
    moved = tmp_path / "moved" / "renamed-folder"
    shutil.copytree(small_dataset.root, moved)
    for path in moved.rglob("*.png"):
        os.utime(path, (1_000_000_000, 1_000_000_000))  # a copy has other times, same bytes
    run_training(tmp_path, load_dataset(moved, val_split=0.25, work_dir=tmp_path / "work"), settings=TrainConfig(epochs=1))
    assert feature_files(tmp_path / "work") == stored, "a moved copy of the same pictures was extracted again"
    # Half of each class, uploaded as a zip by another student: every picture is known already.
    half = {name: sorted((moved / name).glob("*.png"))[::2] for name in small_dataset.classes}
    subset = make_zip(tmp_path / "subset.zip", class_files(half))
    run_training(tmp_path, load_dataset(subset, work_dir=tmp_path / "work"), settings=TrainConfig(epochs=1))
    assert feature_files(tmp_path / "work") == stored, "a subset of known pictures was extracted again"


# 3 and 4. Every backbone: Keras' own ImageNet build, and inference mode whatever `training` ----


SMALLEST = {"inception_v3": 75, "xception": 71}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_body_from_a_weights_file_is_keras_own_imagenet_build(name, tmp_path, monkeypatch):
    spec = BACKBONES[name]
    alpha = spec.default_alpha
    size = SMALLEST.get(name, 32)
    home = tmp_path / "keras"
    weights = random_backbone_weights(spec.constructor, home / "models" / spec.weights_file(alpha, size)[0], alpha=alpha)
    monkeypatch.setenv("KERAS_HOME", str(home))
    config = ModelConfig(backbone=name, alpha=alpha, input_size=size, cut_layer=spec.default_cut)
    ours = build_body(config)

    from keras.src.utils import file_utils

    monkeypatch.setattr(file_utils, "get_file", lambda *args, **kwargs: str(weights))
    kwargs = {"alpha": alpha} if alpha is not None else {}
    with fresh_layer_names():  # the stable layer names users cut at
        theirs = getattr(keras.applications, spec.constructor)(
            include_top=False, weights="imagenet", input_shape=(size, size, 3), **kwargs
        )
    theirs = keras.Model(theirs.inputs, theirs.get_layer(spec.default_cut).output)
    assert [type(layer).__name__ for layer in ours.layers] == [type(layer).__name__ for layer in theirs.layers]
    for mine, keras_own in zip(ours.weights, theirs.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(keras_own))
    images = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype("float32")
    np.testing.assert_allclose(ours(images, training=False), theirs(images, training=False), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_the_frozen_body_runs_in_inference_mode_under_training_true(name):
    spec = BACKBONES[name]
    size = SMALLEST.get(name, 32)
    body = build_body(ModelConfig(backbone=name, input_size=size, cut_layer=spec.default_cut, weights="none"))
    inputs = keras.Input((size, size, 3))
    # As the classifier calls it; `fit` then calls the whole with training=True.
    features = keras.Model(inputs, body(inputs, training=False))
    images = np.random.default_rng(1).uniform(0, 255, (4, size, size, 3)).astype("float32")
    trained = np.asarray(features(images, training=True))
    inferred = np.asarray(features(images, training=False))
    # Random weights give small activations: compare relative to their size.
    assert np.abs(trained - inferred).max() <= 1e-4 * np.abs(inferred).max()


# 5. Splits that stay put ----------------------------------------------------------------------


@pytest.fixture
def photos(flowers) -> dict[str, list[Path]]:
    return {name: real_images(flowers / name, 12) for name in ("daisy", "rose", "tulip")}


def tiff_copy(photos: dict[str, list[Path]]) -> dict[str, bytes]:
    """The photos as files, one of each class as a TIFF (converted for TensorFlow when loaded)."""
    files = class_files(photos)
    for name, paths in photos.items():
        first = paths[0]
        del files[f"{name}/{first.name}"]
        files[f"{name}/{first.stem}.tif"] = encode(Image.open(first).convert("RGB"), "TIFF")
    return files


def test_the_split_does_not_move_with_the_work_folder(photos, tmp_path):
    folder = write_files(tmp_path / "photos", tiff_copy(photos))
    here = load_dataset(folder, work_dir=tmp_path / "one-home")
    there = load_dataset(folder, work_dir=tmp_path / "another-home" / "deeper")
    assert names(here, "validation") == names(there, "validation")


def test_adding_a_class_keeps_the_other_classes_split(photos, tmp_path):
    two = {name: photos[name] for name in ("daisy", "rose")}
    before = load_dataset(write_files(tmp_path / "two", class_files(two)), work_dir=tmp_path / "work")
    after = load_dataset(write_files(tmp_path / "three", class_files(photos)), work_dir=tmp_path / "work")
    kept = [name for name in names(after, "validation") if not name.startswith("tulip/")]
    assert kept == names(before, "validation")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, flowers, keras_home):
    """A run trained by the CLI on a folder of two flower classes, with its own work folder."""
    root = tmp_path_factory.mktemp("cli-run")
    photos = {name: real_images(flowers / name, 15) for name in ("daisy", "rose")}
    folder = write_files(root / "flowers", tiff_copy(photos))
    env = {"KERAS_HOME": str(keras_home), "TLCORE_HOME": str(root / "home-a")}
    result = cli("train", folder, "--input-size", "96", "--epochs", "1", "--runs-dir", root / "runs", "--json", env=env)
    return {"root": root, "folder": folder, "run": Path(last_json(result)["run_dir"]), "env": env}


def split_names(run_dir: Path, split: str) -> list[str]:
    return sorted(item["name"] for item in json.loads((run_dir / "split.json").read_text())[split])


def test_evaluate_scores_the_runs_own_validation_images(cli_run):
    env = {**cli_run["env"], "TLCORE_HOME": str(cli_run["root"] / "home-b")}
    result = last_json(cli("evaluate", cli_run["run"], cli_run["folder"], "--json", env=env))
    assert sorted(result["images"]) == split_names(cli_run["run"], "validation")
    assert not set(result["images"]) & set(split_names(cli_run["run"], "train"))
    without_data = last_json(cli("evaluate", cli_run["run"], "--json", env=env))
    assert sorted(without_data["images"]) == sorted(result["images"])
    every = last_json(cli("evaluate", cli_run["run"], cli_run["folder"], "--all", "--json", env=env))
    assert every["total"] == 30 and sorted(every["images"]) == sorted(
        split_names(cli_run["run"], "train") + split_names(cli_run["run"], "validation")
    )


def test_evaluate_scores_a_test_folder_by_default(cli_run, tmp_path):
    test = {name: sorted(cli_run["folder"].joinpath(name).iterdir())[:3] for name in ("daisy", "rose")}
    files = {f"train/{k}": v for k, v in class_files({n: sorted(cli_run["folder"].joinpath(n).iterdir())
                                                       for n in ("daisy", "rose")}).items()}
    files.update({f"test/{k}": v for k, v in class_files(test).items()})
    folder = write_files(tmp_path / "with-test", files)
    result = last_json(cli("evaluate", cli_run["run"], folder, "--json", env=cli_run["env"]))
    assert result["split"] == "test" and result["total"] == 6
    assert all(name.startswith("test/") for name in result["images"])


# 6. Early stopping reports the restored model -------------------------------------------------


def test_early_stopping_reports_the_restored_epoch(horses_or_humans, real_weights, tmp_path):
    # Validation labels swapped: the better the model fits, the worse validation loss gets.
    horses, humans = real_images(horses_or_humans / "horses", 24), real_images(horses_or_humans / "humans", 24)
    files = class_files({"horses": horses[:18], "humans": humans[:18]}, "train/")
    files.update(class_files({"horses": humans[18:], "humans": horses[18:]}, "validation/"))
    folder = write_files(tmp_path / "swapped", files)
    result = last_json(cli("train", folder, "--input-size", "96", "--epochs", "40", "--early-stopping", "--patience", "2",
                           "--runs-dir", tmp_path / "runs", "--json", env={"TLCORE_HOME": str(tmp_path / "home")}))
    history = json.loads(Path(result["run_dir"], "history.json").read_text())
    epochs = len(history["val_loss"])
    assert epochs < 40
    best = int(np.argmin(history["val_loss"])) + 1
    assert history["best_epoch"] == best == epochs - 2
    assert result["best_epoch"] == best
    assert result["val_accuracy"] == history["val_accuracy"][best - 1]
    evaluated = last_json(cli("evaluate", result["run_dir"], "--json"))
    assert evaluated["accuracy"] == pytest.approx(result["val_accuracy"], abs=1e-6)  # Keras keeps float32


# 7. Kept augmented views, one per epoch in order ----------------------------------------------


def test_epoch_e_reads_kept_view_e_mod_n():
    from tlcore.inputs import ViewBatches

    seen: list = []

    class Recording(ViewBatches):
        def __getitem__(self, index):
            features, labels = super().__getitem__(index)
            seen.append(float(features[0, 0]))
            return features, labels

    class MarkEpochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append("epoch")

    views = [np.full((8, 4), float(view), dtype="float32") for view in range(3)]
    batches = Recording(views, np.zeros(8, dtype="int32"), batch_size=8, seed=0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    model.fit(batches, epochs=5, verbose=0, callbacks=[MarkEpochs()])
    # Keras may read a batch before the first epoch to learn its shape; what counts is each epoch's read.
    read = [seen[i + 1] for i, entry in enumerate(seen) if entry == "epoch"]
    assert read == [0.0, 1.0, 2.0, 0.0, 1.0]


def test_no_view_is_extracted_that_no_epoch_reads(small_dataset, real_weights, tmp_path):
    events = []
    job = train(small_dataset, SMALL, TrainConfig(epochs=2, augment=True, augment_views=5),
                runs_dir=tmp_path / "runs", work_dir=tmp_path / "work", on_event=events.append)
    assert job.snapshot().status == runs.FINISHED
    splits = {event.split for event in events if getattr(event, "split", None)}
    assert splits == {"train, view 1", "train, view 2", "validation"}


# 8. Small ones --------------------------------------------------------------------------------


def test_a_finished_run_is_in_no_phase(small_dataset, real_weights, tmp_path):
    job = run_training(tmp_path, small_dataset, settings=TrainConfig(epochs=1))
    status = json.loads((job.run_dir / "status.json").read_text())
    assert status["status"] == "finished" and not status.get("phase")


def test_layers_of_the_frozen_backbone_are_not_trainable():
    layers = last_json(cli("layers", "--backbone", "mobilenet_v2", "--input-size", "96", "--json"))["layers"]
    assert layers and not any(layer["trainable"] for layer in layers)


def test_cli_sets_the_early_stopping_patience(small_dataset, real_weights, tmp_path):
    result = last_json(cli("train", small_dataset.root, "--input-size", "96", "--epochs", "1", "--early-stopping",
                           "--patience", "7", "--runs-dir", tmp_path / "runs", "--json",
                           env={"TLCORE_HOME": str(tmp_path / "home")}))
    assert json.loads(Path(result["run_dir"], "config.json").read_text())["train"]["patience"] == 7


# 9. Class imbalance can be acted on ------------------------------------------------------------


def test_balanced_class_weights_lift_the_small_class(horses_or_humans, real_weights, tmp_path):
    from tlcore.health import health_report

    files = class_files({"horses": real_images(horses_or_humans / "horses", 60),
                         "humans": real_images(horses_or_humans / "humans", 10)})
    data = load_dataset(write_files(tmp_path / "unbalanced", files), work_dir=tmp_path / "work")
    warning = next(w for w in health_report(data).warnings if "unbalanced" in w)
    assert "class weights" in warning.lower()
    probabilities = {}
    for weights in ("none", "balanced"):
        settings = TrainConfig(epochs=3, learning_rate=0.0003, class_weights=weights)
        job = run_training(tmp_path, data, ModelConfig(**{**SMALL.to_dict(), "dense_units": (8,)}), settings)
        model = runs.load_model(job.run_dir)
        images = np.stack([load_array(item[0]) for item in data.train + data.validation]).astype("float32")
        probabilities[weights] = float(model.predict(images, verbose=0)[:, 0].mean())
    # Output is P(humans), the class with six times fewer images.
    assert probabilities["balanced"] > probabilities["none"] + 0.02


# 10. Near-duplicates and leakage ---------------------------------------------------------------


def test_resized_and_reencoded_copies_across_splits_are_reported(flowers, tmp_path):
    from tlcore.health import health_report

    daisies, roses = real_images(flowers / "daisy", 10), real_images(flowers / "rose", 10)
    files = class_files({"daisy": daisies[:8], "rose": roses[:8]}, "train/")
    files.update(class_files({"daisy": daisies[8:], "rose": roses[8:]}, "validation/"))
    copy = Image.open(daisies[0]).convert("RGB")
    files["validation/daisy/copy-of-first.jpg"] = encode(copy.resize((200, 200)), "JPEG", quality=70)
    files["train/rose/another-copy.png"] = encode(copy.resize((96, 96)), "PNG")
    report = health_report(load_dataset(write_files(tmp_path / "leaky", files), work_dir=tmp_path / "work"))
    near = [group for group in report.near_duplicates]
    assert len(near) == 1 and len(near[0].paths) == 3
    assert set(near[0].paths) == {"train/daisy/" + daisies[0].name, "validation/daisy/copy-of-first.jpg",
                                  "train/rose/another-copy.png"}
    text = " ".join(report.warnings)
    assert "look alike" in text and "validation accuracy" in text
