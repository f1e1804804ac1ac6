"""The model builder: the classic lab's exact numbers, frozen batch norm, preprocessing inside."""

import keras
import numpy as np
import pytest

from tlcore.errors import ModelConfigError
from tlcore.model import ModelConfig, build_model, summarize

CLASSIC = ModelConfig(
    backbone="inception_v3",
    input_size=150,
    cut_layer="mixed7",
    pooling="flatten",
    dense_units=(1024,),
    dropout=0.2,
    weights="none",
)
SMALL = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=64, dense_units=(16,), dropout=0.0, weights="none")


def count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def test_classic_lab_parameter_counts_exactly():
    summary = summarize(CLASSIC, 2)
    assert summary.cut_output_shape == (7, 7, 768)
    assert (summary.total_params, summary.trainable_params, summary.non_trainable_params) == (
        47_512_481,
        38_537_217,
        8_975_264,
    )
    model = build_model(CLASSIC, 2)
    assert model.count_params() == 47_512_481
    assert count(model.trainable_weights) == 38_537_217
    assert count(model.non_trainable_weights) == 8_975_264
    assert any("38,537,217" in w for w in summary.warnings)


@pytest.mark.parametrize(
    "config, classes",
    [
        (SMALL, 2),
        (ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=64, pooling="flatten", dense_units=(), weights="none"), 5),
        (ModelConfig(backbone="densenet121", input_size=64, cut_layer="pool3_relu", pooling="max", dense_units=(32, 8), weights="none"), 3),
    ],
)
def test_summary_matches_the_built_model(config, classes):
    summary = summarize(config, classes)
    model = build_model(config, classes)
    assert summary.total_params == model.count_params()
    assert summary.trainable_params == count(model.trainable_weights)
    assert summary.non_trainable_params == count(model.non_trainable_weights)
    units = model.output.shape[-1]
    assert units == (1 if classes == 2 else classes)


def test_output_layer_is_sigmoid_for_two_classes_and_softmax_for_more():
    two = build_model(SMALL, 2).get_layer("head").layers[-1]
    five = build_model(SMALL, 5).get_layer("head").layers[-1]
    assert (two.units, two.activation.__name__) == (1, "sigmoid")
    assert (five.units, five.activation.__name__) == (5, "softmax")


def test_dense_zero_means_no_hidden_layer():
    config = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=64, dense_units=(0,), dropout=0.2, weights="none")
    head = build_model(config, 3).get_layer("head")
    assert [type(layer).__name__ for layer in head.layers] == ["InputLayer", "GlobalAveragePooling2D", "Dropout", "Dense"]


def test_takes_raw_images_of_any_size_and_preprocesses_inside():
    model = build_model(SMALL, 2)
    assert [layer.name for layer in model.layers[1:3]] == ["resize", "preprocess"]
    for shape in [(1, 40, 90, 3), (1, 300, 200, 3)]:
        assert model.predict(np.zeros(shape, "float32"), verbose=0).shape == (1, 1)


def test_frozen_batch_norm_keeps_its_statistics_while_the_head_trains():
    model = build_model(SMALL, 2)
    body = model.get_layer("backbone")
    bn = body.get_layer("bn_Conv1")
    before = [w.copy() for w in bn.get_weights()]
    head_before = [w.copy() for w in model.get_layer("head").get_weights()]
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (8, 64, 64, 3)).astype("float32")
    model.fit(x, np.array([0, 1] * 4), epochs=2, verbose=0)
    for old, new in zip(before, bn.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert not all(np.array_equal(a, b) for a, b in zip(head_before, model.get_layer("head").get_weights()))
    # With no dropout, training mode must compute exactly what inference mode does.
    np.testing.assert_allclose(model(x, training=True), model(x, training=False), rtol=1e-5, atol=1e-6)


def test_saved_model_reloads_in_safe_mode_with_identical_predictions(tmp_path):
    model = build_model(SMALL, 3)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(1).uniform(0, 255, (4, 50, 70, 3)).astype("float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


@pytest.mark.parametrize(
    "config, classes, words",
    [
        (ModelConfig(backbone="inception_v3", cut_layer="mixed77", weights="none"), 2, "Unknown cut layer `mixed77` for InceptionV3. Choose one of: mixed0"),
        (ModelConfig(backbone="inception_v3", input_size=60, weights="none"), 2, "at least 75x75"),
        (SMALL, 1, "at least 2 classes"),
        (ModelConfig(pooling="median", weights="none"), 2, "Unknown pooling"),
        (ModelConfig(dropout=1.5, weights="none"), 2, "dropout rate"),
        (ModelConfig(backbone="mobilenet_v2", cut_layer="predictions", weights="none"), 2, "Unknown cut layer"),
    ],
)
def test_user_mistakes_raise_plain_messages(config, classes, words):
    with pytest.raises(ModelConfigError) as caught:
        summarize(config, classes)
    assert words in str(caught.value)


def test_config_round_trips_through_json():
    import json

    config = CLASSIC.resolved()
    assert ModelConfig.from_dict(json.loads(config.to_json())) == config
