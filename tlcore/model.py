"""Building the classifier: cut a pretrained backbone, freeze it, and add a new head."""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
from functools import lru_cache

import keras

from tlcore.backbones import build_backbone, build_backbone_with_weights, get_backbone, suggested_cuts
from tlcore.config import ModelConfig
from tlcore.errors import ModelConfigError

HUGE_HEAD_PARAMETERS = 10_000_000
# The ImageNet statistics of 'torch'-mode backbones (DenseNet), on RGB values 0-1.
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="tlcore")
class BackbonePreprocess(keras.layers.Layer):
    """A backbone's own `preprocess_input` as one layer: what runs saved by version 0.1 hold.

    New models use `preprocessing_layers` (built-in Keras layers only); this class stays
    registered so those runs keep loading.
    """

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = get_backbone(backbone).name

    def call(self, inputs):
        return get_backbone(self.backbone).preprocess(keras.ops.cast(inputs, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


_BASE_LOCK = threading.Lock()


@lru_cache(maxsize=8)
def _random_backbone(name: str, alpha: float | None, size: int):
    # Architecture only: used for layer tables and parameter counts, never for training.
    return build_backbone(name, alpha, size, weights="none")


def random_backbone(name: str, alpha: float | None, size: int):
    """The backbone with random weights, built once per (name, alpha, size) and cached."""
    with _BASE_LOCK:
        return _random_backbone(name, alpha, size)


def check_cut(config: ModelConfig, base) -> None:
    names = [layer.name for layer in base.layers]
    if config.cut_layer in names:
        layer = base.get_layer(config.cut_layer)
        if len(layer.output.shape) != 4:
            raise ModelConfigError(
                f"Layer `{config.cut_layer}` does not output an image-shaped feature map; "
                "choose a cut layer from the suggested ones."
            )
        return
    spec = get_backbone(config.backbone)
    cuts = suggested_cuts(spec, names)
    listed = ", ".join(cuts) if len(cuts) <= 12 else f"{cuts[0]} … {cuts[-1]}"
    raise ModelConfigError(
        f"Unknown cut layer `{config.cut_layer}` for {spec.display_name}. "
        f"Choose one of: {listed} (or any layer name from the layer table)."
    )


def preprocessing_layers(backbone: str) -> list:
    """The backbone's own `preprocess_input` as built-in Keras layers, to sit inside the model.

    Built-in layers keep a saved model loadable by plain Keras, without Transfer Lab.

    Args:
        backbone: Backbone key.

    Returns:
        The layers, in order; none for backbones that rescale inside (EfficientNet, MobileNetV3).
    """
    mode = get_backbone(backbone).preprocess_mode
    if mode == "tf":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")]
    if mode == "torch":
        mean = [255.0 * m for m in TORCH_MEAN]
        variance = [(255.0 * s) ** 2 for s in TORCH_STD]
        return [keras.layers.Normalization(mean=mean, variance=variance, name="preprocess")]
    return []


def preprocess(backbone: str, images):
    """Applies `preprocessing_layers` to float RGB images 0-255 (a batch)."""
    for layer in preprocessing_layers(backbone):
        images = layer(images)
    return images


def freeze(body) -> None:
    """Freezes a body so it runs in inference mode whatever `training` the outer model is called with.

    In Keras 3 a functional model passes its own `training` flag to every layer inside,
    overriding a nested `body(x, training=False)`. A frozen BatchNormalization already keeps
    its moving statistics; layers that are random only in training (dropout, such as
    EfficientNet's stochastic depth, and noise) are made identities, which is what they are
    in inference.
    """
    body.trainable = False
    for layer in _all_layers(body):
        if isinstance(layer, keras.layers.Dropout) or hasattr(layer, "rate") and "Dropout" in type(layer).__name__:
            layer.rate = 0.0
        elif isinstance(layer, keras.layers.GaussianNoise):
            layer.stddev = 0.0


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def build_body(config: ModelConfig):
    """Cuts the pretrained backbone at `config.cut_layer` and freezes it.

    Args:
        config: The model settings; defaults are resolved first.

    Returns:
        A frozen `keras.Model` named `backbone` from preprocessed images to the cut layer's
        feature map, running in inference mode (see `freeze`).

    Raises:
        ModelConfigError: unknown cut layer or invalid settings.
        WeightsUnavailableError: the pretrained weights cannot be had.
    """
    return build_body_with_weights(config)[0]


def build_body_with_weights(config: ModelConfig):
    """`build_body`, also returning the `tlcore.backbones.WeightsInfo` of the weights loaded."""
    config = config.resolved()
    # Check the cut on the cached architecture first: a typo should not cost a weights load.
    check_cut(config, random_backbone(config.backbone, config.alpha, config.input_size))
    base, weights = build_backbone_with_weights(config.backbone, config.alpha, config.input_size, config.weights)
    body = keras.Model(base.inputs, base.get_layer(config.cut_layer).output, name="backbone")
    freeze(body)
    return body, weights


def build_head(feature_shape, num_classes: int, config: ModelConfig):
    """Builds the trainable classifier that sits on the cut layer's feature map.

    Args:
        feature_shape: Shape of one feature map, `(height, width, channels)`.
        num_classes: Number of classes; 2 gives one sigmoid unit, more give softmax.
        config: Pooling, dense units and dropout come from here.

    Returns:
        A `keras.Model` named `head`.
    """
    num_classes = check_num_classes(num_classes)
    config = config.resolved()
    inputs = keras.Input(shape=tuple(feature_shape), name="features")
    pool = {
        "flatten": keras.layers.Flatten(name="flatten"),
        "avg": keras.layers.GlobalAveragePooling2D(name="global_average_pooling"),
        "max": keras.layers.GlobalMaxPooling2D(name="global_max_pooling"),
    }[config.pooling]
    x = pool(inputs)
    # The classic lab drops out after each hidden Dense layer; the TF tutorial, with no
    # hidden layer, drops out the pooled features. One rule covers both.
    for index, units in enumerate(config.dense_units):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{index}")(x)
        if config.dropout > 0:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{index}")(x)
    if not config.dense_units and config.dropout > 0:
        x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    if num_classes == 2:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="probability")(x)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="head")


def check_num_classes(num_classes: int) -> int:
    if int(num_classes) < 2:
        raise ModelConfigError(
            f"A classifier needs at least 2 classes to tell apart; this one has {num_classes}. "
            "Add a folder of images for each class."
        )
    return int(num_classes)


def assemble(body, head, config: ModelConfig, name: str = "transfer_lab"):
    """Joins resizing, the backbone's preprocessing, the frozen body and the head.

    The result takes raw RGB images (values 0-255) of any size.
    """
    config = config.resolved()
    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = keras.layers.Resizing(config.input_size, config.input_size, name="resize")(inputs)
    for layer in preprocessing_layers(config.backbone):
        x = layer(x)
    # The Keras guide's `training=False`; `freeze` makes the body keep to it under `fit` too.
    x = body(x, training=False)
    outputs = head(x)
    return keras.Model(inputs, outputs, name=name)


def build_model(config: ModelConfig, num_classes: int):
    """Builds the whole classifier: frozen cut backbone plus a new head.

    Raises:
        ModelConfigError: invalid settings or fewer than 2 classes.
        WeightsUnavailableError: the pretrained weights cannot be had.
    """
    check_num_classes(num_classes)
    body = build_body(config)
    head = build_head(body.output.shape[1:], num_classes, config)
    return assemble(body, head, config)


def head_parameters(feature_shape, num_classes: int, pooling: str, dense_units) -> int:
    """Parameter count of a head, computed without building it."""
    h, w, c = (int(v) for v in feature_shape)
    width = h * w * c if pooling == "flatten" else c
    total = 0
    for units in dense_units:
        total += width * units + units
        width = units
    outputs = 1 if num_classes == 2 else num_classes
    return total + width * outputs + outputs


@dataclass(frozen=True)
class ModelSummary:
    """The numbers the Model page and `python -m tlcore summary` show."""

    backbone: str
    cut_layer: str
    input_size: int
    cut_output_shape: tuple[int, ...]
    feature_count: int
    backbone_params: int
    head_params: int
    total_params: int
    trainable_params: int
    non_trainable_params: int
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["cut_output_shape"] = list(self.cut_output_shape)
        data["warnings"] = list(self.warnings)
        return data


def summarize(config: ModelConfig, num_classes: int) -> ModelSummary:
    """Counts the parameters of the model `config` would build, without loading weights.

    The backbone is frozen, so all of its parameters are non-trainable and all of the head's
    are trainable.
    """
    num_classes = check_num_classes(num_classes)
    config = config.resolved()
    base = random_backbone(config.backbone, config.alpha, config.input_size)
    check_cut(config, base)
    body = keras.Model(base.inputs, base.get_layer(config.cut_layer).output)
    shape = tuple(int(v) for v in body.output.shape[1:])
    body_params = int(body.count_params())
    head_params = head_parameters(shape, num_classes, config.pooling, config.dense_units)
    features = math.prod(shape) if config.pooling == "flatten" else shape[-1]
    warnings = []
    if head_params > HUGE_HEAD_PARAMETERS:
        warnings.append(
            f"The head has {head_params:,} parameters, mostly in the first Dense layer fed by "
            f"{features:,} flattened features. It will train slowly and may overfit a small "
            "dataset; global average pooling or a later cut layer makes it much smaller."
        )
    if config.weights == "none":
        warnings.append(
            "Random weights: the backbone has learned nothing, so this is not transfer "
            "learning and accuracy will be low."
        )
    return ModelSummary(
        backbone=config.backbone,
        cut_layer=config.cut_layer,
        input_size=config.input_size,
        cut_output_shape=shape,
        feature_count=int(features),
        backbone_params=body_params,
        head_params=head_params,
        total_params=body_params + head_params,
        trainable_params=head_params,
        non_trainable_params=body_params,
        warnings=tuple(warnings),
    )


def _top_part(body, boundary: str):
    """The part of `body` after `boundary`'s output, sharing its layers; None when other tensors cross the cut."""
    try:
        return keras.Model(body.get_layer(boundary).output, body.output, name="backbone_top")
    except (ValueError, KeyError):
        return None


def fine_tune_boundaries(body, backbone: str) -> list[tuple[str, int]]:
    """Where a fine-tuning stage can start: block ends of `body` whose output alone feeds everything after.

    Returns:
        `(layer name, layers after it that would train)`, deepest first: the first entry
        unfreezes the fewest layers.
    """
    names = [layer.name for layer in body.layers]
    spec = get_backbone(backbone)
    found = []
    for name in reversed(suggested_cuts(spec, names[:-1])):
        top = _top_part(body, name)
        if top is not None:
            found.append((name, len(names) - 1 - names.index(name)))
    return found


def fine_tune_boundary(body, backbone: str, layers: int = 0, after: str = "") -> tuple[str, int]:
    """The block end a fine-tuning stage starts after: `after` itself, or the deepest one leaving at least `layers` to train.

    Raises:
        ModelConfigError: `after` is no block end of this body, or the body has none.
    """
    boundaries = fine_tune_boundaries(body, backbone)
    if after:
        for name, count in boundaries:
            if name == after:
                return name, count
        offered = ", ".join(name for name, _ in boundaries[:12]) or "none"
        raise ModelConfigError(
            f"Fine-tuning cannot start after `{after}`: choose the end of a block before the cut layer, one of: {offered}."
        )
    if not boundaries:
        raise ModelConfigError("This cut leaves no whole block to fine-tune; cut the backbone later, or do not fine-tune.")
    for name, count in boundaries:
        if count >= layers:
            return name, count
    return boundaries[-1]


def unfreeze_top(body, boundary: str):
    """Makes the layers after `boundary` trainable, BatchNormalization excepted, and returns that part as a model.

    As the Keras guide has it: the unfrozen BatchNormalization layers would otherwise learn
    batch statistics from a small dataset and wreck what the backbone knows, so they stay
    frozen, in inference mode, keeping their moving statistics. Recompile after calling this.
    """
    top = _top_part(body, boundary)
    if top is None:
        raise ModelConfigError(f"Fine-tuning cannot start after `{boundary}`: it is not the end of a block.")
    body.trainable = True
    top_names = {layer.name for layer in top.layers}
    for layer in body.layers:
        layer.trainable = layer.name in top_names and not isinstance(layer, keras.layers.BatchNormalization)
    return top


@lru_cache(maxsize=16)
def _fine_tune_options(backbone: str, alpha, size: int, cut: str) -> tuple[tuple[str, int], ...]:
    base = random_backbone(backbone, alpha, size)
    body = keras.Model(base.inputs, base.get_layer(cut).output)
    return tuple(fine_tune_boundaries(body, backbone))


def fine_tune_options(config: ModelConfig) -> list[tuple[str, int]]:
    """Where a fine-tuning stage can start for these settings: `(block end, layers after it)`, fewest layers first.

    Read from the architecture alone, without loading weights.
    """
    config = config.resolved()
    check_cut(config, random_backbone(config.backbone, config.alpha, config.input_size))
    return list(_fine_tune_options(config.backbone, config.alpha, config.input_size, config.cut_layer))
