"""Measuring a trained run on labelled images: accuracy, per-class scores and its mistakes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn import metrics

from tlcore.dataset import Dataset
from tlcore.errors import DatasetError, ImageError, RunError
from tlcore.images import decode_file, load_array, needs_conversion
from tlcore.predict import Predictor, get_predictor
from tlcore.runs import SPLIT_FILE, read_json

DATASET_SPLITS = ("train", "validation", "test")
DEFAULT_SPLITS = ("validation",)
LISTED_NAMES = 5


class Misclassified(NamedTuple):
    """One image the model got wrong, and how sure it was of its wrong answer."""

    path: str
    true_class: str
    predicted_class: str
    confidence: float


@dataclass(frozen=True)
class Evaluation:
    """How well a run's model classifies a set of labelled images.

    Attributes:
        classes: Class names in the model's output order; all per-class values follow it.
        accuracy: Share of images classified correctly (0-1).
        precision: Per class: share of the images predicted as the class that really are.
        recall: Per class: share of the class's images predicted as it.
        f1: Per class: harmonic mean of precision and recall.
        support: Per class: how many images of the class were evaluated.
        confusion_matrix: Counts, rows the true class and columns the predicted class.
        misclassified: Every wrong prediction, the most confident first.
        notes: Sentences about images left out (missing or unreadable files).
    """

    classes: tuple[str, ...]
    accuracy: float
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]
    confusion_matrix: list[list[int]]
    misclassified: list[Misclassified]
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """Number of images evaluated."""
        return int(sum(self.support))

    def per_class_frame(self) -> pd.DataFrame:
        """A table with one row per class: precision, recall, F1 and support."""
        return pd.DataFrame(
            {
                "class": list(self.classes),
                "precision": list(self.precision),
                "recall": list(self.recall),
                "f1": list(self.f1),
                "support": list(self.support),
            }
        )

    def to_dict(self) -> dict:
        return {
            "classes": list(self.classes),
            "accuracy": self.accuracy,
            "total": self.total,
            "precision": list(self.precision),
            "recall": list(self.recall),
            "f1": list(self.f1),
            "support": list(self.support),
            "confusion_matrix": [list(row) for row in self.confusion_matrix],
            "misclassified": [mistake._asdict() for mistake in self.misclassified],
            "notes": list(self.notes),
        }


def _names(paths: Sequence[str]) -> str:
    names = ", ".join(f"`{Path(p).name}`" for p in paths[:LISTED_NAMES])
    more = len(paths) - LISTED_NAMES
    return names + (f" and {more} more" if more > 0 else "")


def _relabel(items, classes: Sequence[str], labels: Sequence[str]) -> list[tuple[str, int]]:
    """Maps labels indexing `classes` onto the model's label order, by class name.

    Only classes that have images here must be known to the model.
    """
    used = sorted({int(label) for _, label in items})
    unknown = [classes[label] for label in used if classes[label] not in labels]
    if unknown:
        raise DatasetError(
            f"The model was not trained on the class(es) {', '.join(f'`{n}`' for n in unknown)}; "
            f"it knows only {', '.join(f'`{n}`' for n in labels)}."
        )
    order = {name: index for index, name in enumerate(labels)}
    return [(str(path), order[classes[int(label)]]) for path, label in items]


def _run_validation_items(run_dir: Path, labels: Sequence[str]) -> list[tuple[str, int]]:
    split = read_json(run_dir / SPLIT_FILE, None)
    if not split or "validation" not in split:
        raise RunError(
            f"The run `{run_dir.name}` has no saved validation split ({SPLIT_FILE}); "
            "evaluate it on a dataset instead."
        )
    return _relabel(split["validation"], split.get("classes") or labels, labels)


def _dataset_items(dataset: Dataset, labels: Sequence[str], splits: Sequence[str]) -> list[tuple[str, int]]:
    items = [item for split in splits for item in getattr(dataset, split)]
    return _relabel(items, dataset.classes, labels)


def _read_by_pillow(path: str) -> bool:
    """True for files TensorFlow cannot decode, or would decode to other pixels than `Predictor`.

    Unreadable files go this way too, so they are reported by name with the others.
    """
    try:
        return needs_conversion(path)
    except (ImageError, OSError):
        return True


def _stream_probabilities(
    predictor: Predictor,
    paths: list[str],
    chosen: list[int],
    batch_size: int,
    advance: Callable[[int], None],
) -> tuple[np.ndarray, np.ndarray]:
    """Runs the model over the `chosen` files, streamed from disk.

    Returns:
        The indices of the files read, and their rows of class probabilities.
    """
    import tensorflow as tf

    def load(index, path):
        return decode_file(path, predictor.input_size), index

    data = (
        tf.data.Dataset.from_tensor_slices(
            (tf.constant(chosen, tf.int64), tf.constant([paths[i] for i in chosen], tf.string))
        )
        .map(load, num_parallel_calls=tf.data.AUTOTUNE)
        # A file TensorFlow cannot decode is dropped with its index, so the rest still line up.
        .ignore_errors()
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    indices, rows = [], []
    for images, batch_indices in data:
        rows.append(predictor.class_probabilities(images))
        indices.append(batch_indices.numpy())
        advance(len(batch_indices))
    if not rows:
        return np.zeros(0, dtype="int64"), np.zeros((0, predictor.num_classes))
    return np.concatenate(indices), np.concatenate(rows)


def evaluate(
    run_dir: str | Path,
    dataset: Dataset | None = None,
    *,
    splits: Sequence[str] | None = None,
    batch_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Classifies labelled images with a run's model and scores the answers.

    Args:
        run_dir: The run folder.
        dataset: Images to evaluate on. None uses the run's own validation split from its
            `split.json`, leaving out files no longer on disk.
        splits: Which of the dataset's splits to use (`"train"`, `"validation"`, `"test"`);
            its validation images by default. Ignored when `dataset` is None.
        batch_size: Images per model call.
        on_progress: Called as `on_progress(done, total)` after each batch.

    Returns:
        The scores, confusion matrix and mistakes.

    Raises:
        RunError: the run has no usable model, or no saved split when `dataset` is None.
        DatasetError: the dataset has a class the model does not know, or no readable image.
    """
    run_dir = Path(run_dir)
    predictor = get_predictor(run_dir)
    labels = predictor.labels
    if dataset is None:
        items = _run_validation_items(run_dir, labels)
    else:
        splits = DEFAULT_SPLITS if splits is None else tuple(splits)
        unknown_splits = [name for name in splits if name not in DATASET_SPLITS]
        if unknown_splits:
            raise ValueError(f"Unknown split `{unknown_splits[0]}`. Choose from: {', '.join(DATASET_SPLITS)}.")
        items = _dataset_items(dataset, labels, splits)
    notes = []
    missing = [path for path, _ in items if not Path(path).is_file()]
    if missing:
        notes.append(f"{len(missing)} image(s) are no longer on disk and were left out: {_names(missing)}.")
        items = [item for item in items if Path(item[0]).is_file()]

    paths = [path for path, _ in items]
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if on_progress is not None:
            on_progress(done, len(paths))

    by_pillow = [index for index, path in enumerate(paths) if _read_by_pillow(path)]
    streamed = sorted(set(range(len(paths))) - set(by_pillow))
    indices, rows = _stream_probabilities(predictor, paths, streamed, max(1, int(batch_size)), advance)
    indices, rows = _read_the_rest(predictor, paths, indices, rows, notes, advance)
    if len(indices) == 0:
        raise DatasetError("None of the images could be read, so there is nothing to evaluate.")

    true = np.asarray([items[i][1] for i in indices])
    predicted = rows.argmax(axis=1)
    confidence = rows.max(axis=1)
    return score(labels, true, predicted, confidence, [paths[i] for i in indices], tuple(notes))


def _read_the_rest(
    predictor: Predictor, paths: list[str], indices, rows, notes: list[str], advance: Callable[[int], None]
):
    """Reads with Pillow the files the stream left out: TIFF, CMYK JPEG, rotated photos…

    Pillow decodes them exactly as `Predictor` does; files it cannot read either are noted.
    """
    skipped = sorted(set(range(len(paths))) - set(indices.tolist()))
    if not skipped:
        return indices, rows
    extra_indices, extra_rows, unreadable = [], [], []
    for index in skipped:
        try:
            image = predictor.resize(load_array(paths[index]))
        except (ImageError, OSError):
            unreadable.append(paths[index])
        else:
            extra_rows.append(predictor.class_probabilities(image[None]))
            extra_indices.append(index)
        advance(1)
    if unreadable:
        notes.append(f"{len(unreadable)} image(s) could not be read and were left out: {_names(unreadable)}.")
    if extra_rows:
        indices = np.concatenate([indices, np.asarray(extra_indices)])
        rows = np.concatenate([rows, *extra_rows])
    return indices, rows


def score(
    classes: Sequence[str],
    true: Sequence[int],
    predicted: Sequence[int],
    confidence: Sequence[float],
    paths: Sequence[str],
    notes: tuple[str, ...] = (),
) -> Evaluation:
    """Scores predictions against true labels.

    Args:
        classes: Class names; labels are indices into it.
        true: True label of each image.
        predicted: Predicted label of each image.
        confidence: Probability the model gave its predicted label, per image.
        paths: File of each image, for the list of mistakes.
        notes: Sentences to carry into the result.

    Returns:
        The evaluation; a class with no images scores 0 rather than failing.
    """
    every = list(range(len(classes)))
    true, predicted = np.asarray(true, dtype="int64"), np.asarray(predicted, dtype="int64")
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        true, predicted, labels=every, zero_division=0
    )
    matrix = metrics.confusion_matrix(true, predicted, labels=every)
    wrong = [
        Misclassified(str(paths[i]), classes[true[i]], classes[predicted[i]], float(confidence[i]))
        for i in np.flatnonzero(true != predicted)
    ]
    return Evaluation(
        classes=tuple(classes),
        accuracy=float(np.mean(true == predicted)) if len(true) else 0.0,
        precision=tuple(float(v) for v in precision),
        recall=tuple(float(v) for v in recall),
        f1=tuple(float(v) for v in f1),
        support=tuple(int(v) for v in support),
        confusion_matrix=[[int(v) for v in row] for row in matrix],
        misclassified=sorted(wrong, key=lambda mistake: mistake.confidence, reverse=True),
        notes=notes,
    )
