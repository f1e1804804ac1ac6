"""The dataset health report: counts, skipped files, duplicates, imbalance and image sizes."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

import pandas as pd

from tlcore.checking import map_in_threads
from tlcore.dataset import Dataset, Item, Skipped
from tlcore.images import ImageCheck, check_image
from tlcore.near_duplicates import DEFAULT_MAX_DISTANCE, group_pairs, near_duplicate_pairs

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
    """Files with exactly the same content, or pictures that look alike (see `HealthReport.near_duplicates`).

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
        near_duplicates: Groups of pictures that look alike without being identical files:
            resized, re-encoded, lightly cropped or brightened copies of one picture.
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
    near_duplicates: tuple[DuplicateGroup, ...] = ()
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
            "duplicates": [_group_dict(group) for group in self.duplicates],
            "near_duplicates": [_group_dict(group) for group in self.near_duplicates],
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


def _group_dict(group: DuplicateGroup) -> dict:
    return {"kind": group.kind, "paths": list(group.paths), "classes": list(group.classes), "splits": list(group.splits)}


def health_report(dataset: Dataset, near_distance: int = DEFAULT_MAX_DISTANCE) -> HealthReport:
    """Inspects a loaded dataset: counts, duplicates and look-alikes, imbalance, tiny classes and image sizes.

    Args:
        dataset: The dataset from `load_dataset`.
        near_distance: Largest perceptual-hash distance at which two pictures count as alike.

    Returns:
        The report; nothing is raised for problems, they are listed in `errors` and `warnings`.
    """
    items = [(item, split) for split in SPLITS for item in getattr(dataset, split)]
    checks = _checks(dataset, [item for item, _ in items])
    counts = dataset.counts()
    errors, warnings = _count_problems(dataset.classes, counts.get("train", {}))
    warnings = list(dataset.warnings) + warnings

    def group(indices) -> DuplicateGroup:
        members = [items[i] for i in indices]
        return DuplicateGroup(
            kind=_duplicate_kind(members),
            paths=tuple(item.name for item, _ in members),
            classes=tuple(dataset.classes[item.label] for item, _ in members),
            splits=tuple(split for _, split in members),
        )

    by_digest: dict[str, list[int]] = defaultdict(list)
    for index, (item, _) in enumerate(items):
        if item.digest:
            by_digest[item.digest].append(index)
    duplicates = sorted((group(indices) for indices in by_digest.values() if len(indices) > 1), key=lambda g: g.paths)
    warnings += _duplicate_warnings(duplicates, _EXACT)

    hashes = [check.phash if check is not None else None for check in checks]
    colours = [bytes.fromhex(check.colour) if check is not None and check.colour else None for check in checks]
    pairs = [(i, j, d) for i, j, d in near_duplicate_pairs(hashes, near_distance, colours)
             if items[i][0].digest != items[j][0].digest]
    near = sorted((group(indices) for indices in group_pairs(len(items), pairs)), key=lambda g: g.paths)
    warnings += _duplicate_warnings(near, _ALIKE)

    sizes = [((check.width, check.height), item) for check, (item, _) in zip(checks, items) if check and check.width]
    small = [(item.name, size) for size, item in sizes if min(size) < SMALL_IMAGE_PIXELS]
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
        near_duplicates=tuple(near),
        small_images=tuple(name for name, _ in small),
        widths=tuple(size[0] for size, _ in sizes),
        heights=tuple(size[1] for size, _ in sizes),
    )


def _checks(dataset: Dataset, items: list[Item]) -> list[ImageCheck | None]:
    """What loading found about each image; checked now for a dataset put together by hand."""
    found = [dataset.details.get(item.name) for item in items]
    missing = [index for index, check in enumerate(found) if check is None or check.phash is None and not check.problem]
    for index, check in zip(missing, map_in_threads(lambda i: check_image(items[i].path), missing)):
        found[index] = check if check.problem is None else None
    return found


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
                "the larger classes: add images to the smaller ones, or choose balanced class weights when "
                "training (each class then counts the same)."
            )
    return errors, warnings


def _duplicate_kind(members: list[tuple[Item, str]]) -> str:
    if len({item.label for item, _ in members}) > 1:
        return DUPLICATE_ACROSS_CLASSES
    splits = {split for _, split in members}
    if "train" in splits and len(splits) > 1:
        return DUPLICATE_ACROSS_SPLITS
    return DUPLICATE_WITHIN_CLASS


_EXACT = {
    DUPLICATE_ACROSS_CLASSES: "{n} set(s) of identical images carry different class labels (for example `{a}` in `{ca}` "
    "and `{b}` in `{cb}`). The model cannot learn both labels for one picture; remove the wrong copies.",
    DUPLICATE_ACROSS_SPLITS: "{n} image(s) used for training are also used to measure the model (for example `{a}` and "
    "`{b}`), so the measured accuracy looks better than it really is. Keep each picture in one split only.",
    DUPLICATE_WITHIN_CLASS: "{n} set(s) of identical images within a class (for example `{a}` and `{b}`). Copies add "
    "nothing new and make those pictures count more than the others.",
}
_ALIKE = {
    DUPLICATE_ACROSS_CLASSES: "{n} group(s) of pictures look alike but carry different class labels (for example `{a}` "
    "in `{ca}` and `{b}` in `{cb}`): probably one picture saved twice and filed in two classes. Check them and keep "
    "the right label only.",
    DUPLICATE_ACROSS_SPLITS: "{n} group(s) of pictures look alike (resized or re-saved copies, or near-identical "
    "shots) and sit in "
    "both the training and the measuring images (for example `{a}` and `{b}`). The model has in effect already "
    "seen those validation images, so the validation accuracy looks better than the model really is on new "
    "pictures. Keep each picture and its copies in one split.",
    DUPLICATE_WITHIN_CLASS: "{n} group(s) of pictures within a class look alike (for example `{a}` and `{b}`): "
    "near-copies add little and make those pictures count more than the others.",
}


def _duplicate_warnings(groups: list[DuplicateGroup], templates: dict[str, str]) -> list[str]:
    # A group can do both harms, conflicting labels and leaking into the validation images.
    tests = {
        DUPLICATE_ACROSS_CLASSES: lambda g: len(set(g.classes)) > 1,
        DUPLICATE_ACROSS_SPLITS: lambda g: "train" in g.splits and len(set(g.splits)) > 1,
        DUPLICATE_WITHIN_CLASS: lambda g: g.kind == DUPLICATE_WITHIN_CLASS,
    }
    warnings = []
    for kind, applies in tests.items():
        matching = [group for group in groups if applies(group)]
        if matching:
            first = matching[0]
            other = _contrasting_member(first, kind)
            warnings.append(
                templates[kind].format(
                    n=len(matching), a=first.paths[0], b=first.paths[other], ca=first.classes[0], cb=first.classes[other]
                )
            )
    return warnings


def _contrasting_member(group: DuplicateGroup, kind: str) -> int:
    """Index of the member that best shows the problem next to the first one."""
    for index in range(1, len(group.paths)):
        if kind == DUPLICATE_ACROSS_CLASSES and group.classes[index] != group.classes[0]:
            return index
        if kind == DUPLICATE_ACROSS_SPLITS and group.splits[index] != group.splits[0]:
            return index
    return 1
