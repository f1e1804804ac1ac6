"""Measuring a trained run on labelled images: accuracy, per-class scores and its mistakes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn import metrics

from tlcore.config import SUBSETS
from tlcore.dataset import Dataset
from tlcore.errors import DatasetError, ImageError, RunError
from tlcore.images import decode_file, load_array, needs_conversion
from tlcore.predict import Predictor, get_predictor
from tlcore.runs import Run

LISTED_NAMES = 5


class _Scored(NamedTuple):
    name: str
    path: str
    label: int


class Misclassified(NamedTuple):
    """One image the model got wrong, and how sure it was of its wrong answer."""

    path: str
    true_class: str
    predicted_class: str
    confidence: float
    name: str = ""


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
        split: What was scored: `"validation"`, `"test"`, `"train"` or `"all"`.
        images: Names of the images scored, in the dataset's terms.
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
    split: str = "validation"
    images: tuple[str, ...] = ()

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
            "split": self.split,
            "images": list(self.images),
        }


def _names(paths: Sequence[str]) -> str:
    names = ", ".join(f"`{Path(p).name}`" for p in paths[:LISTED_NAMES])
    more = len(paths) - LISTED_NAMES
    return names + (f" and {more} more" if more > 0 else "")


def _relabel(items: Sequence[tuple[str, str, str]], labels: Sequence[str]) -> list[_Scored]:
    """`(name, path, class name)` triples with labels in the model's order.

    Only classes that have images here must be known to the model.
    """
    unknown = sorted({class_name for _, _, class_name in items if class_name not in labels})
    if unknown:
        raise DatasetError(
            f"The model was not trained on the class(es) {', '.join(f'`{n}`' for n in unknown)}; "
            f"it knows only {', '.join(f'`{n}`' for n in labels)}."
        )
    order = {name: index for index, name in enumerate(labels)}
    return [_Scored(name, str(path), order[class_name]) for name, path, class_name in items]


def _digest_of(path: str) -> str:
    import hashlib

    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return ""


def default_subset(run: Run, dataset: Dataset | None = None) -> str:
    """What `evaluate` scores when not told: a test split when there is one, else the validation images."""
    if dataset is not None:
        return "test" if dataset.test else "validation"
    split = run.split()
    return "test" if split is not None and split.test else "validation"


def _run_items(run: Run, subset: str) -> list[tuple[str, str, str]]:
    split = run.split()
    if split is None:
        raise RunError(f"The run `{run.name}` has no saved split; evaluate it on a dataset instead.")
    if subset == "all":
        raise DatasetError("Scoring every image needs the dataset: give its folder or zip.")
    chosen = split.items(subset)
    if not chosen:
        raise RunError(f"The run `{run.name}` has no {subset} images.")
    return [(item.name, item.path, split.classes[item.label]) for item in chosen]


def _dataset_items(run: Run, dataset: Dataset, subset: str) -> list[tuple[str, str, str]]:
    every = [*dataset.train, *dataset.validation, *dataset.test]
    if subset == "all":
        chosen = every
    elif subset == "test":
        chosen = list(dataset.test)
        if not chosen:
            raise DatasetError("This dataset has no `test` folder; score its validation images or every image instead.")
    else:
        split = run.split()
        if split is None:
            raise RunError(f"The run `{run.name}` has no saved split, so its {subset} images are unknown; use --all.")
        wanted = split.items(subset)
        names = {item.name for item in wanted}
        # Splits saved by version 0.1 name no digests; their files, where still there, do.
        digests = {item.digest or _digest_of(item.path) for item in wanted} - {""}
        chosen = [item for item in every if item.name in names or item.digest in digests]
        if not chosen:
            raise DatasetError(
                f"None of this dataset's images were among the run's {subset} images. "
                "Score every image of it instead (--all)."
            )
    return [(item.name, str(item.path), dataset.classes[item.label]) for item in chosen]


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
    subset: str | None = None,
    batch_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Classifies labelled images with a run's model and scores the answers.

    Never scores training images unless asked to: by default a test split when there is one
    (the dataset's `test/` folder, or the run's own), else the run's validation images as
    recorded in its `split.json`, found in `dataset` by name or by content when one is given.

    Args:
        run_dir: The run folder.
        dataset: Images to evaluate on; None uses the files recorded in the run's split.
        subset: One of `SUBSETS`: `"validation"`, `"test"`, `"train"` (the run's own
            images of that split) or `"all"` (every image of `dataset`); None picks as above.
        batch_size: Images per model call.
        on_progress: Called as `on_progress(done, total)` after each batch.

    Returns:
        The scores, confusion matrix and mistakes.

    Raises:
        RunError: the run has no usable model, or no saved split when one is needed.
        DatasetError: the dataset has a class the model does not know, or no readable image.
    """
    run = Run.open(run_dir)
    predictor = get_predictor(run.path)
    labels = predictor.labels
    subset = subset or default_subset(run, dataset)
    if subset not in SUBSETS:
        raise ValueError(f"Unknown subset `{subset}`. Choose from: {', '.join(SUBSETS)}.")
    raw = _run_items(run, subset) if dataset is None else _dataset_items(run, dataset, subset)
    items = _relabel(raw, labels)
    notes = []
    missing = [item.name for item in items if not Path(item.path).is_file()]
    if missing:
        notes.append(f"{len(missing)} image(s) are no longer on disk and were left out: {_names(missing)}.")
        items = [item for item in items if Path(item.path).is_file()]

    paths = [item.path for item in items]
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

    true = np.asarray([items[i].label for i in indices])
    predicted = rows.argmax(axis=1)
    confidence = rows.max(axis=1)
    result = score(labels, true, predicted, confidence, [paths[i] for i in indices], tuple(notes),
                   names=[items[i].name for i in indices])
    return dataclasses.replace(result, split=subset, images=tuple(items[i].name for i in indices))


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
    names: Sequence[str] | None = None,
) -> Evaluation:
    """Scores predictions against true labels.

    Args:
        classes: Class names; labels are indices into it.
        true: True label of each image.
        predicted: Predicted label of each image.
        confidence: Probability the model gave its predicted label, per image.
        paths: File of each image, for the list of mistakes.
        notes: Sentences to carry into the result.
        names: How to name each image to the user; its file name when None.

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
        Misclassified(str(paths[i]), classes[true[i]], classes[predicted[i]], float(confidence[i]),
                      names[i] if names is not None else Path(paths[i]).name)
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
