"""Finding a dataset's classes and images in a folder or zip, checking them, and splitting them for training."""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from tlcore import images
from tlcore.archive import ZipLimits, extract_zip, open_zip
from tlcore.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation", "test": "test"}
# A file tlcore itself keeps in a dataset folder (e.g. a sample's completion marker); never reported.
METADATA_FILE = ".tlcore.json"
MAX_WRAPPER_FOLDERS = 2

GOOD_LAYOUT = (
    "A dataset is one folder per class with the images inside, for example `cats/1.jpg` and `dogs/1.jpg`, "
    "optionally inside `train/` and `validation/` folders."
)

_JUNK_FILES = {
    ".ds_store": "macOS folder settings",
    "thumbs.db": "Windows thumbnail cache",
    "desktop.ini": "Windows folder settings",
}
_JUNK_FOLDERS = {"__macosx": "macOS metadata folder"}

T = TypeVar("T")
R = TypeVar("R")

Progress = Callable[[str, int, int], None]
"""Called as `progress(stage, done, total)`, stage being "unpacking", "checking" or "converting"."""


@dataclass(frozen=True)
class Skipped:
    """A file left out of the dataset, and why, in words a user understands."""

    path: str
    reason: str


@dataclass(frozen=True)
class Dataset:
    """A dataset ready for training: class names and labelled image files per split.

    Attributes:
        root: Folder the dataset was read from (for a zip, the folder it was unpacked into).
        classes: Class names, sorted; a label is an index into this tuple.
        train: `(path, label)` pairs used to fit the model.
        validation: `(path, label)` pairs used to measure it; never augmented.
        test: `(path, label)` pairs of an optional held-out split.
        presplit: True when the folder came split into train and validation.
        skipped: Files left out, with the reason; paths are relative to `root`.
        warnings: Problems that do not stop training, in plain sentences.
        converted: `(png_path, original)` for each PNG copy made for TensorFlow this time,
            the original given relative to `root`.
    """

    root: Path
    classes: tuple[str, ...]
    train: tuple[tuple[Path, int], ...]
    validation: tuple[tuple[Path, int], ...]
    test: tuple[tuple[Path, int], ...] = ()
    presplit: bool = False
    skipped: tuple[Skipped, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)
    converted: tuple[tuple[Path, str], ...] = field(default_factory=tuple)

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

    @cached_property
    def _originals(self) -> dict[Path, str]:
        return dict(self.converted)

    def display_path(self, path: Path) -> str:
        """How to name an image to the user: its path in the dataset, even for a converted copy."""
        original = self._originals.get(Path(path))
        if original is not None:
            return original
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return Path(path).name


def default_work_dir() -> Path:
    """The folder where unpacked zips, converted images and samples are kept.

    Returns:
        `$TLCORE_HOME` when set, else `~/.tlcore`.
    """
    return Path(os.environ.get("TLCORE_HOME") or Path.home() / ".tlcore")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def stratified_split(
    files_by_class: dict[str, list[Path]], classes: tuple[str, ...], val_split: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Splits each class separately so both splits keep the class proportions.

    Every class keeps at least one image in each split when it has two or more.
    """
    _check_val_split(val_split)
    rng = random.Random(seed)
    train, validation = [], []
    for label, name in enumerate(classes):
        files = sorted(files_by_class.get(name, []))
        rng.shuffle(files)
        n_val = int(round(len(files) * val_split))
        if len(files) >= 2:
            n_val = min(max(n_val, 1), len(files) - 1)
        validation += [(p, label) for p in sorted(files[:n_val])]
        train += [(p, label) for p in sorted(files[n_val:])]
    return train, validation


def _check_val_split(val_split: float) -> None:
    if not 0.0 < val_split < 1.0:
        raise DatasetError(
            f"The validation fraction must be between 0 and 1 (for example 0.2), got {val_split}."
        )


def load_folder(root: str | Path, val_split: float = 0.2, seed: int = 0) -> Dataset:
    """Reads a dataset folder; kept for older callers, see `load_dataset`."""
    return load_dataset(root, val_split=val_split, seed=seed)


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

    Accepted layouts: one folder per class; the same inside one wrapper folder; or `train/` and
    `validation/` (also `val/`, `valid/`, any case) with an optional `test/`, each holding the
    class folders. Junk (macOS and Windows metadata, hidden and non-image files) and unreadable
    images are left out and listed in `skipped`. Images TensorFlow would decode differently
    (TIFF, WebP, CMYK, 16-bit, rotated photos, ...) are replaced by PNG copies; a user's folder is
    never written to.

    Args:
        source: A dataset folder or a `.zip` file.
        val_split: Fraction of each class held out for validation when there is no validation folder.
        seed: Seed of that split, so the same data always splits the same way.
        work_dir: Where zips are unpacked and converted copies kept; default `default_work_dir()`.
        limits: Safety limits for zips; default `ZipLimits()`.
        progress: Optional callback, see `Progress`.

    Returns:
        The dataset, with paths that `tf.io.decode_image` reads like `images.load_rgb`.

    Raises:
        DatasetError: the source is missing, not a zip, empty, or not laid out as a dataset.
        UnsafeArchiveError: the zip was rejected for safety.
    """
    _check_val_split(val_split)
    source = Path(source)
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir()
    if source.is_dir():
        top, converted_dir = source, work_dir / "converted"
    elif source.is_file():
        top, converted_dir = unpack_zip(source, work_dir, limits, progress), None
    else:
        raise DatasetError(f"`{source}` does not exist. Choose a dataset folder or a .zip file.")
    checks = ImageChecks(work_dir / "checks", top)
    return _Scan(top, source.name, converted_dir, progress, checks).build(val_split, seed)


def unpack_zip(
    zip_path: str | Path, work_dir: str | Path | None = None, limits: ZipLimits | None = None, progress: Progress | None = None
) -> Path:
    """Unpacks a zip once into `work_dir/datasets/<content hash>`; the same zip later reuses that folder.

    Args:
        zip_path: The zip file.
        work_dir: The work folder; default `default_work_dir()`.
        limits: Safety limits; default `ZipLimits()`.
        progress: Optional callback, see `Progress`.

    Returns:
        The folder holding the unpacked files.

    Raises:
        DatasetError: the file is not a zip.
        UnsafeArchiveError: the zip was rejected for safety.
    """
    zip_path = Path(zip_path)
    work_dir = Path(work_dir) if work_dir is not None else default_work_dir()
    with open_zip(zip_path):
        pass
    with open(zip_path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    destination = work_dir / "datasets" / digest[:16]
    if destination.is_dir():
        return destination
    on_entry = (lambda done, total: progress("unpacking", done, total)) if progress else None
    try:
        return extract_zip(zip_path, destination, limits or ZipLimits(), on_entry)
    except OSError:
        # Another request unpacked the same zip meanwhile; its folder is complete (renamed at the end).
        if destination.is_dir():
            return destination
        raise


def map_in_threads(work: Callable[[T], R], items: Sequence[T], progress: Callable[[int, int], None] | None = None) -> list[R]:
    """Applies `work` to every item on a few threads, keeping the order.

    Pillow, hashing and file reads release the GIL, so threads give a real speed-up on image files.

    Args:
        work: The function to apply.
        items: Its inputs.
        progress: Called as `progress(done, total)` every few dozen items and at the end.

    Returns:
        The results, in the order of `items`.
    """
    results = []
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 2) * 2)) as pool:
        for done, result in enumerate(pool.map(work, items), start=1):
            results.append(result)
            if progress is not None and (done % 64 == 0 or done == len(items)):
                progress(done, len(items))
    return results


def _junk_reason(name: str, is_dir: bool) -> str | None:
    lower = name.lower()
    if is_dir:
        if lower in _JUNK_FOLDERS:
            return _JUNK_FOLDERS[lower]
        return "hidden folder" if name.startswith(".") else None
    if lower in _JUNK_FILES:
        return _JUNK_FILES[lower]
    if name.startswith("._"):
        return "macOS metadata file"
    return "hidden file" if name.startswith(".") else None


class _Scan:
    """One reading of a dataset folder: the files found, then the layout, checks and conversions."""

    def __init__(
        self, top: Path, name: str, converted_dir: Path | None, progress: Progress | None, checks: "ImageChecks | None" = None
    ):
        self.top = top
        self.name = name
        self.converted_dir = converted_dir
        self.progress = progress
        self.checks = checks
        self.skipped: list[Skipped] = []
        self.warnings: list[str] = []
        self.candidates: list[tuple[str, ...]] = []
        self.converted: list[tuple[Path, str]] = []
        self.any_file = False
        self._walk()

    def _skip(self, parts: Iterable[str], reason: str) -> None:
        self.skipped.append(Skipped("/".join(parts), reason))

    def _walk(self) -> None:
        for folder, dirs, files in os.walk(self.top):
            base = Path(folder).relative_to(self.top).parts
            for name in sorted(dirs):
                reason = _junk_reason(name, is_dir=True)
                if reason:
                    self.any_file = True
                    self._skip(base + (name,), reason)
                    dirs.remove(name)
            dirs.sort()
            for name in sorted(files):
                self.any_file = True
                if not base and name == METADATA_FILE:
                    continue
                reason = _junk_reason(name, is_dir=False)
                if reason is None and Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    reason = "not an image file"
                if reason:
                    self._skip(base + (name,), reason)
                else:
                    self.candidates.append(base + (name,))

    def build(self, val_split: float, seed: int) -> Dataset:
        if not self.any_file:
            raise DatasetError(f"The dataset `{self.name}` is empty. {GOOD_LAYOUT}")
        if not self.candidates:
            raise DatasetError(f"The dataset `{self.name}` holds no images (JPEG, PNG, ...). {GOOD_LAYOUT}")
        prefix = self._unwrap()
        splits = self._split_folders(prefix)
        by_split = {split: self._class_files(prefixes) for split, prefixes in splits.items()}
        by_split = self._checked(by_split)
        if set(by_split) == {"all"}:
            classes = self._classes(by_split["all"])
            train, validation = stratified_split(by_split["all"], classes, val_split, seed)
            test, presplit = [], False
        else:
            classes = self._classes(by_split.get("train", {}), by_split)
            train = self._labelled(by_split["train"], classes)
            if "validation" in by_split:
                validation, presplit = self._labelled(by_split["validation"], classes), True
            else:
                train, validation = stratified_split(by_split["train"], classes, val_split, seed)
                presplit = False
                self.warnings.append(
                    f"There is no validation folder, so {val_split:.0%} of each class's training images "
                    "are held out to measure the model."
                )
            test = self._labelled(by_split.get("test", {}), classes)
        self._check_training_counts(classes, train)
        return Dataset(
            root=self.top,
            classes=classes,
            train=tuple(train),
            validation=tuple(validation),
            test=tuple(test),
            presplit=presplit,
            skipped=tuple(sorted(self.skipped, key=lambda item: item.path)),
            warnings=tuple(self.warnings),
            converted=tuple(self.converted),
        )

    def _under(self, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        return [parts for parts in self.candidates if parts[: len(prefix)] == prefix]

    def _children(self, prefix: tuple[str, ...]) -> tuple[set[str], list[tuple[str, ...]]]:
        """Sub-folders of `prefix` that hold images, and the images directly inside it."""
        depth = len(prefix)
        below = self._under(prefix)
        folders = {parts[depth] for parts in below if len(parts) > depth + 1}
        direct = [parts for parts in below if len(parts) == depth + 1]
        return folders, direct

    def _unwrap(self) -> tuple[str, ...]:
        """Steps into wrapper folders such as `My Pets/` that hold the whole dataset."""
        prefix: tuple[str, ...] = ()
        for _ in range(MAX_WRAPPER_FOLDERS):
            folders, direct = self._children(prefix)
            if direct or len(folders) != 1:
                break
            (only,) = folders
            if only.lower() in SPLIT_NAMES or not self._children(prefix + (only,))[0]:
                break
            prefix += (only,)
        return prefix

    def _split_folders(self, prefix: tuple[str, ...]) -> dict[str, list[tuple[str, ...]]]:
        """The folders holding each split's class folders; split "all" when the data is not split."""
        folders, direct = self._children(prefix)
        splits: dict[str, list[tuple[str, ...]]] = defaultdict(list)
        for name in sorted(folders):
            if name.lower() in SPLIT_NAMES:
                splits[SPLIT_NAMES[name.lower()]].append(prefix + (name,))
        if "train" not in splits:
            if splits.get("validation"):
                raise DatasetError(
                    f"The dataset has a `{splits['validation'][0][-1]}` folder but no `train` folder. {GOOD_LAYOUT}"
                )
            return {"all": [prefix]}
        for parts in direct:
            self._skip(parts, "not inside a class folder")
        for name in sorted(folders):
            if name.lower() not in SPLIT_NAMES:
                self.warnings.append(f"The folder `{name}` next to `train` was ignored.")
                for parts in self._under(prefix + (name,)):
                    self._skip(parts, "outside the train and validation folders")
        return dict(splits)

    def _class_files(self, prefixes: list[tuple[str, ...]]) -> dict[str, list[tuple[str, ...]]]:
        """Image files of each class folder; images in sub-folders of a class belong to that class."""
        files: dict[str, list[tuple[str, ...]]] = defaultdict(list)
        nested_only = True
        for prefix in prefixes:
            folders, direct = self._children(prefix)
            for parts in direct:
                self._skip(parts, "not inside a class folder")
            for name in sorted(folders):
                class_prefix = prefix + (name,)
                found = self._under(class_prefix)
                nested_only &= all(len(parts) > len(class_prefix) + 1 for parts in found)
                files[name] += found
        if not files:
            raise DatasetError(
                f"The images in `{'/'.join(prefixes[0]) or self.name}` are not inside class folders. {GOOD_LAYOUT}"
            )
        if nested_only:
            where = "/".join(prefixes[0]) or self.name
            raise DatasetError(
                f"The class folders in `{where}` hold no images themselves, only more folders: the images "
                f"are nested too deep. {GOOD_LAYOUT}"
            )
        return dict(files)

    def _checked(
        self, by_split: dict[str, dict[str, list[tuple[str, ...]]]]
    ) -> dict[str, dict[str, list[Path]]]:
        """Decodes every image, leaves out unreadable ones and swaps in converted copies."""
        every = [parts for per_class in by_split.values() for files in per_class.values() for parts in files]
        checks = self._check_all(every)
        usable: dict[tuple[str, ...], Path] = {}
        to_convert = []
        for parts, check in zip(every, checks):
            if check.problem:
                self._skip(parts, check.problem)
            elif check.needs_conversion:
                to_convert.append(parts)
            else:
                usable[parts] = self.top.joinpath(*parts)
        for parts, converted in zip(to_convert, self._parallel("converting", self._convert, to_convert)):
            if isinstance(converted, Path):
                usable[parts] = converted
                self.converted.append((converted, "/".join(parts)))
            else:
                self._skip(parts, converted)
        return {
            split: {name: [usable[parts] for parts in files if parts in usable] for name, files in per_class.items()}
            for split, per_class in by_split.items()
        }

    def _check_all(self, every: list[tuple[str, ...]]) -> list[images.ImageCheck]:
        """Checks every image, reusing the results for files unchanged since an earlier load."""
        if self.checks is None:
            return self._parallel("checking", lambda parts: images.check_image(self.top.joinpath(*parts)), every)
        known = self.checks.load()
        stamps = [self.checks.stamp(self.top, parts) for parts in every]
        missing = [i for i, stamp in enumerate(stamps) if stamp is None or stamp not in known]
        hits = len(every) - len(missing)
        report = (lambda done, total: self.progress("checking", hits + done, len(every))) if self.progress else None
        found = map_in_threads(lambda i: images.check_image(self.top.joinpath(*every[i])), missing, report)
        if self.progress and not missing:
            self.progress("checking", len(every), len(every))
        fresh = dict(zip(missing, found))
        results = [fresh[i] if i in fresh else known[stamps[i]] for i in range(len(every))]
        if missing and len(every) >= ImageChecks.MIN_IMAGES:
            self.checks.save({stamp: check for stamp, check in zip(stamps, results) if stamp is not None})
        return results

    def _parallel(self, stage: str, work: Callable, items: list) -> list:
        report = (lambda done, total: self.progress(stage, done, total)) if self.progress else None
        return map_in_threads(work, items, report)

    def _convert(self, parts: tuple[str, ...]) -> Path | str:
        """Writes the PNG copy of one image; returns its path, or the reason it failed."""
        source = self.top.joinpath(*parts)
        if self.converted_dir is None:
            # An unpacked zip is our own copy, so the converted image replaces the original in place.
            # `photo.tif` becomes `photo.tif.png`: a name only that file can claim, which stays safe
            # while other threads convert `photo.webp` next to it.
            target = source if source.suffix.lower() == ".png" else source.with_name(source.name + ".png")
            if target != source and target.exists():
                target = source.with_name(source.name + ".converted.png")
        else:
            info = source.stat()
            key = f"{source.resolve()}|{info.st_size}|{info.st_mtime_ns}".encode()
            target = self.converted_dir / hashlib.sha256(key).hexdigest()[:16] / (source.stem + ".png")
            if target.is_file():
                return target
            target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            images.normalise_image(source, partial)
            os.replace(partial, target)
        except images.ImageError:
            partial.unlink(missing_ok=True)
            return images.CORRUPT
        if self.converted_dir is None and target != source:
            source.unlink()
        return target

    def _classes(
        self, train_files: dict[str, list[Path]], by_split: dict[str, dict[str, list[Path]]] | None = None
    ) -> tuple[str, ...]:
        for name, files in train_files.items():
            if not files:
                self.warnings.append(f"The class folder `{name}` has no usable images and was left out.")
        classes = tuple(sorted(name for name, files in train_files.items() if files))
        for split, per_class in (by_split or {}).items():
            for name, files in per_class.items():
                if files and name not in classes:
                    raise DatasetError(
                        f"The class `{name}` has images in `{split}` but none for training. "
                        f"Add its images to the `train` folder too. {GOOD_LAYOUT}"
                    )
            if split in ("validation", "test"):
                for name in classes:
                    if not per_class.get(name):
                        self.warnings.append(
                            f"The class `{name}` has no {split} images, so the model's {split} results "
                            "say nothing about it."
                        )
        if len(classes) < 2:
            if not classes:
                raise DatasetError(f"The dataset `{self.name}` holds no readable images. {GOOD_LAYOUT}")
            raise DatasetError(
                f"The dataset has only one class (`{classes[0]}`), but a classifier needs at least two. "
                f"{GOOD_LAYOUT}"
            )
        return classes

    def _labelled(self, files_by_class: dict[str, list[Path]], classes: tuple[str, ...]) -> list[tuple[Path, int]]:
        return [
            (path, label) for label, name in enumerate(classes) for path in sorted(files_by_class.get(name, []))
        ]

    def _check_training_counts(self, classes: tuple[str, ...], train: list[tuple[Path, int]]) -> None:
        counts = [0] * len(classes)
        for _, label in train:
            counts[label] += 1
        for name, count in zip(classes, counts):
            if count < 2:
                raise DatasetError(
                    f"The class `{name}` leaves only {count} image(s) for training, but each class needs at least "
                    f"2 to learn from, plus some to check the model. Add more images of `{name}`."
                )


class ImageChecks:
    """Results of `images.check_image` for one dataset folder, kept between loads.

    Checking decodes every image, the slowest part of loading a dataset; a file whose size and
    modification time are unchanged is not decoded again. The results live in the work folder,
    never in the user's dataset folder.

    Args:
        folder: Where the results files are kept (one per dataset folder).
        top: The dataset folder.
    """

    VERSION = 1
    # Fewer images are checked in a blink; their results are not worth a file.
    MIN_IMAGES = 100

    def __init__(self, folder: Path, top: Path):
        self.path = Path(folder) / (hashlib.sha256(str(Path(top).resolve()).encode()).hexdigest()[:16] + ".json")

    @staticmethod
    def stamp(top: Path, parts: tuple[str, ...]) -> str | None:
        """Names one file's current content: relative path, size and modification time."""
        try:
            info = top.joinpath(*parts).stat()
        except OSError:
            return None
        return f"{'/'.join(parts)}\t{info.st_size}\t{info.st_mtime_ns}"

    def load(self) -> dict[str, images.ImageCheck]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != self.VERSION:
            return {}
        try:
            return {stamp: images.ImageCheck(*values) for stamp, values in data["checks"].items()}
        except (TypeError, KeyError, AttributeError):
            return {}

    def save(self, checks: dict[str, images.ImageCheck]) -> None:
        """Replaces the kept results with these; a failure to write only costs time later."""
        data = {
            "version": self.VERSION,
            "checks": {
                stamp: [check.problem, check.width, check.height, check.needs_conversion] for stamp, check in checks.items()
            },
        }
        partial = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(data))
            os.replace(partial, self.path)
        except OSError:
            partial.unlink(missing_ok=True)
