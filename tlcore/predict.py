"""Classifying images with a trained run's model, loaded once and kept ready."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tlcore.errors import RunError
from tlcore.images import load_array
from tlcore.runs import Run

RESIZE_LAYER = "resize"
CACHED_PREDICTORS = 4


@dataclass(frozen=True)
class Prediction:
    """What the model thinks one image shows.

    Attributes:
        probabilities: Every class name with its probability (0-1), in the model's label order.
        top_class: The most probable class.
        confidence: The probability of `top_class`.
    """

    probabilities: dict[str, float]
    top_class: str
    confidence: float

    @classmethod
    def from_vector(cls, labels: Sequence[str], vector: Sequence[float]) -> "Prediction":
        """Builds a prediction from one row of class probabilities in label order."""
        probabilities = {str(name): float(value) for name, value in zip(labels, vector)}
        # argmax keeps the first class on a tie, so ties resolve in label order.
        best = int(np.argmax(vector))
        return cls(probabilities=probabilities, top_class=str(labels[best]), confidence=float(vector[best]))

    def to_dict(self) -> dict:
        return {
            "probabilities": dict(self.probabilities),
            "top_class": self.top_class,
            "confidence": self.confidence,
        }


def model_input_size(model, config: dict | None = None) -> tuple[int, int]:
    """The `(height, width)` a run's model resizes its images to.

    Args:
        model: A model built by `tlcore.model.build_model`.
        config: The run's `config.json`, used when the model has no `resize` layer.

    Raises:
        RunError: neither the model nor the config says the size.
    """
    try:
        layer = model.get_layer(RESIZE_LAYER)
        return int(layer.height), int(layer.width)
    except (ValueError, AttributeError):
        pass
    size = ((config or {}).get("model") or {}).get("input_size")
    if size:
        return int(size), int(size)
    raise RunError(f"The model `{model.name}` does not say what image size it takes, so it cannot be used here.")


class Predictor:
    """A loaded model with its class names, ready to classify images quickly.

    Images are resized to the model's input size before batching, with the same bilinear
    resize as the model's own `Resizing` layer, which then has nothing left to do; so the
    probabilities equal those of feeding each image to the model unresized.
    """

    def __init__(self, model, labels: Sequence[str], input_size: tuple[int, int] | int):
        """Wraps a model.

        Args:
            model: A Keras model from raw RGB images (0-255) to class probabilities; one
                sigmoid unit for two classes, one softmax unit per class otherwise.
            labels: Class names in the model's output order.
            input_size: Side, or `(height, width)`, images are resized to.

        Raises:
            RunError: the model's outputs do not match the number of class names.
        """
        import tensorflow as tf

        self.model = model
        self.labels = tuple(str(name) for name in labels)
        height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
        self.input_size = (int(height), int(width))
        outputs = int(model.output_shape[-1])
        self.binary = outputs == 1
        if not (len(self.labels) == 2 if self.binary else outputs == len(self.labels)):
            raise RunError(
                f"The model gives {outputs} output(s) but the run lists {len(self.labels)} classes; "
                "the run folder is inconsistent."
            )
        # One fixed signature: traced once, then every call skips Keras' per-call set-up,
        # which costs far more than the network itself on a single image.
        self._forward = tf.function(
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)],
        )
        # A single image (the usual request) is resized inside the same call: one trip into
        # TensorFlow instead of four eager operations around the model.
        self._forward_one = tf.function(
            lambda image: model(self.resize(image)[None], training=False),
            input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
        )

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "Predictor":
        """Loads a run's model and class names.

        Raises:
            RunError: the run has no usable model or class names.
        """
        run = Run(run_dir)
        model = run.load_model()
        labels = run.labels()
        size = model_input_size(model, run.config)
        return cls(model, labels, size)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def forward(self, images):
        """The model's raw output for a float32 batch already at the input size, as a tensor."""
        return self._forward(images)

    def resize(self, image: np.ndarray):
        """Resizes one `HxWx3` image to the input size exactly as the model's layer would."""
        import tensorflow as tf

        # Resized before any float copy: the same values, without 300 MB for a 25-megapixel picture.
        return tf.image.resize(image, self.input_size, method="bilinear", antialias=False)

    def class_probabilities(self, images) -> np.ndarray:
        """Runs the model on a batch already at the input size.

        Args:
            images: Float array or tensor, shape `(batch, height, width, 3)`, values 0-255.

        Returns:
            Array of shape `(batch, num_classes)`; a binary model's single output `p`
            becomes the two columns `1 - p` and `p`.
        """
        import tensorflow as tf

        return self._probabilities(self._forward(tf.convert_to_tensor(images, tf.float32)))

    def _probabilities(self, output) -> np.ndarray:
        output = output.numpy().astype("float64")
        if self.binary:
            positive = output[:, 0]
            return np.stack([1.0 - positive, positive], axis=1)
        return output

    def predict(self, images: Iterable, batch_size: int = 32) -> list[Prediction]:
        """Classifies images.

        Args:
            images: Paths, bytes, file-like objects or PIL images, of any size and mode; a
                single image is taken as a list of one.
            batch_size: How many images go through the model at once; bounds memory use.

        Returns:
            One prediction per image, in the same order.

        Raises:
            ImageError: an image cannot be read; the message names it.
        """
        import tensorflow as tf

        if isinstance(images, (str, bytes, bytearray, os.PathLike, Image.Image)) or hasattr(images, "read"):
            # One image passed on its own; iterating it would yield characters or bytes.
            images = [images]
        images = list(images)
        step = max(1, int(batch_size))
        predictions: list[Prediction] = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            if len(chunk) == 1:
                rows = self._probabilities(self._forward_one(tf.convert_to_tensor(load_array(chunk[0]))))
            else:
                rows = self.class_probabilities(tf.stack([self.resize(load_array(image)) for image in chunk]))
            predictions += [Prediction.from_vector(self.labels, row) for row in rows]
        return predictions

    def predict_one(self, image) -> Prediction:
        """Classifies a single image; see `predict`."""
        return self.predict([image])[0]


_CACHE: OrderedDict[str, tuple[int, Predictor]] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def get_predictor(run_dir: str | Path) -> Predictor:
    """The run's predictor, loaded on first use and reused until its model file changes.

    Keeps the few most recently used runs, so a dashboard switching between runs does not
    reload a model for every request.

    Raises:
        RunError: the run has no usable model or class names.
    """
    run_dir = Path(run_dir).resolve()
    stamp = Run(run_dir).model_stamp()
    if stamp is None:
        return Predictor.from_run(run_dir)  # Raises the plain "no saved model" error.
    key = str(run_dir)
    # Held while loading: two requests for the same new run should load it once, not twice.
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None and cached[0] == stamp:
            _CACHE.move_to_end(key)
            return cached[1]
        predictor = Predictor.from_run(run_dir)
        _CACHE[key] = (stamp, predictor)
        _CACHE.move_to_end(key)
        while len(_CACHE) > CACHED_PREDICTORS:
            _CACHE.popitem(last=False)
        return predictor


def forget_predictors() -> None:
    """Drops every cached predictor, for example after runs were deleted."""
    with _CACHE_LOCK:
        _CACHE.clear()


@dataclass(frozen=True)
class BatchRow:
    """One picture of a batch: its name, and the model's answer or why it could not be read."""

    image: str
    prediction: Prediction | None
    problem: str = ""


def batch_images(source: str | Path, work_dir: str | Path | None = None) -> tuple[list[tuple[str, Path]], Path | None]:
    """The pictures of a folder or a zip, as `(name shown, file)`, sorted; and a temporary folder to remove, if any.

    A zip is unpacked with the same safety checks as a dataset.

    Raises:
        DatasetError: the source is missing, not a zip, or holds no pictures.
        UnsafeArchiveError: the zip was refused for safety.
    """
    import tempfile

    from tlcore.archive import ZipLimits, extract_zip
    from tlcore.errors import DatasetError
    from tlcore.layout import is_image_name
    from tlcore.limits import current

    source = Path(source)
    scratch = None
    if source.is_file():
        base = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".batch-", dir=base))
        top = extract_zip(source, scratch / "pictures", ZipLimits.from_limits(current()))
    elif source.is_dir():
        top = source
    else:
        raise DatasetError(f"`{source.name}` does not exist. Give a folder or a .zip of pictures.")
    found = sorted((path.relative_to(top).as_posix(), path) for path in top.rglob("*")
                   if path.is_file() and is_image_name(path.name) and not any(p.startswith(".") or p == "__MACOSX"
                                                                                for p in path.relative_to(top).parts))
    if not found:
        if scratch is not None:
            from tlcore.archive import remove_tree

            remove_tree(scratch)
        raise DatasetError(f"`{source.name}` holds no pictures (JPEG, PNG, ...).")
    return found, scratch


def predict_batch(run_dir: str | Path, source: str | Path, progress=None, work_dir: str | Path | None = None) -> list[BatchRow]:
    """Classifies every picture of a folder or zip; pictures that cannot be read are listed with the reason.

    Args:
        run_dir: The run folder.
        source: A folder or a zip of pictures, in any sub-folders.
        progress: Called as `progress(done, total)` after each picture.
        work_dir: Where a zip is unpacked for the time it takes (a temporary folder by default).
    """
    from tlcore.archive import remove_tree
    from tlcore.errors import ImageError

    predictor = get_predictor(run_dir)
    pictures, scratch = batch_images(source, work_dir)
    rows = []
    try:
        for done, (name, path) in enumerate(pictures, start=1):
            try:
                rows.append(BatchRow(name, predictor.predict_one(path)))
            except ImageError as error:
                rows.append(BatchRow(name, None, str(error)))
            if progress is not None:
                progress(done, len(pictures))
    finally:
        if scratch is not None:
            remove_tree(scratch)
    return rows


def batch_csv(rows: Sequence[BatchRow], labels: Sequence[str]) -> str:
    """The rows as CSV: image, top class, its probability, every class's probability, and any problem."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "top_class", "confidence", *[f"p_{name}" for name in labels], "problem"])
    for row in rows:
        if row.prediction is None:
            writer.writerow([row.image, "", "", *[""] * len(labels), row.problem])
        else:
            p = row.prediction
            writer.writerow([row.image, p.top_class, f"{p.confidence:.6f}",
                             *[f"{p.probabilities[name]:.6f}" for name in labels], ""])
    return buffer.getvalue()
