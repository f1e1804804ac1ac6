"""A dataset ready for training: its classes and labelled images, checked and split the same way every time."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from tlcore.archive import ZipLimits, extract_zip, open_zip, remove_tree
from tlcore.checking import CheckedFile, Progress, check_files, map_in_threads  # noqa: F401  (re-exported)
from tlcore.errors import DatasetError
from tlcore.images import ImageCheck
from tlcore.layout import (  # noqa: F401  (re-exported: where callers found them before)
    ALL,
    GOOD_LAYOUT,
    IMAGE_EXTENSIONS,
    METADATA_FILE,
    SPLIT_NAMES,
    ClassFile,
    Skipped,
    is_image_name,
    list_files,
    read_layout,
)


class Item(NamedTuple):
    """One labelled image.

    Attributes:
        path: The file TensorFlow reads: the original, or its PNG copy in the work folder.
        label: Index of its class in `Dataset.classes`.
        name: Its path in the dataset as the user sees it, relative to the dataset folder.
        digest: Names its pixels by its bytes; features are cached under it.
    """

    path: Path
    label: int
    name: str = ""
    digest: str = ""


def as_item(entry, root: Path | None = None) -> Item:
    """An `Item` from an `Item` or a `(path, label)` pair; a pair's digest is read from its file."""
    if isinstance(entry, Item) and entry.digest:
        return entry
    path, label = Path(entry[0]), int(entry[1])
    name = entry[2] if len(entry) > 2 and entry[2] else _relative_name(path, root)
    try:
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        digest = ""
    return Item(path, label, name, digest)


def _relative_name(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name


@dataclass(frozen=True)
class Dataset:
    """A dataset ready for training: class names and labelled image files per split.

    Attributes:
        root: Folder the dataset was read from (for a zip, the folder it was unpacked into).
        classes: Class names, sorted; a label is an index into this tuple.
        train: The `Item`s used to fit the model.
        validation: The `Item`s used to measure it; never augmented.
        test: The `Item`s of an optional held-out split.
        presplit: True when the folder came split into train and validation.
        skipped: Files left out, with the reason; paths are relative to `root`.
        warnings: Problems that do not stop training, in plain sentences.
        details: What checking found about each image, by its name.
        folders: For each split (`"all"` when not split), the folder holding its class folders,
            relative to `root`.

    `(path, label)` pairs are accepted for the splits and made into `Item`s.
    """

    root: Path
    classes: tuple[str, ...]
    train: tuple[Item, ...]
    validation: tuple[Item, ...]
    test: tuple[Item, ...] = ()
    presplit: bool = False
    skipped: tuple[Skipped, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)
    details: dict[str, ImageCheck] = field(default_factory=dict, compare=False, repr=False)
    folders: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        for split in ("train", "validation", "test"):
            items = getattr(self, split)
            if any(not isinstance(item, Item) or not item.digest for item in items):
                object.__setattr__(self, split, tuple(as_item(item, Path(self.root)) for item in items))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def converted(self) -> tuple[tuple[Path, str], ...]:
        """`(copy, name)` for each image read from a PNG copy TensorFlow decodes like Pillow."""
        return tuple(
            (item.path, item.name)
            for split in (self.train, self.validation, self.test)
            for item in split
            if (check := self.details.get(item.name)) is not None and check.needs_conversion
        )

    def split(self, name: str) -> tuple[Item, ...]:
        """The items of `"train"`, `"validation"` or `"test"`."""
        if name not in ("train", "validation", "test"):
            raise ValueError(f"Unknown split `{name}`. Choose one of: train, validation, test.")
        return getattr(self, name)

    def counts(self) -> dict[str, dict[str, int]]:
        """Image count per split and class, for reports and charts."""
        result = {}
        for split in ("train", "validation", "test"):
            items = getattr(self, split)
            if split == "test" and not items:
                continue
            per = {name: 0 for name in self.classes}
            for item in items:
                per[self.classes[item.label]] += 1
            result[split] = per
        return result

    @cached_property
    def _names(self) -> dict[Path, str]:
        return {Path(item.path): item.name for split in (self.train, self.validation, self.test) for item in split}

    def display_path(self, path: Path) -> str:
        """How to name an image to the user: its path in the dataset, even for a converted copy."""
        name = self._names.get(Path(path))
        return name if name else _relative_name(Path(path), Path(self.root))


def data_source(data) -> str:
    """The folder a training's data comes from: a path as given, or a `Dataset`'s root (a `Path`
    has a `root` attribute of its own, "/", so the test is on the type)."""
    return str(data) if isinstance(data, (str, os.PathLike)) else str(data.root)


def default_work_dir() -> Path:
    """The folder where unpacked zips, converted images, checks and features are kept.

    Returns:
        `$TLCORE_HOME` when set, else `~/.tlcore`.
    """
    return Path(os.environ.get("TLCORE_HOME") or Path.home() / ".tlcore")


def split_seed(seed: int, class_name: str) -> int:
    """The seed of one class's split: the same class splits the same whatever other classes exist."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}\x00{class_name}".encode()).digest()[:8], "big")


def stratified_split(
    files_by_class: dict[str, list], classes: tuple[str, ...], val_split: float, seed: int, key=None
) -> tuple[list, list]:
    """Splits each class separately so both splits keep the class proportions.

    Each class is shuffled by its own generator, seeded from `(seed, class name)`, after sorting
    its files by `key` (by default the file itself): with keys that name a picture within its
    class folder, a class splits the same wherever the dataset lies and whatever classes are
    added. Every class keeps at least one image in each split when it has two or more.

    Args:
        files_by_class: The files of each class.
        classes: Class names in label order.
        val_split: Fraction of each class held out for validation.
        seed: Seed of the split.
        key: Sort key of one file; the file itself when None.

    Returns:
        `(train, validation)` lists of `(file, label)`, each sorted by `key` within a class.
    """
    _check_val_split(val_split)
    key = key or (lambda file: file)
    train, validation = [], []
    for label, name in enumerate(classes):
        files = sorted(files_by_class.get(name, []), key=key)
        shuffled = list(files)
        random.Random(split_seed(seed, name)).shuffle(shuffled)
        n_val = int(round(len(files) * val_split))
        if len(files) >= 2:
            n_val = min(max(n_val, 1), len(files) - 1)
        held = {id(file) for file in shuffled[:n_val]}
        validation += [(file, label) for file in files if id(file) in held]
        train += [(file, label) for file in files if id(file) not in held]
    return train, validation


def _check_val_split(val_split: float) -> None:
    if not 0.0 < val_split < 1.0:
        raise DatasetError(
            f"The validation fraction must be between 0 and 1 (for example 0.2), got {val_split}."
        )


def load_folder(root: str | Path, val_split: float = 0.2, seed: int = 0, work_dir: str | Path | None = None) -> Dataset:
    """Reads a dataset folder; see `load_dataset`."""
    return load_dataset(root, val_split=val_split, seed=seed, work_dir=work_dir)


def load_dataset(
    source: str | Path,
    *,
    val_split: float = 0.2,
    seed: int = 0,
    work_dir: str | Path | None = None,
    limits: ZipLimits | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """Reads a dataset from a folder or a zip, checks every image and splits it for training.

    The layout comes from the file names (`tlcore.layout.read_layout`); every image is then
    decoded once (`tlcore.checking.check_files`): unreadable ones are left out and listed in
    `skipped`, and those TensorFlow would decode differently are read from PNG copies in the
    work folder. A user's folder is never written to. Without a validation folder each class is
    split by the names of its files (see `stratified_split`), so the split does not depend on
    where the dataset or the work folder lie.

    Args:
        source: A dataset folder or a `.zip` file.
        val_split: Fraction of each class held out for validation when there is no validation folder.
        seed: Seed of that split, so the same data always splits the same way.
        work_dir: Where zips are unpacked and checks and copies kept; default `default_work_dir()`.
        limits: Safety limits for zips; default `ZipLimits()`.
        progress: Optional callback, see `tlcore.checking.Progress`.

    Returns:
        The dataset.

    Raises:
        DatasetError: the source is missing, not a zip, empty, or not laid out as a dataset.
        UnsafeArchiveError: the zip was rejected for safety.
    """
    _check_val_split(val_split)
    source = Path(source)
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir()
    if source.is_dir():
        return _read(source, source.name, work_dir, val_split, seed, progress)
    if not source.is_file():
        raise DatasetError(f"`{source}` does not exist. Choose a dataset folder or a .zip file.")
    top = dataset_folder(source, work_dir)
    with dataset_lock(top):
        _unpack_locked(source, top, limits, progress)
        try:
            dataset = _read(top, source.name, work_dir, val_split, seed, progress)
        except DatasetError:
            # A zip refused for what it holds leaves nothing behind.
            remove_tree(top)
            raise
        os.utime(top)  # marks it recently used, for the work folder's budget
    _keep_within_budget(work_dir, top)
    return dataset


def _keep_within_budget(work_dir: Path, in_use: Path) -> None:
    from tlcore.runs import default_runs_dir
    from tlcore.storage import enforce_budget, live_paths

    enforce_budget(work_dir, keep=live_paths(default_runs_dir()) | {in_use})


def _read(top: Path, name: str, work_dir: Path, val_split: float, seed: int, progress: Progress | None) -> Dataset:
    layout = read_layout(list_files(top), name)
    files = layout.files()
    checked = dict(zip((file.parts for file in files), check_files(top, [f.parts for f in files], work_dir, progress)))
    return _build(top, name, layout, checked, val_split, seed)


def _build(top: Path, name: str, layout, checked: dict, val_split: float, seed: int) -> Dataset:
    skipped = list(layout.skipped)
    warnings = list(layout.warnings)
    usable: dict[str, dict[str, list[tuple[ClassFile, CheckedFile]]]] = {}
    for split, per_class in layout.splits.items():
        usable[split] = {}
        for class_name, files in per_class.items():
            kept = []
            for file in files:
                result = checked[file.parts]
                if result.problem:
                    skipped.append(Skipped(file.name, result.problem))
                else:
                    kept.append((file, result))
            usable[split][class_name] = kept
    training = usable.get(ALL) or usable.get("train", {})
    classes = _classes(name, training, usable, warnings)

    def items(pairs) -> list[Item]:
        return [Item(result.path, label, file.name, result.digest) for (file, result), label in pairs]

    def labelled(per_class) -> list[Item]:
        pairs = [(entry, label) for label, c in enumerate(classes) for entry in sorted(per_class.get(c, []), key=_within)]
        return items(pairs)

    if not layout.presplit or "validation" not in usable:
        train, validation = stratified_split(training, classes, val_split, seed, key=_within)
        train, validation = items(train), items(validation)
        if layout.presplit:
            warnings.append(
                f"There is no validation folder, so {val_split:.0%} of each class's training images "
                "are held out to measure the model."
            )
    else:
        train, validation = labelled(usable["train"]), labelled(usable["validation"])
    test = labelled(usable.get("test", {}))
    _check_training_counts(classes, train)
    details = {file.name: result.check for per_class in usable.values() for entries in per_class.values()
               for file, result in entries}
    return Dataset(
        root=top,
        classes=classes,
        train=tuple(train),
        validation=tuple(validation),
        test=tuple(test),
        presplit=layout.presplit and "validation" in usable,
        skipped=tuple(sorted(skipped, key=lambda item: item.path)),
        warnings=tuple(warnings),
        details=details,
        folders=dict(layout.folders),
    )


def _within(entry) -> str:
    file = entry[0] if isinstance(entry, tuple) else entry
    return file.within


def _classes(name: str, training: dict, usable: dict, warnings: list[str]) -> tuple[str, ...]:
    for class_name, files in training.items():
        if not files:
            warnings.append(f"The class folder `{class_name}` has no usable images and was left out.")
    classes = tuple(sorted(class_name for class_name, files in training.items() if files))
    for split, per_class in usable.items():
        if split in (ALL, "train"):
            continue
        for class_name, files in per_class.items():
            if files and class_name not in classes:
                raise DatasetError(
                    f"The class `{class_name}` has images in `{split}` but none for training. "
                    f"Add its images to the `train` folder too. {GOOD_LAYOUT}"
                )
        for class_name in classes:
            if not per_class.get(class_name):
                warnings.append(
                    f"The class `{class_name}` has no {split} images, so the model's {split} results "
                    "say nothing about it."
                )
    if len(classes) < 2:
        if not classes:
            raise DatasetError(f"The dataset `{name}` holds no readable images. {GOOD_LAYOUT}")
        raise DatasetError(
            f"The dataset has only one class (`{classes[0]}`), but a classifier needs at least two. {GOOD_LAYOUT}"
        )
    return classes


def _check_training_counts(classes: tuple[str, ...], train: list[Item]) -> None:
    counts = [0] * len(classes)
    for item in train:
        counts[item.label] += 1
    for name, count in zip(classes, counts):
        if count < 2:
            raise DatasetError(
                f"The class `{name}` leaves only {count} image(s) for training, but each class needs at least "
                f"2 to learn from, plus some to check the model. Add more images of `{name}`."
            )


def unpack_zip(
    zip_path: str | Path, work_dir: str | Path | None = None, limits: ZipLimits | None = None, progress: Progress | None = None
) -> Path:
    """Unpacks a zip once into `work_dir/datasets/<content hash>`; the same zip later reuses that folder.

    The folder appears whole (it is unpacked beside it and renamed), under a lock shared by
    threads and processes, and is never written to again.

    Args:
        zip_path: The zip file.
        work_dir: The work folder; default `default_work_dir()`.
        limits: Safety limits; default from `tlcore.limits.current()`.
        progress: Optional callback, see `Progress`.

    Returns:
        The folder holding the unpacked files.

    Raises:
        DatasetError: the file is not a zip.
        UnsafeArchiveError: the zip was rejected for safety.
    """
    zip_path = Path(zip_path)
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir()
    destination = dataset_folder(zip_path, work_dir)
    with dataset_lock(destination):
        return _unpack_locked(zip_path, destination, limits, progress)


def dataset_folder(zip_path: Path, work_dir: Path) -> Path:
    """Where a zip is unpacked: named by its content, so the same zip is stored once.

    Raises:
        DatasetError: the file is missing or not a zip.
    """
    with open_zip(zip_path):
        pass
    with open(zip_path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return Path(work_dir) / "datasets" / digest[:16]


def dataset_lock(folder: Path):
    """The lock every loader of one unpacked dataset holds, in any thread or process.

    Lock files stay (removing one another process may hold is unsafe); they are empty and live
    apart, in `work_dir/locks`.
    """
    from filelock import FileLock

    locks = folder.parent.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"{folder.parent.name}-{folder.name}.lock"))


def _unpack_locked(zip_path: Path, destination: Path, limits: ZipLimits | None, progress: Progress | None) -> Path:
    if destination.is_dir():
        return destination
    from tlcore.limits import current

    on_entry = (lambda done, total: progress("unpacking", done, total)) if progress else None
    extract_zip(zip_path, destination, limits or ZipLimits.from_limits(current()), on_entry)
    for folder, _, files in os.walk(destination):
        for name in files:
            # Read-only from now on: nothing may rewrite what other loaders are reading.
            os.chmod(os.path.join(folder, name), 0o444)
    return destination
