"""Finding a dataset's classes and images on disk, and splitting them for training."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from tlcore.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation", "test": "test"}


@dataclass(frozen=True)
class Skipped:
    """A file left out of the dataset, and why, in words a user understands."""

    path: str
    reason: str


@dataclass(frozen=True)
class Dataset:
    """A dataset ready for training: class names and labelled image files per split.

    Attributes:
        root: Folder the dataset was read from.
        classes: Class names, sorted; a label is an index into this tuple.
        train: `(path, label)` pairs used to fit the model.
        validation: `(path, label)` pairs used to measure it; never augmented.
        test: `(path, label)` pairs of an optional held-out split.
        presplit: True when the folder came split into train and validation.
        skipped: Files left out, with the reason.
    """

    root: Path
    classes: tuple[str, ...]
    train: tuple[tuple[Path, int], ...]
    validation: tuple[tuple[Path, int], ...]
    test: tuple[tuple[Path, int], ...] = ()
    presplit: bool = False
    skipped: tuple[Skipped, ...] = field(default_factory=tuple)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def counts(self) -> dict[str, dict[str, int]]:
        """Image count per split and class, for reports and charts."""
        result = {}
        for split in ("train", "validation", "test"):
            items = getattr(self, split)
            if split == "test" and not items:
                continue
            per = {name: 0 for name in self.classes}
            for _, label in items:
                per[self.classes[label]] += 1
            result[split] = per
        return result


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    classes = {}
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and child.name != "__MACOSX":
            classes[child.name] = sorted(p for p in child.rglob("*") if p.is_file() and is_image_name(p))
    return classes


def stratified_split(
    files_by_class: dict[str, list[Path]], classes: tuple[str, ...], val_split: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Splits each class separately so both splits keep the class proportions.

    Every class keeps at least one image in each split when it has two or more.
    """
    if not 0.0 < val_split < 1.0:
        raise DatasetError(
            f"The validation fraction must be between 0 and 1 (for example 0.2), got {val_split}."
        )
    rng = random.Random(seed)
    train, validation = [], []
    for label, name in enumerate(classes):
        files = list(files_by_class.get(name, []))
        rng.shuffle(files)
        n_val = int(round(len(files) * val_split))
        if len(files) >= 2:
            n_val = min(max(n_val, 1), len(files) - 1)
        validation += [(p, label) for p in sorted(files[:n_val])]
        train += [(p, label) for p in sorted(files[n_val:])]
    return train, validation


def load_folder(root: str | Path, val_split: float = 0.2, seed: int = 0) -> Dataset:
    """Reads a dataset folder: one sub-folder per class, or `train/` and `validation/`.

    Args:
        root: The dataset folder.
        val_split: Fraction of each class held out for validation when not already split.
        seed: Seed of the split, so the same folder always splits the same way.

    Raises:
        DatasetError: the folder is missing, or does not hold at least two classes of images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"The dataset folder `{root}` does not exist.")
    top = {child.name.lower(): child for child in root.iterdir() if child.is_dir()}
    split_dirs = {SPLIT_NAMES[n]: p for n, p in top.items() if n in SPLIT_NAMES}
    if "train" in split_dirs and "validation" in split_dirs:
        by_split = {split: _class_folders(path) for split, path in split_dirs.items()}
        classes = tuple(sorted(set(by_split["train"]) | set(by_split["validation"])))
        _check_classes(classes, root)
        parts = {
            split: [(p, classes.index(name)) for name, files in folders.items() if name in classes for p in files]
            for split, folders in by_split.items()
        }
        return Dataset(
            root=root,
            classes=classes,
            train=tuple(parts["train"]),
            validation=tuple(parts["validation"]),
            test=tuple(parts.get("test", ())),
            presplit=True,
        )
    folders = {name: files for name, files in _class_folders(root).items() if files}
    classes = tuple(sorted(folders))
    _check_classes(classes, root)
    train, validation = stratified_split(folders, classes, val_split, seed)
    return Dataset(root=root, classes=classes, train=tuple(train), validation=tuple(validation))


def _check_classes(classes: tuple[str, ...], root: Path) -> None:
    if len(classes) < 2:
        found = f"only `{classes[0]}`" if classes else "none"
        raise DatasetError(
            f"The dataset needs at least 2 class folders of images (found {found} in `{root.name}`). "
            "Put each class's images in its own folder, for example `cats/` and `dogs/`."
        )
