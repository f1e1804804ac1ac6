"""The dataset health report: counts, skipped files, duplicates, imbalance and image sizes."""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from tlcore.dataset import Dataset, Skipped, map_in_threads

MIN_TRAINING_IMAGES = 2
FEW_TRAINING_IMAGES = 20
IMBALANCE_RATIO = 2.0
SMALL_IMAGE_PIXELS = 32

DUPLICATE_WITHIN_CLASS = "within a class"
DUPLICATE_ACROSS_CLASSES = "across classes"
DUPLICATE_ACROSS_SPLITS = "across splits"

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class DuplicateGroup:
    """Files with exactly the same content.

    Attributes:
        kind: `DUPLICATE_ACROSS_CLASSES` (conflicting labels), `DUPLICATE_ACROSS_SPLITS` (a training image
            also used to measure the model) or `DUPLICATE_WITHIN_CLASS`.
        paths: The files, as shown to the user.
        classes: The class of each file.
        splits: The split of each file.
    """

    kind: str
    paths: tuple[str, ...]
    classes: tuple[str, ...]
    splits: tuple[str, ...]


@dataclass(frozen=True)
class HealthReport:
    """What a user should know about a dataset before training on it.

    Attributes:
        root: The dataset folder.
        classes: Class names.
        counts: Images per split and class, as `Dataset.counts()`.
        skipped: Files left out of the dataset, with the reason.
        errors: Problems that prevent training.
        warnings: Problems that make results worse or misleading.
        duplicates: Groups of identical files.
        small_images: Images smaller than `SMALL_IMAGE_PIXELS` on a side.
        widths: Width of every image, for a histogram.
        heights: Height of every image, in the same order.
    """

    root: str
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    skipped: tuple[Skipped, ...] = ()
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    duplicates: tuple[DuplicateGroup, ...] = ()
    small_images: tuple[str, ...] = ()
    widths: tuple[int, ...] = field(default=(), repr=False)
    heights: tuple[int, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        """True when nothing prevents training."""
        return not self.errors

    def size_summary(self) -> dict[str, dict[str, float]]:
        """Smallest, median and largest width and height, in pixels."""
        return {
            name: {"min": min(values), "median": statistics.median(values), "max": max(values)}
            for name, values in (("width", self.widths), ("height", self.heights))
            if values
        }

    def counts_frame(self) -> pd.DataFrame:
        """One row per split and class with columns `class`, `split`, `images`, for a bar chart."""
        rows = [
            {"class": name, "split": split, "images": count}
            for split, per_class in self.counts.items()
            for name, count in per_class.items()
        ]
        return pd.DataFrame(rows, columns=["class", "split", "images"])

    def to_dict(self) -> dict:
        """The report as plain JSON-safe values."""
        return {
            "root": self.root,
            "ok": self.ok,
            "classes": list(self.classes),
            "counts": {split: dict(per_class) for split, per_class in self.counts.items()},
            "skipped": [{"path": item.path, "reason": item.reason} for item in self.skipped],
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "duplicates": [
                {"kind": group.kind, "paths": list(group.paths), "classes": list(group.classes), "splits": list(group.splits)}
                for group in self.duplicates
            ],
            "small_images": list(self.small_images),
            "image_sizes": {"widths": list(self.widths), "heights": list(self.heights), **self.size_summary()},
        }

    def to_text(self) -> str:
        """The report as lines of plain text for the command line."""
        splits = [split for split in SPLITS if split in self.counts]
        width = max([len(name) for name in self.classes] + [5])
        lines = [f"Dataset: {self.root}", f"Classes ({len(self.classes)}): {', '.join(self.classes)}", ""]
        lines.append(f"  {'class':<{width}}" + "".join(f"{split:>12}" for split in splits))
        for name in self.classes:
            lines.append(f"  {name:<{width}}" + "".join(f"{self.counts[split].get(name, 0):>12}" for split in splits))
        lines.append(f"  {'total':<{width}}" + "".join(f"{sum(self.counts[split].values()):>12}" for split in splits))
        sizes = self.size_summary()
        if sizes:
            lines.append("")
            lines += [
                f"Image {name}: {int(s['min'])} to {int(s['max'])} pixels (median {s['median']:g})"
                for name, s in sizes.items()
            ]
        if self.skipped:
            lines += ["", f"Skipped {len(self.skipped)} file(s):"]
            lines += [f"  {item.path}: {item.reason}" for item in self.skipped]
        for title, messages in (("Errors", self.errors), ("Warnings", self.warnings)):
            if messages:
                lines += ["", f"{title}:"] + [f"  - {message}" for message in messages]
        if self.ok and not self.warnings:
            lines += ["", "No problems found."]
        return "\n".join(lines)


def health_report(dataset: Dataset) -> HealthReport:
    """Inspects a loaded dataset: counts, duplicates, imbalance, tiny classes and image sizes.

    Args:
        dataset: The dataset from `load_dataset`.

    Returns:
        The report; nothing is raised for problems, they are listed in `errors` and `warnings`.
    """
    items = [(path, label, split) for split in SPLITS for path, label in getattr(dataset, split)]
    facts = map_in_threads(_file_facts, [path for path, _, _ in items])
    counts = dataset.counts()
    errors, warnings = _count_problems(dataset.classes, counts.get("train", {}))
    warnings = list(dataset.warnings) + warnings

    by_digest: dict[str, list[int]] = defaultdict(list)
    for index, (digest, _) in enumerate(facts):
        if digest:
            by_digest[digest].append(index)
    duplicates = []
    for indices in by_digest.values():
        if len(indices) > 1:
            members = [items[i] for i in indices]
            duplicates.append(
                DuplicateGroup(
                    kind=_duplicate_kind(members),
                    paths=tuple(dataset.display_path(path) for path, _, _ in members),
                    classes=tuple(dataset.classes[label] for _, label, _ in members),
                    splits=tuple(split for _, _, split in members),
                )
            )
    duplicates.sort(key=lambda group: group.paths)
    warnings += _duplicate_warnings(duplicates)

    sizes = [(size, path) for (_, size), (path, _, _) in zip(facts, items) if size]
    small = [(dataset.display_path(path), size) for size, path in sizes if min(size) < SMALL_IMAGE_PIXELS]
    if small:
        name, (width, height) = small[0]
        warnings.append(
            f"{len(small)} image(s) are smaller than {SMALL_IMAGE_PIXELS} pixels on a side (for example `{name}`, "
            f"{width}x{height}); they will be blown up to the model's input size and look blurry."
        )
    return HealthReport(
        root=str(dataset.root),
        classes=dataset.classes,
        counts=counts,
        skipped=dataset.skipped,
        errors=tuple(errors),
        warnings=tuple(warnings),
        duplicates=tuple(duplicates),
        small_images=tuple(name for name, _ in small),
        widths=tuple(size[0] for size, _ in sizes),
        heights=tuple(size[1] for size, _ in sizes),
    )


def _file_facts(path: Path) -> tuple[str | None, tuple[int, int] | None]:
    """Content hash and pixel size of one file; None for what cannot be read."""
    try:
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None, None
    try:
        with Image.open(path) as image:
            return digest, image.size
    except Exception:
        # The dataset loader already checked every image; a file changed since is simply not measured.
        return digest, None


def _count_problems(classes: tuple[str, ...], train_counts: dict[str, int]) -> tuple[list[str], list[str]]:
    errors, warnings = [], []
    for name in classes:
        count = train_counts.get(name, 0)
        if count < MIN_TRAINING_IMAGES:
            errors.append(
                f"The class `{name}` has {count} training image(s); each class needs at least "
                f"{MIN_TRAINING_IMAGES} to learn from."
            )
        elif count < FEW_TRAINING_IMAGES:
            warnings.append(
                f"The class `{name}` has only {count} training images; {FEW_TRAINING_IMAGES} or more per class "
                "give more reliable results."
            )
    if train_counts and min(train_counts.values()) > 0:
        largest = max(train_counts, key=train_counts.get)
        smallest = min(train_counts, key=train_counts.get)
        ratio = train_counts[largest] / train_counts[smallest]
        if ratio > IMBALANCE_RATIO:
            warnings.append(
                f"The classes are unbalanced: `{largest}` has {train_counts[largest]} training images but "
                f"`{smallest}` only {train_counts[smallest]} ({ratio:.1f} times fewer). The model may favour "
                "the larger classes; add images to the smaller ones or remove some from the larger."
            )
    return errors, warnings


def _duplicate_kind(members: list[tuple[Path, int, str]]) -> str:
    if len({label for _, label, _ in members}) > 1:
        return DUPLICATE_ACROSS_CLASSES
    splits = {split for _, _, split in members}
    if "train" in splits and len(splits) > 1:
        return DUPLICATE_ACROSS_SPLITS
    return DUPLICATE_WITHIN_CLASS


def _duplicate_warnings(groups: list[DuplicateGroup]) -> list[str]:
    warnings = []
    for kind, template in (
        (
            DUPLICATE_ACROSS_CLASSES,
            "{n} set(s) of identical images carry different class labels (for example `{a}` in `{ca}` and `{b}` "
            "in `{cb}`). The model cannot learn both labels for one picture; remove the wrong copies.",
        ),
        (
            DUPLICATE_ACROSS_SPLITS,
            "{n} image(s) used for training are also used to measure the model (for example `{a}` and `{b}`), "
            "so the measured accuracy looks better than it really is. Keep each picture in one split only.",
        ),
        (
            DUPLICATE_WITHIN_CLASS,
            "{n} set(s) of identical images within a class (for example `{a}` and `{b}`). Copies add nothing "
            "new and make those pictures count more than the others.",
        ),
    ):
        matching = [group for group in groups if group.kind == kind]
        if matching:
            first = matching[0]
            other = _contrasting_member(first)
            warnings.append(
                template.format(
                    n=len(matching),
                    a=first.paths[0],
                    b=first.paths[other],
                    ca=first.classes[0],
                    cb=first.classes[other],
                )
            )
    return warnings


def _contrasting_member(group: DuplicateGroup) -> int:
    """Index of the member that best shows the problem next to the first one."""
    for index in range(1, len(group.paths)):
        if group.classes[index] != group.classes[0] or group.splits[index] != group.splits[0]:
            return index
    return 1
