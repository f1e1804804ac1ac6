"""Every registered backbone builds, exposes its cut layers and uses its own preprocessing."""

import keras
import numpy as np
import pytest

from tlcore.backbones import BACKBONES, build_backbone, get_backbone, suggested_cuts
from tlcore.errors import ModelConfigError, WeightsUnavailableError
from tlcore.model import BackbonePreprocess

SPECS = list(BACKBONES.values())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("which", ["default", "minimum"])
def test_builds_with_every_suggested_cut(spec, which):
    size = spec.default_input_size if which == "default" else spec.min_input_size
    model = build_backbone(spec.name, input_size=size, weights="none")
    assert tuple(model.input.shape[1:]) == (size, size, 3)
    names = [layer.name for layer in model.layers]
    cuts = suggested_cuts(spec, names)
    assert len(cuts) >= 3, cuts
    assert spec.default_cut in cuts
    for cut in cuts:
        assert len(model.get_layer(cut).output.shape) == 4


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_preprocessing_is_the_backbones_own(spec):
    module = getattr(keras.applications, spec.module)
    # The source module that defines the constructor defines the preprocess_input we apply.
    constructor = getattr(keras.applications, spec.constructor)
    assert module.preprocess_input.__module__ == constructor.__module__
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(BackbonePreprocess(spec.name)(images))
    theirs = keras.ops.convert_to_numpy(module.preprocess_input(images.copy()))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_layer_names_do_not_depend_on_what_was_built_before():
    first = [layer.name for layer in build_backbone("mobilenet_v3_small", weights="none").layers]
    keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3))
    second = [layer.name for layer in build_backbone("mobilenet_v3_small", weights="none").layers]
    assert first == second


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: get_backbone("vgg99"), "Unknown backbone `vgg99`"),
        (lambda: build_backbone("inception_v3", input_size=50, weights="none"), "at least 75x75"),
        (lambda: build_backbone("mobilenet_v2", alpha=0.6, weights="none"), "alpha) 0.6 is not available"),
        (lambda: build_backbone("resnet50_v2", alpha=0.5, weights="none"), "has no width multiplier"),
    ],
)
def test_bad_settings_raise_plain_messages(call, words):
    with pytest.raises(ModelConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_display_names_are_accepted():
    assert get_backbone("InceptionV3").name == "inception_v3"
    assert get_backbone("mobilenet-v2").name == "mobilenet_v2"


def test_cached_imagenet_weights_load_without_download(real_weights):
    model = build_backbone("mobilenet_v2", alpha=0.35, input_size=96, weights="imagenet")
    random = build_backbone("mobilenet_v2", alpha=0.35, input_size=96, weights="none")
    # The real file gives the published first-layer kernel, not a random one.
    kernel = model.get_layer("Conv1").get_weights()[0]
    assert not np.allclose(kernel, random.get_layer("Conv1").get_weights()[0])
    from_file = build_backbone(
        "mobilenet_v2", alpha=0.35, input_size=96, weights=real_weights / "models" / real_weights_file()
    )
    np.testing.assert_array_equal(kernel, from_file.get_layer("Conv1").get_weights()[0])


def real_weights_file():
    from conftest import MOBILENET_WEIGHTS

    return MOBILENET_WEIGHTS


def test_offline_without_weights_names_the_file_and_folder(no_cached_weights, monkeypatch):
    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", no_network)
    import keras.src.utils.file_utils as file_utils

    monkeypatch.setattr(file_utils, "get_file", no_network)
    with pytest.raises(WeightsUnavailableError) as caught:
        build_backbone("inception_v3", weights="imagenet")
    message = str(caught.value)
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(no_cached_weights / "models") in message


def test_missing_or_wrong_weights_file(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_backbone("mobilenet_v2", weights=tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not a weights file")
    with pytest.raises(WeightsUnavailableError, match="does not hold weights"):
        build_backbone("mobilenet_v2", weights=junk)
