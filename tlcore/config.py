"""The settings a user chooses, as typed configs with their choice tables; imports no Keras.

`ModelConfig` holds what the Model page and `--backbone`/`--cut`/... set, `TrainConfig` what the
Train page and `--epochs`/`--optimizer`/... set. Each field carries its command-line flag and
help in its metadata, so the command line is generated from these classes and a test checks
the dashboard against them: a setting cannot exist in one front end and not the other.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from tlcore.backbones import DEFAULT_BACKBONE, get_backbone, weights_source
from tlcore.errors import ModelConfigError

POOLINGS = ("avg", "max", "flatten")
POOLING_LABELS = {"avg": "Average (recommended)", "max": "Maximum", "flatten": "Flatten (the classic lab)"}
OPTIMIZERS = ("adam", "rmsprop", "sgd")
OPTIMIZER_LABELS = {
    "adam": "Adam (recommended)",
    "rmsprop": "RMSprop (the classic lab)",
    "sgd": "SGD (plain gradient descent)",
}
CLASS_WEIGHTS = ("none", "balanced")
CLASS_WEIGHT_LABELS = {
    "none": "Every image counts the same",
    "balanced": "Balanced: small classes count more",
}
WEIGHT_CHOICES = ("imagenet", "file", "none")
WEIGHT_LABELS = {
    "imagenet": "ImageNet (recommended)",
    "file": "A weights file I upload",
    "none": "Random (no transfer learning)",
}
SPLITS = ("train", "validation", "test")
SPLIT_LABELS = {"train": "Training", "validation": "Validation", "test": "Test", "all": "Every image"}
SUBSETS = ("validation", "test", "train", "all")
"""What `tlcore.evaluate` can score: a run's validation or training images, a test split, or every image."""
MAX_AUGMENTED_VIEWS = 20
MAX_EPOCHS = 1000
MAX_DENSE_UNITS = 16384


class Phase(str, enum.Enum):
    """What a training is doing now; the value is what people read."""

    LOADING = "loading data"
    EXTRACTING = "extracting features"
    TRAINING = "training"
    FINE_TUNING = "fine-tuning"
    SAVING = "saving"

    def __str__(self) -> str:
        return self.value


class Status(str, enum.Enum):
    """Where a run stands; the value is what run folders record."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def done(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)

    def __str__(self) -> str:
        return self.value


def setting(default: Any, help: str, *, flag: str | None = None, kind: str | None = None, choices=None) -> Any:
    """A config field with what its command-line flag needs.

    Args:
        default: The field's default.
        help: One line for `--help`, also the dashboard's tooltip where it fits.
        flag: The flag's name without dashes when it is not the field's name with dashes.
        kind: `"int"`, `"float"`, `"str"`, `"bool"`, `"units"` (several whole numbers) or
            `"optional float"` / `"optional int"`; read from the default when not given.
        choices: The values allowed, when there is a fixed list.
    """
    metadata = {"help": help, "flag": flag, "kind": kind, "choices": tuple(choices) if choices else None}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def parse_dense_units(text: str | int | tuple | list | None) -> tuple[int, ...]:
    """Reads hidden layer sizes as typed on the Model page: `"1024"`, `"256, 64"`, `"none"` or `""`.

    Raises:
        ModelConfigError: something other than whole numbers.
    """
    if text is None:
        return ()
    if isinstance(text, int):
        return (text,) if text else ()
    if isinstance(text, (tuple, list)):
        return tuple(int(units) for units in text if int(units) != 0)
    cleaned = str(text).strip().lower()
    if cleaned in ("", "none", "0", "-"):
        return ()
    pieces = [piece for piece in re.split(r"[\s,;x+]+", cleaned) if piece]
    if not all(piece.isdigit() for piece in pieces):
        raise ModelConfigError(
            f"Hidden layer sizes must be whole numbers separated by commas, for example `1024` or `256, 64`; "
            f"got `{str(text)[:40]}`."
        )
    return tuple(int(piece) for piece in pieces if int(piece) != 0)


class _Config:
    """JSON in and out for the frozen config dataclasses below."""

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: dict | None):
        """Reads a config saved by any version: unknown keys are ignored, missing ones take defaults."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in (data or {}).items():
            if key in known:
                values[key] = tuple(value) if isinstance(value, list) else value
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class ModelConfig(_Config):
    """What the user chose on the Model page; every field maps to one widget and one flag.

    `None` means "the backbone's default"; `resolved()` fills those in.
    """

    backbone: str = setting(DEFAULT_BACKBONE, "backbone key, for example inception_v3 or mobilenet_v2")
    alpha: float | None = setting(None, "width multiplier (MobileNetV2 only)", kind="optional float")
    input_size: int | None = setting(None, "side of the square input in pixels", kind="optional int")
    cut_layer: str | None = setting(None, "layer to cut the backbone at (default: the backbone's usual)", flag="cut",
                                    kind="str")
    pooling: str = setting("avg", "how the cut layer's feature map becomes one vector", choices=POOLINGS)
    dense_units: tuple[int, ...] = setting((128,), "hidden Dense layers; 0 for none", flag="dense", kind="units")
    dropout: float = setting(0.2, "dropout rate after each hidden layer (0 to 1)")
    weights: str = setting("imagenet", "imagenet, none, or the path of a weights file")

    def resolved(self) -> "ModelConfig":
        """Returns a copy with defaults filled in and every value checked.

        Raises:
            ModelConfigError: a value that cannot be built, in a sentence saying why.
        """
        spec = get_backbone(self.backbone)
        pooling = str(self.pooling).lower()
        if pooling in ("gap", "global_average"):
            pooling = "avg"
        if pooling not in POOLINGS:
            raise ModelConfigError(f"Unknown pooling `{self.pooling}`. Choose one of: {', '.join(POOLINGS)}.")
        units = parse_dense_units(self.dense_units)
        if any(u < 0 or u > MAX_DENSE_UNITS for u in units):
            raise ModelConfigError(f"Dense layers need between 1 and {MAX_DENSE_UNITS:,} units each.")
        try:
            dropout = float(self.dropout)
        except (TypeError, ValueError):
            raise ModelConfigError(f"The dropout rate must be a number, got `{self.dropout}`.") from None
        if not 0.0 <= dropout < 1.0:
            raise ModelConfigError(f"The dropout rate must be at least 0 and below 1, got {self.dropout}.")
        return ModelConfig(
            backbone=spec.name,
            alpha=spec.resolve_alpha(self.alpha),
            input_size=spec.resolve_input_size(self.input_size),
            cut_layer=str(self.cut_layer).strip() if self.cut_layer else spec.default_cut,
            pooling=pooling,
            dense_units=units,
            dropout=dropout,
            weights=weights_source(self.weights),
        )


@dataclass(frozen=True)
class TrainConfig(_Config):
    """What the user chose on the Train page; every field maps to one widget and one flag."""

    epochs: int = setting(10, "how many times the model sees every training image")
    batch_size: int = setting(32, "images per training step")
    learning_rate: float = setting(0.001, "size of each correction, for example 0.001")
    optimizer: str = setting("adam", "the method that adjusts the head after each batch", choices=OPTIMIZERS)
    augment: bool = setting(False, "random flips, rotations, zooms and shifts of the training images")
    augment_views: int = setting(
        0, "with --augment: N augmented copies per image, extracted once and reused (fast); 0 makes new ones every epoch"
    )
    early_stopping: bool = setting(False, "stop when validation loss stops improving, keeping the best epoch")
    patience: int = setting(3, "with --early-stopping: epochs without improvement before stopping")
    val_split: float = setting(0.2, "validation share of each class when the data has no validation folder")
    seed: int = setting(0, "the same seed gives the same split and the same training")
    class_weights: str = setting(
        "none", "balanced makes each class count the same however many images it has", choices=CLASS_WEIGHTS
    )
    fine_tune_layers: int = setting(
        0, "then fine-tune: unfreeze the top N layers of the cut backbone (whole blocks, so maybe a few more)"
    )
    fine_tune_from: str = setting(
        "", "then fine-tune every layer after this one, a block's end such as block_15_add or mixed8 (instead of N)",
        kind="str",
    )
    fine_tune_epochs: int = setting(5, "epochs of the fine-tuning stage")
    fine_tune_learning_rate: float | None = setting(
        None, "learning rate of the fine-tuning stage (default: the first stage's divided by 10)", kind="optional float"
    )

    def resolved(self) -> "TrainConfig":
        """Returns a checked copy.

        Raises:
            ModelConfigError: a setting out of range, in a sentence saying why.
        """
        optimizer = str(self.optimizer).lower()
        if optimizer not in OPTIMIZERS:
            raise ModelConfigError(f"Unknown optimizer `{self.optimizer}`. Choose one of: {', '.join(OPTIMIZERS)}.")
        class_weights = str(self.class_weights).lower()
        if class_weights not in CLASS_WEIGHTS:
            raise ModelConfigError(
                f"Unknown class weights `{self.class_weights}`. Choose one of: {', '.join(CLASS_WEIGHTS)}."
            )
        epochs, batch_size = _whole(self.epochs, "epochs"), _whole(self.batch_size, "batch size")
        if not 1 <= epochs <= MAX_EPOCHS:
            raise ModelConfigError(f"Train for between 1 and {MAX_EPOCHS} epochs, not {epochs}.")
        if not 1 <= batch_size <= 4096:
            raise ModelConfigError(f"The batch size must be between 1 and 4096, not {batch_size}.")
        views = _whole(self.augment_views, "number of augmented copies")
        if not 0 <= views <= MAX_AUGMENTED_VIEWS:
            raise ModelConfigError(
                f"The number of augmented copies must be between 0 and {MAX_AUGMENTED_VIEWS}, got {self.augment_views}."
            )
        try:
            rate = float(self.learning_rate)
            val_split = float(self.val_split)
        except (TypeError, ValueError):
            raise ModelConfigError("The learning rate and the validation share must be numbers.") from None
        if math.isnan(rate) or not 0 < rate < 10:
            raise ModelConfigError(
                f"The learning rate must be a small positive number such as 0.001, got {self.learning_rate}."
            )
        if not 0.0 < val_split < 1.0:
            raise ModelConfigError(
                f"The validation share must be between 0 and 1 (for example 0.2), got {self.val_split}."
            )
        layers = _whole(self.fine_tune_layers, "number of layers to fine-tune")
        fine_epochs = _whole(self.fine_tune_epochs, "number of fine-tuning epochs")
        if layers < 0 or not 0 <= fine_epochs <= MAX_EPOCHS:
            raise ModelConfigError(f"Fine-tune between 0 and {MAX_EPOCHS} epochs, and a positive number of layers.")
        fine_rate = rate / 10 if self.fine_tune_learning_rate in (None, "", 0) else float(self.fine_tune_learning_rate)
        if math.isnan(fine_rate) or not 0 < fine_rate < 10:
            raise ModelConfigError(f"The fine-tuning learning rate must be a small positive number, got {fine_rate}.")
        return TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=rate,
            optimizer=optimizer,
            augment=bool(self.augment),
            augment_views=views,
            early_stopping=bool(self.early_stopping),
            patience=max(1, _whole(self.patience, "patience")),
            val_split=val_split,
            seed=_whole(self.seed, "seed"),
            class_weights=class_weights,
            fine_tune_layers=layers,
            fine_tune_from=str(self.fine_tune_from or "").strip(),
            fine_tune_epochs=fine_epochs,
            fine_tune_learning_rate=fine_rate,
        )

    @property
    def fine_tunes(self) -> bool:
        """True when a fine-tuning stage follows the head's."""
        return bool(self.fine_tune_layers or self.fine_tune_from) and self.fine_tune_epochs > 0

    @property
    def kept_views(self) -> int:
        """Augmented copies extracted once: none without augmentation, never more than epochs read."""
        return min(self.augment_views, self.epochs) if self.augment else 0


def _whole(value, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ModelConfigError(f"The {what} must be a whole number, got `{value}`.") from None
    if not number.is_integer():
        raise ModelConfigError(f"The {what} must be a whole number, got `{value}`.")
    return int(number)


def config_fields(cls) -> list[dataclasses.Field]:
    """The fields of `ModelConfig` or `TrainConfig`, in declaration order."""
    return list(dataclasses.fields(cls))


def flag_name(config_field: dataclasses.Field) -> str:
    """The command-line flag of a config field, such as `--cut` or `--batch-size`."""
    return "--" + (config_field.metadata.get("flag") or config_field.name).replace("_", "-")
