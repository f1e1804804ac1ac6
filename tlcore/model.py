"""Building the classifier: cut a pretrained backbone, freeze it, and add a new head."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from dataclasses import dataclass, field
from functools import lru_cache

import keras

from tlcore.backbones import (
    DEFAULT_BACKBONE,
    build_backbone,
    get_backbone,
    suggested_cuts,
    weights_source,
)
from tlcore.errors import ModelConfigError

POOLINGS = ("flatten", "avg", "max")
HUGE_HEAD_PARAMETERS = 10_000_000


@dataclass(frozen=True)
class ModelConfig:
    """What the user chose on the Model page; every field maps to one widget.

    `None` means "the backbone's default"; `resolved()` fills those in.
    """

    backbone: str = DEFAULT_BACKBONE
    alpha: float | None = None
    input_size: int | None = None
    cut_layer: str | None = None
    pooling: str = "avg"
    dense_units: tuple[int, ...] = (128,)
    dropout: float = 0.2
    weights: str = "imagenet"

    def resolved(self) -> "ModelConfig":
        """Returns a copy with defaults filled in and every value checked.

        Raises:
            ModelConfigError: a value that cannot be built, in a sentence saying why.
        """
        spec = get_backbone(self.backbone)
        pooling = str(self.pooling).lower()
        if pooling == "gap" or pooling == "global_average":
            pooling = "avg"
        if pooling not in POOLINGS:
            raise ModelConfigError(
                f"Unknown pooling `{self.pooling}`. Choose one of: {', '.join(POOLINGS)}."
            )
        units = tuple(int(u) for u in self.dense_units if int(u) != 0)
        if any(u < 0 for u in units):
            raise ModelConfigError("Dense layers need a positive number of units.")
        try:
            dropout = float(self.dropout)
        except (TypeError, ValueError):
            raise ModelConfigError(f"The dropout rate must be a number, got `{self.dropout}`.") from None
        if not 0.0 <= dropout < 1.0:
            raise ModelConfigError(
                f"The dropout rate must be at least 0 and below 1, got {self.dropout}."
            )
        return ModelConfig(
            backbone=spec.name,
            alpha=spec.resolve_alpha(self.alpha),
            input_size=spec.resolve_input_size(self.input_size),
            cut_layer=self.cut_layer or spec.default_cut,
            pooling=pooling,
            dense_units=units,
            dropout=dropout,
            weights=weights_source(self.weights),
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["dense_units"] = list(self.dense_units)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "dense_units" in values:
            values["dense_units"] = tuple(values["dense_units"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def feature_key(self) -> dict:
        """The settings that decide the frozen backbone's output, and nothing else."""
        cfg = self.resolved()
        return {
            "backbone": cfg.backbone,
            "alpha": cfg.alpha,
            "input_size": cfg.input_size,
            "cut_layer": cfg.cut_layer,
            "weights": cfg.weights,
        }


@keras.saving.register_keras_serializable(package="tlcore")
class BackbonePreprocess(keras.layers.Layer):
    """Applies a backbone's own `preprocess_input` inside the model, so it is saved with it."""

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


def _check_cut(config: ModelConfig, base) -> None:
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


def build_body(config: ModelConfig):
    """Cuts the pretrained backbone at `config.cut_layer` and freezes it.

    Args:
        config: The model settings; defaults are resolved first.

    Returns:
        A frozen `keras.Model` named `backbone` from preprocessed images to the cut layer's
        feature map.

    Raises:
        ModelConfigError: unknown cut layer or invalid settings.
        WeightsUnavailableError: the pretrained weights cannot be had.
    """
    config = config.resolved()
    # Check the cut on the cached architecture first: a typo should not cost a weights load.
    _check_cut(config, random_backbone(config.backbone, config.alpha, config.input_size))
    base = build_backbone(config.backbone, config.alpha, config.input_size, config.weights)
    body = keras.Model(base.inputs, base.get_layer(config.cut_layer).output, name="backbone")
    body.trainable = False
    return body


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
    x = BackbonePreprocess(config.backbone, name="preprocess")(x)
    # training=False keeps BatchNormalization in inference mode even while the head trains.
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
    _check_cut(config, base)
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
