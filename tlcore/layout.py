"""Reading a dataset's layout from its file names alone: splits, class folders, junk; no file is opened."""

from __future__ import annotations

import os
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tlcore.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation", "test": "test"}
# A file tlcore itself keeps in a dataset folder (e.g. a sample's completion marker); never reported.
METADATA_FILE = ".tlcore.json"
MAX_WRAPPER_FOLDERS = 2
ALL = "all"
"""The split name of a dataset that came without train and validation folders."""

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

Parts = tuple[str, ...]


@dataclass(frozen=True)
class Skipped:
    """A file left out of the dataset, and why, in words a user understands."""

    path: str
    reason: str


@dataclass(frozen=True)
class ClassFile:
    """One image file of a class folder.

    Attributes:
        parts: Its path below the dataset folder, as parts.
        within: Its path below its class folder (the same picture keeps it when the dataset is
            moved, re-zipped or wrapped in another folder).
    """

    parts: Parts
    within: str

    @property
    def name(self) -> str:
        return "/".join(self.parts)


@dataclass(frozen=True)
class Layout:
    """Where a dataset's images are, by split and class, read from names only.

    Attributes:
        splits: `{split: {class folder: [files]}}`; the split is `"train"`, `"validation"`,
            `"test"`, or `ALL` for a dataset with no split folders.
        skipped: Junk and stray files, with the reason.
        warnings: Layout problems that do not stop training.
        folders: For each split, the folder holding its class folders, relative to the dataset
            folder (`""` for the dataset folder itself).
    """

    splits: dict[str, dict[str, list[ClassFile]]]
    skipped: tuple[Skipped, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)
    folders: dict[str, str] = field(default_factory=dict)

    @property
    def presplit(self) -> bool:
        return ALL not in self.splits

    def files(self) -> list[ClassFile]:
        """Every image file, split by split and class by class."""
        return [file for per_class in self.splits.values() for files in per_class.values() for file in files]


def class_name(folder: str) -> str:
    """A class's name from its folder's: Unicode in its composed form (NFC), so look-alike spellings agree."""
    return unicodedata.normalize("NFC", folder)


def list_files(top: str | Path) -> list[Parts]:
    """Every file below a folder as relative path parts, in a stable order; folders are not listed."""
    top = Path(top)
    found = []
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        base = Path(folder).relative_to(top).parts
        for name in sorted(files):
            if not base and name == METADATA_FILE:
                continue
            found.append(base + (name,))
    return found


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


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def read_layout(files: Iterable[Parts], name: str) -> Layout:
    """Finds the splits and class folders of a dataset from the relative paths of its files.

    Accepted layouts: one folder per class; the same inside one or two wrapper folders; or
    `train/` and `validation/` (also `val/`, `valid/`, any case) with an optional `test/`, each
    holding the class folders. Junk (macOS and Windows metadata, hidden and non-image files) is
    left out and listed in `skipped`.

    Args:
        files: Relative path parts of every file, as `list_files` gives them.
        name: What the user calls the dataset, for messages.

    Returns:
        The layout.

    Raises:
        DatasetError: empty, no images, or not laid out as a dataset.
    """
    return _Reader(list(files), name).read()


class _Reader:
    def __init__(self, files: list[Parts], name: str):
        self.name = name
        self.any_file = bool(files)
        self.skipped: list[Skipped] = []
        self.warnings: list[str] = []
        self.candidates: list[Parts] = []
        junk_folders: set[Parts] = set()
        for parts in files:
            folder = next((parts[: i + 1] for i, part in enumerate(parts[:-1]) if _junk_reason(part, True)), None)
            if folder is not None:
                if folder not in junk_folders:
                    junk_folders.add(folder)
                    self._skip(folder, _junk_reason(folder[-1], True))
                continue
            reason = _junk_reason(parts[-1], is_dir=False)
            if reason is None and not is_image_name(parts[-1]):
                reason = "not an image file"
            if reason:
                self._skip(parts, reason)
            else:
                self.candidates.append(parts)

    def _skip(self, parts: Iterable[str], reason: str) -> None:
        self.skipped.append(Skipped("/".join(parts), reason))

    def read(self) -> Layout:
        if not self.any_file:
            raise DatasetError(f"The dataset `{self.name}` is empty. {GOOD_LAYOUT}")
        if not self.candidates:
            raise DatasetError(f"The dataset `{self.name}` holds no images (JPEG, PNG, ...). {GOOD_LAYOUT}")
        prefix = self._unwrap()
        split_folders = self._split_folders(prefix)
        splits = {split: self._class_files(prefixes) for split, prefixes in split_folders.items()}
        self._warn_about_look_alike_names({name for per_class in splits.values() for name in per_class})
        folders = {split: "/".join(prefixes[0]) for split, prefixes in split_folders.items()}
        return Layout(splits, tuple(sorted(self.skipped, key=lambda item: item.path)), tuple(self.warnings), folders)

    def _warn_about_look_alike_names(self, classes: set[str]) -> None:
        by_letters: dict[str, list[str]] = defaultdict(list)
        for name in sorted(classes):
            by_letters[name.casefold()].append(name)
        for names in by_letters.values():
            if len(names) > 1:
                listed = " and ".join(f"`{name}`" for name in names)
                self.warnings.append(
                    f"The class folders {listed} differ only in capital letters, so they are {len(names)} classes. "
                    "If they hold the same thing, put their images in one folder."
                )

    def _under(self, prefix: Parts) -> list[Parts]:
        return [parts for parts in self.candidates if parts[: len(prefix)] == prefix]

    def _children(self, prefix: Parts) -> tuple[set[str], list[Parts]]:
        """Sub-folders of `prefix` that hold images, and the images directly inside it."""
        depth = len(prefix)
        below = self._under(prefix)
        folders = {parts[depth] for parts in below if len(parts) > depth + 1}
        direct = [parts for parts in below if len(parts) == depth + 1]
        return folders, direct

    def _unwrap(self) -> Parts:
        """Steps into wrapper folders such as `My Pets/` that hold the whole dataset."""
        prefix: Parts = ()
        for _ in range(MAX_WRAPPER_FOLDERS):
            folders, direct = self._children(prefix)
            if direct or len(folders) != 1:
                break
            (only,) = folders
            if only.lower() in SPLIT_NAMES or not self._children(prefix + (only,))[0]:
                break
            prefix += (only,)
        return prefix

    def _split_folders(self, prefix: Parts) -> dict[str, list[Parts]]:
        """The folders holding each split's class folders; split `ALL` when the data is not split."""
        folders, direct = self._children(prefix)
        splits: dict[str, list[Parts]] = defaultdict(list)
        for name in sorted(folders):
            if name.lower() in SPLIT_NAMES:
                splits[SPLIT_NAMES[name.lower()]].append(prefix + (name,))
        if "train" not in splits:
            if splits.get("validation"):
                raise DatasetError(
                    f"The dataset has a `{splits['validation'][0][-1]}` folder but no `train` folder. {GOOD_LAYOUT}"
                )
            return {ALL: [prefix]}
        for parts in direct:
            self._skip(parts, "not inside a class folder")
        for name in sorted(folders):
            if name.lower() not in SPLIT_NAMES:
                self.warnings.append(f"The folder `{name}` next to `train` was ignored.")
                for parts in self._under(prefix + (name,)):
                    self._skip(parts, "outside the train and validation folders")
        return dict(splits)

    def _class_files(self, prefixes: list[Parts]) -> dict[str, list[ClassFile]]:
        """Image files of each class folder; images in sub-folders of a class belong to that class."""
        files: dict[str, list[ClassFile]] = defaultdict(list)
        nested_only = True
        for prefix in prefixes:
            folders, direct = self._children(prefix)
            for parts in direct:
                self._skip(parts, "not inside a class folder")
            for name in sorted(folders):
                class_prefix = prefix + (name,)
                found = self._under(class_prefix)
                nested_only &= all(len(parts) > len(class_prefix) + 1 for parts in found)
                # One way of writing each name: `café` typed on a Mac and on Windows is one class.
                files[class_name(name)] += [ClassFile(parts, "/".join(parts[len(class_prefix):])) for parts in found]
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
