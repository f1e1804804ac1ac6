"""The registry of pretrained backbones: what each one is, how to build it and where to cut it."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tlcore.errors import ModelConfigError, WeightsUnavailableError

MAX_INPUT_SIZE = 1024


@dataclass(frozen=True)
class BackboneSpec:
    """Everything Transfer Lab knows about one `keras.applications` backbone.

    Attributes:
        name: Stable key used in configs and on the command line (`inception_v3`).
        display_name: Name shown to people (`InceptionV3`).
        description: One line saying what the network is good for.
        constructor: Name of the constructor in `keras.applications`.
        module: Name of the `keras.applications` module holding its `preprocess_input`.
        imagenet_top1: ImageNet top-1 accuracy (0-1) of the full network, by width multiplier.
        parameters: Parameter count of the full network with its classifier, by width multiplier.
        default_input_size: Side in pixels used when the user picks none.
        min_input_size: Smallest side the architecture accepts.
        cut_pattern: Regular expression selecting the suggested cut layers by name.
        default_cut: Cut layer used when the user picks none.
        alphas: Width multipliers offered (MobileNet only); empty when the network has none.
        default_alpha: Width multiplier used when the user picks none.
        weights_file: Function `(alpha, input_size) -> list of file names` Keras caches the
            ImageNet weights under, most specific first.
        preprocess_mode: What the backbone's own `preprocess_input` does to RGB values 0-255:
            `"tf"` scales them to [-1, 1], `"torch"` scales to [0, 1] and normalises with
            ImageNet's mean and standard deviation, `"none"` passes them on (the network
            rescales inside).
    """

    name: str
    display_name: str
    description: str
    constructor: str
    module: str
    imagenet_top1: dict[float | None, float]
    parameters: dict[float | None, int]
    default_input_size: int
    min_input_size: int
    cut_pattern: str
    default_cut: str
    weights_file: Callable[[float | None, int], list[str]]
    preprocess_mode: str = "tf"
    alphas: tuple[float, ...] = ()
    default_alpha: float | None = None

    def resolve_alpha(self, alpha: float | None) -> float | None:
        """Returns the width multiplier to build with, checking that it is offered."""
        if not self.alphas:
            if alpha not in (None, 1.0):
                raise ModelConfigError(
                    f"{self.display_name} has no width multiplier (alpha); "
                    f"remove `alpha={alpha}` or choose MobileNetV2."
                )
            return None
        if alpha is None:
            return self.default_alpha
        alpha = float(alpha)
        if alpha not in self.alphas:
            offered = ", ".join(str(a) for a in self.alphas)
            raise ModelConfigError(
                f"Width multiplier (alpha) {alpha} is not available for {self.display_name}. "
                f"Choose one of: {offered}."
            )
        return alpha

    def resolve_input_size(self, input_size: int | None) -> int:
        """Returns the square input side to build with, checking the backbone's limits."""
        if input_size is None:
            return self.default_input_size
        try:
            size = int(input_size)
        except (TypeError, ValueError):
            raise ModelConfigError(
                f"The input size must be a whole number of pixels, got `{input_size}`."
            ) from None
        if size < self.min_input_size:
            raise ModelConfigError(
                f"{self.display_name} needs images of at least {self.min_input_size}x"
                f"{self.min_input_size} pixels; {size}x{size} is too small."
            )
        if size > MAX_INPUT_SIZE:
            raise ModelConfigError(
                f"An input size of {size} pixels is larger than the {MAX_INPUT_SIZE} "
                "Transfer Lab supports; pick a smaller one."
            )
        return size

    def top1(self, alpha: float | None = None) -> float:
        return self.imagenet_top1[self.resolve_alpha(alpha)]

    def parameter_count(self, alpha: float | None = None) -> int:
        return self.parameters[self.resolve_alpha(alpha)]

    def preprocess(self, images):
        """Applies the backbone's own `preprocess_input` to float RGB images in 0-255."""
        import keras

        module = getattr(keras.applications, self.module)
        return module.preprocess_input(images)


def _fixed(name: str) -> Callable[[float | None, int], list[str]]:
    return lambda alpha, size: [name]


def _mobilenet_v2_files(alpha: float | None, size: int) -> list[str]:
    # Keras publishes one file per (alpha, size); convolution weights do not depend on the
    # input size, so any size of the same alpha is a valid stand-in.
    sizes = [96, 128, 160, 192, 224]
    ordered = ([size] if size in sizes else []) + [224] + [s for s in sizes if s not in (size, 224)]
    return [
        f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{s}_no_top.h5"
        for s in ordered
    ]


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec(
            name="inception_v3",
            display_name="InceptionV3",
            description="Google's Inception network; the backbone of the classic "
            "horses-or-humans and cats-vs-dogs labs, cut at `mixed7`.",
            constructor="InceptionV3",
            module="inception_v3",
            imagenet_top1={None: 0.779},
            parameters={None: 23_851_784},
            default_input_size=150,
            min_input_size=75,
            cut_pattern=r"^mixed\d+$",
            default_cut="mixed7",
            weights_file=_fixed("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            name="mobilenet_v2",
            display_name="MobileNetV2",
            description="Small and fast network built for phones; trains quickly on a laptop "
            "CPU, the backbone of TensorFlow's transfer-learning tutorial.",
            constructor="MobileNetV2",
            module="mobilenet_v2",
            imagenet_top1={0.35: 0.603, 0.5: 0.654, 0.75: 0.698, 1.0: 0.718},
            parameters={0.35: 1_692_489, 0.5: 1_968_145, 0.75: 2_636_281, 1.0: 3_538_984},
            default_input_size=224,
            min_input_size=32,
            cut_pattern=r"^(block_\d+_add|out_relu)$",
            default_cut="out_relu",
            weights_file=_mobilenet_v2_files,
            alphas=(0.35, 0.5, 0.75, 1.0),
            default_alpha=0.35,
        ),
        BackboneSpec(
            name="efficientnet_b0",
            display_name="EfficientNetB0",
            description="Accurate for its size thanks to a carefully scaled design; "
            "slower than MobileNet on a CPU.",
            constructor="EfficientNetB0",
            module="efficientnet",
            imagenet_top1={None: 0.771},
            parameters={None: 5_330_571},
            default_input_size=224,
            min_input_size=32,
            cut_pattern=r"^(block\d[a-z]_add|top_activation)$",
            default_cut="top_activation",
            weights_file=_fixed("efficientnetb0_notop.h5"),
            preprocess_mode="none",
        ),
        BackboneSpec(
            name="resnet50_v2",
            display_name="ResNet50V2",
            description="The classic residual network, 50 layers deep; a strong, "
            "well-understood general-purpose backbone.",
            constructor="ResNet50V2",
            module="resnet_v2",
            imagenet_top1={None: 0.760},
            parameters={None: 25_613_800},
            default_input_size=224,
            min_input_size=32,
            cut_pattern=r"^(conv\d_block\d+_out|post_relu)$",
            default_cut="post_relu",
            weights_file=_fixed("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            name="xception",
            display_name="Xception",
            description="Inception's successor built from depthwise-separable convolutions; "
            "accurate but heavy on a CPU.",
            constructor="Xception",
            module="xception",
            imagenet_top1={None: 0.790},
            parameters={None: 22_910_480},
            default_input_size=299,
            min_input_size=71,
            cut_pattern=r"^(add(_\d+)?|block14_sepconv2_act)$",
            default_cut="block14_sepconv2_act",
            weights_file=_fixed("xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ),
        BackboneSpec(
            name="densenet121",
            display_name="DenseNet121",
            description="Densely connected network where every layer sees all earlier ones; "
            "few parameters for its accuracy.",
            constructor="DenseNet121",
            module="densenet",
            imagenet_top1={None: 0.750},
            parameters={None: 8_062_504},
            default_input_size=224,
            min_input_size=32,
            cut_pattern=r"^(pool\d_relu|relu)$",
            default_cut="relu",
            weights_file=_fixed("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
            preprocess_mode="torch",
        ),
        BackboneSpec(
            name="mobilenet_v3_small",
            display_name="MobileNetV3Small",
            description="The smallest, fastest backbone here; good for quick classroom demos.",
            constructor="MobileNetV3Small",
            module="mobilenet_v3",
            imagenet_top1={None: 0.674},
            parameters={None: 2_554_968},
            default_input_size=224,
            min_input_size=32,
            cut_pattern=r"^(expanded_conv_\d+_add|activation_17)$",
            default_cut="activation_17",
            weights_file=_fixed("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
            preprocess_mode="none",
        ),
    ]
}

DEFAULT_BACKBONE = "mobilenet_v2"


def get_backbone(name: str) -> BackboneSpec:
    """Returns the spec of a backbone by its key or display name.

    Raises:
        ModelConfigError: the name is not in the registry.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key in BACKBONES:
        return BACKBONES[key]
    for spec in BACKBONES.values():
        if spec.display_name.lower() == key:
            return spec
    offered = ", ".join(BACKBONES)
    raise ModelConfigError(f"Unknown backbone `{name}`. Choose one of: {offered}.")


@contextlib.contextmanager
def fresh_layer_names():
    """Builds Keras layers as if in a new session, so auto-generated names are stable.

    Keras numbers unnamed layers (`activation_93`, `add_4`) by a per-thread counter; without
    this the same backbone gets different layer names depending on what was built before.
    """
    from keras.src.backend.common import global_state

    key = "object_name_uids"
    saved = global_state.get_global_attribute(key)
    global_state.set_global_attribute(key, collections.defaultdict(int))
    try:
        yield
    finally:
        global_state.set_global_attribute(key, saved)


def keras_cache_dir() -> Path:
    """Folder where Keras keeps downloaded weights: `$KERAS_HOME/models`."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def find_cached_weights(spec: BackboneSpec, alpha: float | None, input_size: int) -> Path | None:
    """Returns the first ImageNet weights file for this backbone already in the Keras cache."""
    folder = keras_cache_dir()
    for name in spec.weights_file(alpha, input_size):
        if (folder / name).is_file():
            return folder / name
    return None


def _construct(spec: BackboneSpec, alpha: float | None, input_size: int, weights):
    import keras

    constructor = getattr(keras.applications, spec.constructor)
    kwargs = dict(include_top=False, weights=weights, input_shape=(input_size, input_size, 3))
    if alpha is not None:
        kwargs["alpha"] = alpha
    with fresh_layer_names():
        return constructor(**kwargs)


_DOWNLOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def _download_redirected_to(path: Path):
    """Makes `keras.applications` take `path` where it would download its ImageNet weights.

    Building with `weights="imagenet"` is the only way to get Keras' own ImageNet model: some
    constructors add layers only then (EfficientNet's extra input scaling). The applications
    look `get_file` up on Keras' `file_utils` module at call time, so replacing it there for the
    duration of one build hands them the file without a download.
    """
    from keras.src.utils import file_utils

    with _DOWNLOAD_LOCK:
        original = file_utils.get_file
        file_utils.get_file = lambda *args, **kwargs: str(path)
        try:
            yield
        finally:
            file_utils.get_file = original


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights a backbone is built with.

    Attributes:
        source: `"imagenet"`, `"none"` or the path of a user's file, as configured.
        path: The file actually loaded, once known (None for random weights, or ImageNet
            weights not downloaded yet).
        digest: SHA-256 of that file's bytes, or None.
    """

    source: str
    path: Path | None = None
    digest: str | None = None


_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGESTS_LOCK = threading.Lock()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, computed once per path, size and modification time in this process."""
    path = os.path.abspath(path)
    info = os.stat(path)
    key = (path, info.st_size, info.st_mtime_ns)
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(key)
    if known is None:
        with open(path, "rb") as handle:
            known = hashlib.file_digest(handle, "sha256").hexdigest()
        with _DIGESTS_LOCK:
            _DIGESTS[key] = known
    return known


def resolve_weights(name: str, alpha: float | None, input_size: int, weights) -> WeightsInfo:
    """Tells which weights file a backbone would be built with now, without building it."""
    spec = get_backbone(name)
    source = weights_source(weights)
    if source == "none":
        return WeightsInfo("none")
    path = find_cached_weights(spec, alpha, input_size) if source == "imagenet" else Path(source)
    if path is None or not path.is_file():
        return WeightsInfo(source, path)
    return WeightsInfo(source, path, file_digest(path))


def build_backbone(
    name: str,
    alpha: float | None = None,
    input_size: int | None = None,
    weights: str | os.PathLike | None = "imagenet",
):
    """Builds the whole pretrained backbone without its classifier.

    ImageNet weights found on disk (Keras' cache or a user's file) are handed to Keras' own
    `weights="imagenet"` build, so the model is exactly the one Keras builds after a download.

    Args:
        name: Backbone key, for example `inception_v3`.
        alpha: Width multiplier (MobileNetV2 only).
        input_size: Side of the square input in pixels; the backbone's default when `None`.
        weights: `"imagenet"` (the Keras cache, downloading when online), `"none"`/`None`
            (random initialisation) or the path of a weights file.

    Returns:
        A `keras.Model` from images preprocessed for this backbone to its last feature map.

    Raises:
        ModelConfigError: unknown backbone, alpha or input size.
        WeightsUnavailableError: the weights can be neither found nor downloaded.
    """
    return build_backbone_with_weights(name, alpha, input_size, weights)[0]


def build_backbone_with_weights(name, alpha=None, input_size=None, weights="imagenet"):
    """`build_backbone`, also telling which weights file was loaded, as a `WeightsInfo`."""
    spec = get_backbone(name)
    alpha = spec.resolve_alpha(alpha)
    size = spec.resolve_input_size(input_size)
    info = resolve_weights(spec.name, alpha, size, weights)
    if info.source == "none":
        return _construct(spec, alpha, size, None), info
    if info.path is not None and info.path.is_file():
        return _load_weights_file(spec, alpha, size, info.path), info
    if info.source != "imagenet":
        raise WeightsUnavailableError(
            f"The weights file `{Path(info.source).name}` does not exist. Check the path, or use "
            "`imagenet` to let Keras find or download the weights."
        )
    try:
        model = _construct(spec, alpha, size, "imagenet")
    except Exception as error:  # Keras raises a bare Exception when the download fails.
        wanted = spec.weights_file(alpha, size)[0]
        raise WeightsUnavailableError(
            f"The ImageNet weights of {spec.display_name} could not be downloaded "
            f"({_first_line(error)}). Connect to the internet, or put the file `{wanted}` "
            f"in `{keras_cache_dir()}` (the folder `$KERAS_HOME/models/`), or pass the "
            "weights file itself (for example `--weights path/to/file.h5`), or choose "
            "random weights."
        ) from error
    # Now downloaded into the cache: say which file it was.
    return model, resolve_weights(spec.name, alpha, size, "imagenet")


def weights_source(weights) -> str:
    """Normalises a weights argument to `"imagenet"`, `"none"` or a file path string."""
    if weights is None:
        return "none"
    text = str(weights).strip()
    if text.lower() in ("imagenet", "none", "random"):
        return "none" if text.lower() == "random" else text.lower()
    return text


def _load_weights_file(spec: BackboneSpec, alpha, size: int, path: Path):
    try:
        with _download_redirected_to(path):
            return _construct(spec, alpha, size, "imagenet")
    except Exception as error:
        raise WeightsUnavailableError(
            f"The file `{path.name}` does not hold weights for {spec.display_name} "
            f"without its classifier ({_first_line(error)}). Use the `notop` weights file "
            f"of {spec.display_name}, for example `{spec.weights_file(alpha, size)[0]}`."
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def suggested_cuts(spec: BackboneSpec, layer_names: list[str]) -> list[str]:
    """The layers of a built backbone that make good cut points, in network order."""
    pattern = re.compile(spec.cut_pattern)
    return [name for name in layer_names if pattern.search(name)]
