"""Checking every image of a dataset, and making copies of those TensorFlow would read differently.

Every file is decoded once (the results are kept for the next load), which finds unreadable
files, measures each picture and names it by its bytes. Files TensorFlow would decode to other
pixels than Pillow (TIFF, WebP, CMYK, 16-bit, rotated photos, ...) get an 8-bit PNG copy in the
work folder, named by the original's bytes: made once, shared by every dataset holding the
same picture, and never written into the dataset folder itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import PIL

from tlcore import images
from tlcore.layout import Parts

# Bump when `images.normalise_image` changes, so converted copies are made again.
CONVERSION_VERSION = 1
# Decoding threads: a fixed few, so a bigger server does not decode more huge images at once.
DECODE_THREADS = 4

T = TypeVar("T")
R = TypeVar("R")

Progress = Callable[[str, int, int], None]
"""Called as `progress(stage, done, total)`, stage being "unpacking", "checking" or "converting"."""


@dataclass(frozen=True)
class CheckedFile:
    """One file of a dataset after checking.

    Attributes:
        parts: Its path below the dataset folder.
        check: What decoding it found.
        path: The file TensorFlow should read (the original, or its PNG copy); None when unusable.
        problem: Why it is unusable, or None.
        digest: Names the pixels TensorFlow reads: the original's SHA-256, or for a converted
            copy a name derived from it.
    """

    parts: Parts
    check: images.ImageCheck
    path: Path | None
    problem: str | None
    digest: str | None

    @property
    def converted(self) -> bool:
        return self.path is not None and self.check.needs_conversion


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
    with ThreadPoolExecutor(max_workers=min(DECODE_THREADS, max(1, len(items)))) as pool:
        for done, result in enumerate(pool.map(work, items), start=1):
            results.append(result)
            if progress is not None and (done % 64 == 0 or done == len(items)):
                progress(done, len(items))
    return results


def check_files(top: Path, files: Sequence[Parts], work_dir: Path, progress: Progress | None = None) -> list[CheckedFile]:
    """Checks every file (reusing results of files unchanged since an earlier load) and converts those that need it.

    Args:
        top: The dataset folder.
        files: The image files to check, as parts below `top`.
        work_dir: The work folder: kept results under `checks/`, copies under `converted/`.
        progress: See `Progress`.

    Returns:
        One `CheckedFile` per file, in the same order.
    """
    checks = _check_all(top, list(files), ImageChecks(work_dir / "checks", top), progress)
    to_convert = [i for i, check in enumerate(checks) if check.problem is None and check.needs_conversion]
    report = (lambda done, total: progress("converting", done, total)) if progress else None
    converted = map_in_threads(lambda i: _convert(top.joinpath(*files[i]), checks[i], work_dir / "converted"), to_convert, report)
    copies = dict(zip(to_convert, converted))
    results = []
    for index, (parts, check) in enumerate(zip(files, checks)):
        if check.problem is not None:
            results.append(CheckedFile(parts, check, None, check.problem, check.digest))
        elif index in copies:
            copy = copies[index]
            if isinstance(copy, Path):
                results.append(CheckedFile(parts, check, copy, None, converted_digest(check.digest)))
            else:
                results.append(CheckedFile(parts, check, None, copy, check.digest))
        else:
            results.append(CheckedFile(parts, check, top.joinpath(*parts), None, check.digest))
    return results


def converted_digest(original: str) -> str:
    """The name of a converted copy's pixels: decided by the original's bytes and the converter."""
    return hashlib.sha256(f"converted/{CONVERSION_VERSION}/{PIL.__version__}/{original}".encode()).hexdigest()


def _convert(source: Path, check: images.ImageCheck, folder: Path) -> Path | str:
    """Writes the PNG copy of one image once; returns its path, or the reason it failed."""
    target = folder / check.digest[:2] / f"{check.digest}-{CONVERSION_VERSION}.png"
    if target.is_file():
        try:
            os.utime(target)  # in use again: the work folder's budget removes the least recently used first
            return target
        except OSError:
            pass  # removed meanwhile: made again below
    target.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own for each writer: several loads of the same picture may convert it at once.
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        images.normalise_image(source, partial)
        os.replace(partial, target)
    except (images.ImageError, OSError):
        partial.unlink(missing_ok=True)
        return images.CORRUPT
    return target


def _check_all(top: Path, files: list[Parts], kept: "ImageChecks", progress: Progress | None) -> list[images.ImageCheck]:
    known = kept.load()
    stamps = [kept.stamp(top, parts) for parts in files]
    missing = [i for i, stamp in enumerate(stamps) if stamp is None or stamp not in known]
    unknown = set(missing)
    known_pixels = sum(known[stamps[i]].width * known[stamps[i]].height for i in range(len(files)) if i not in unknown)
    _check_pixel_budget(known_pixels + sum(map_in_threads(lambda i: _header_pixels(top.joinpath(*files[i])), missing)))
    hits = len(files) - len(missing)
    report = (lambda done, total: progress("checking", hits + done, len(files))) if progress else None
    found = map_in_threads(lambda i: images.check_image(top.joinpath(*files[i])), missing, report)
    if progress and not missing:
        progress("checking", len(files), len(files))
    fresh = dict(zip(missing, found))
    results = [fresh[i] if i in fresh else known[stamps[i]] for i in range(len(files))]
    if missing and len(files) >= ImageChecks.MIN_IMAGES:
        kept.save({stamp: check for stamp, check in zip(stamps, results) if stamp is not None})
    return results


def _header_pixels(path: Path) -> int:
    """An image's pixel count from its header alone (0 for what is no image), without decoding it."""
    from PIL import Image

    try:
        with Image.open(path, formats=images.FORMATS) as image:
            return image.width * image.height
    except Exception:  # noqa: BLE001  (a file that is no image costs nothing; the check names it)
        return 0


def _check_pixel_budget(pixels: int) -> None:
    from tlcore.errors import DatasetError
    from tlcore.limits import current

    budget = current().max_dataset_pixels
    if pixels > budget:
        raise DatasetError(
            f"The dataset holds {pixels / 1e6:,.0f} million pixels in all, more than the {budget / 1e6:,.0f} million "
            "this server accepts. Use fewer or smaller pictures: the network sees them at a few hundred pixels "
            "a side anyway."
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

    VERSION = 2
    # Fewer images are checked in a blink; their results are not worth a file.
    MIN_IMAGES = 100

    def __init__(self, folder: Path, top: Path):
        self.path = Path(folder) / (hashlib.sha256(str(Path(top).resolve()).encode()).hexdigest()[:16] + ".json")

    @staticmethod
    def stamp(top: Path, parts: Parts) -> str | None:
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
                stamp: [c.problem, c.width, c.height, c.needs_conversion, c.digest, c.phash, c.colour]
                for stamp, c in checks.items()
            },
        }
        partial = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(data))
            os.replace(partial, self.path)
        except OSError:
            partial.unlink(missing_ok=True)
