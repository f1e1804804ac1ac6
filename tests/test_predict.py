"""Tests of `tlcore.predict`: probabilities match the saved model, for any image and mode."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tlcore.errors import ImageError, RunError, TransferLabError
from tlcore.model import ModelConfig, build_model
from tlcore.predict import Prediction, Predictor, forget_predictors, get_predictor
from tlcore.runs import load_model

SMALL_CONFIG = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=64, weights="none", dense_units=(8,))
# Deliberately not alphabetical: the output order must come from labels.json.
THREE_LABELS = ["zebra", "apple", "mango"]


def make_run(folder: Path, model, labels, model_config: dict, split: dict | None = None) -> Path:
    """Writes a run folder the way training does: model, labels, config and split."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "labels.json").write_text(json.dumps(list(labels)))
    (folder / "config.json").write_text(json.dumps({"model": model_config, "created": "2026-01-01T00:00:00"}))
    (folder / "status.json").write_text(json.dumps({"status": "finished", "message": ""}))
    if split is not None:
        (folder / "split.json").write_text(json.dumps(split))
    return folder


def colour_model(input_size: int = 8, binary: bool = False):
    """A model whose answer is known: it scores an image by its mean red, green and blue.

    Softmax of `0.1 * mean(R, G, B)`, or for two classes the sigmoid of `0.05 * (R - B)`, so
    a red image is class 0 (or class 1 when binary) and a blue one class 2 (or class 0).
    """
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Resizing(input_size, input_size, name="resize")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="mean_colour")(x)
    units = 1 if binary else 3
    dense = keras.layers.Dense(units, activation="sigmoid" if binary else "softmax", name="scores")
    outputs = dense(x)
    if binary:
        dense.set_weights([np.array([[0.05], [0.0], [-0.05]], "float32"), np.zeros(1, "float32")])
    else:
        dense.set_weights([np.eye(3, dtype="float32") * 0.1, np.zeros(3, "float32")])
    return keras.Model(inputs, outputs)


def expected_colour_probabilities(image: np.ndarray, binary: bool = False) -> np.ndarray:
    """What `colour_model` gives, computed by hand from the image's mean colour."""
    mean = image.reshape(-1, 3).astype("float64").mean(axis=0)
    if binary:
        p = 1 / (1 + np.exp(-0.05 * (mean[0] - mean[2])))
        return np.array([1 - p, p])
    logits = 0.1 * mean
    exps = np.exp(logits - logits.max())
    return exps / exps.sum()


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype="uint8")


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def model_on_raw(model, image: np.ndarray) -> np.ndarray:
    """The model's own answer for one unresized image, its Resizing layer included."""
    # An eager call, not `model.predict`, which would trace again for every new image size.
    return keras.ops.convert_to_numpy(model(image[None].astype("float32"), training=False))[0].astype("float64")


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = build_model(SMALL_CONFIG, 3)
    return make_run(tmp_path_factory.mktemp("runs") / "three", model, THREE_LABELS, SMALL_CONFIG.to_dict())


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    keras.utils.set_random_seed(2)
    model = build_model(SMALL_CONFIG, 2)
    return make_run(tmp_path_factory.mktemp("runs") / "binary", model, ["cat", "dog"], SMALL_CONFIG.to_dict())


@pytest.fixture(scope="module")
def three_class(three_class_run):
    return Predictor.from_run(three_class_run), load_model(three_class_run)


def test_probabilities_equal_model_predict_on_resized_and_raw_images(three_class):
    predictor, model = three_class
    images = [random_image(64, 64, 0), random_image(100, 37, 1), random_image(23, 300, 2)]
    predictions = predictor.predict([Image.fromarray(image) for image in images])
    resized = np.stack(
        [tf.image.resize(image.astype("float32"), (64, 64), antialias=False).numpy() for image in images]
    )
    on_resized = model.predict(resized, verbose=0)
    for index, prediction in enumerate(predictions):
        values = np.array(list(prediction.probabilities.values()))
        np.testing.assert_allclose(values, on_resized[index], atol=1e-5)
        # The model's own Resizing layer would have done the same on the raw image.
        np.testing.assert_allclose(values, model_on_raw(model, images[index]), atol=1e-5)
        assert values.sum() == pytest.approx(1.0, abs=1e-5)


def test_class_order_follows_labels_file(three_class):
    predictor, model = three_class
    image = random_image(50, 70, 3)
    prediction = predictor.predict_one(image_bytes(image))
    assert list(prediction.probabilities) == THREE_LABELS
    expected = model_on_raw(model, image)
    best = int(np.argmax(expected))
    assert prediction.top_class == THREE_LABELS[best]
    assert prediction.confidence == pytest.approx(expected[best], abs=1e-5)
    assert prediction.confidence == max(prediction.probabilities.values())


def test_binary_model_gives_both_probabilities(binary_run):
    predictor = Predictor.from_run(binary_run)
    model = predictor.model
    image = random_image(80, 80, 4)
    prediction = predictor.predict_one(Image.fromarray(image))
    p = model_on_raw(model, image)[0]
    assert list(prediction.probabilities) == ["cat", "dog"]
    np.testing.assert_allclose([prediction.probabilities["cat"], prediction.probabilities["dog"]], [1 - p, p], atol=1e-5)
    assert prediction.top_class == ("dog" if p > 0.5 else "cat")


def image_bytes(array: np.ndarray, mode: str = "RGB", image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format=image_format)
    return buffer.getvalue()


def test_mixed_sources_sizes_and_modes_in_one_batch(three_class, tmp_path):
    predictor, model = three_class
    base = random_image(40, 60, 5)
    tall = random_image(90, 20, 6)
    pil = Image.fromarray(base)
    cmyk = image_bytes(base, "CMYK", "JPEG")

    def rgb(image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB"))

    # Each source with the RGB pixels it should be read as.
    cases = {
        "path": (write_png(tmp_path / "plain.png", base), base),
        "string path": (str(write_png(tmp_path / "tall.png", tall)), tall),
        "RGBA bytes": (image_bytes(base, "RGBA"), base),
        "greyscale file": (io.BytesIO(image_bytes(base, "L")), rgb(pil.convert("L"))),
        "palette image": (pil.convert("P"), rgb(pil.convert("P"))),
        "CMYK JPEG": (io.BytesIO(cmyk), rgb(Image.open(io.BytesIO(cmyk)))),
        "grey with alpha": (pil.convert("LA"), rgb(pil.convert("LA"))),
    }
    predictions = predictor.predict([source for source, _ in cases.values()], batch_size=3)
    assert len(predictions) == len(cases)
    for (name, (_, pixels)), prediction in zip(cases.items(), predictions):
        values = np.array(list(prediction.probabilities.values()))
        np.testing.assert_allclose(values, model_on_raw(model, pixels), atol=1e-5, err_msg=name)


def test_batching_does_not_change_answers(three_class):
    predictor, _ = three_class
    images = [Image.fromarray(random_image(30 + 7 * i, 45, 10 + i)) for i in range(5)]
    together = predictor.predict(images)
    in_pairs = predictor.predict(images, batch_size=2)
    for a, b in zip(together, in_pairs):
        np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-6)
    assert predictor.predict([]) == []
    single = predictor.predict(images[0])
    assert len(single) == 1
    np.testing.assert_allclose(list(single[0].probabilities.values()), list(together[0].probabilities.values()), atol=1e-6)


def test_corrupt_image_raises_image_error_naming_the_file(three_class, tmp_path):
    predictor, _ = three_class
    broken = tmp_path / "holiday-photo.jpg"
    broken.write_bytes(b"\xff\xd8\xff this is not really a jpeg")
    with pytest.raises(ImageError, match="holiday-photo.jpg") as caught:
        predictor.predict([Image.fromarray(random_image(10, 10, 0)), broken])
    assert isinstance(caught.value, TransferLabError)
    assert "Traceback" not in str(caught.value)


def test_known_model_gives_hand_computed_probabilities(tmp_path):
    run = make_run(tmp_path / "colour", colour_model(), ["red", "green", "blue"], {"input_size": 8})
    predictor = Predictor.from_run(run)
    image = np.zeros((16, 16, 3), "uint8")
    image[..., 0], image[..., 2] = 40, 10
    prediction = predictor.predict_one(Image.fromarray(image))
    np.testing.assert_allclose(list(prediction.probabilities.values()), expected_colour_probabilities(image), atol=1e-6)
    assert prediction.top_class == "red"


def test_input_size_comes_from_resize_layer_or_config(three_class, tmp_path):
    predictor, _ = three_class
    assert predictor.input_size == (64, 64)
    inputs = keras.Input(shape=(12, 12, 3))
    bare = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs)))
    run = make_run(tmp_path / "bare", bare, ["a", "b", "c"], {"input_size": 12})
    assert Predictor.from_run(run).input_size == (12, 12)
    (run / "config.json").write_text(json.dumps({"model": {}}))
    with pytest.raises(RunError, match="image size"):
        Predictor.from_run(run)


def test_labels_that_do_not_match_outputs_are_refused(tmp_path):
    run = make_run(tmp_path / "mismatch", colour_model(), ["red", "green"], {"input_size": 8})
    with pytest.raises(RunError, match="3 output"):
        Predictor.from_run(run)


def test_run_without_model_raises_run_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no saved model"):
        get_predictor(tmp_path / "empty")


def test_get_predictor_reuses_until_the_model_file_changes(tmp_path):
    forget_predictors()
    run = make_run(tmp_path / "cached", colour_model(), ["red", "green", "blue"], {"input_size": 8})
    first = get_predictor(run)
    assert get_predictor(str(run)) is first
    model_file = run / "model.keras"
    stat = model_file.stat()
    os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = get_predictor(run)
    assert second is not first
    assert get_predictor(run) is second
    forget_predictors()
    assert get_predictor(run) is not second


def test_prediction_to_dict_is_json_safe():
    prediction = Prediction.from_vector(["a", "b"], np.array([0.25, 0.75], "float32"))
    data = json.loads(json.dumps(prediction.to_dict()))
    assert data == {"probabilities": {"a": 0.25, "b": 0.75}, "top_class": "b", "confidence": 0.75}
