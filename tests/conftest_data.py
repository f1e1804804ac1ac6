"""Helpers for the dataset tests: real images in unusual encodings, zips, and folder snapshots."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# EXIF orientation 6: the camera was turned, so the stored pixels must be rotated 90° clockwise.
ROTATE_CLOCKWISE = 6


def real_images(folder: Path, count: int, pattern: str = "*") -> list[Path]:
    """The first `count` image files of a real asset folder, in a stable order."""
    files = sorted(path for path in folder.glob(pattern) if path.suffix.lower() in (".png", ".jpg"))
    assert len(files) >= count, f"{folder} holds only {len(files)} images"
    return files[:count]


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    """The bytes of `image` saved in `image_format`."""
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def sixteen_bit_png(photo: Path) -> tuple[bytes, np.ndarray]:
    """A 16-bit greyscale PNG of a real photo, and the 8-bit greyscale pixels it should read back as."""
    grey = np.asarray(Image.open(photo).convert("L"))
    return encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"), grey


def rotated_jpeg(photo: Path) -> tuple[bytes, Image.Image]:
    """A non-square JPEG tagged as taken with the camera turned, and the stored (unrotated) image."""
    image = Image.open(photo).convert("RGB")
    stored = image.crop((0, 0, image.width, image.height // 2))
    exif = Image.Exif()
    exif[0x0112] = ROTATE_CLOCKWISE
    return encode(stored, "JPEG", quality=95, exif=exif), stored


def animated_gif(photo: Path) -> tuple[bytes, Image.Image]:
    """A two-frame GIF whose frames differ, and its first frame as Pillow draws it."""
    first = Image.open(photo).convert("RGB").quantize(colors=64)
    second = first.transpose(Image.Transpose.ROTATE_90)
    data = encode(first, "GIF", save_all=True, append_images=[second])
    return data, Image.open(io.BytesIO(data)).convert("RGB")


def unusual_encodings(photo: Path, render: Path) -> dict[str, bytes]:
    """One file per encoding TensorFlow decodes differently from Pillow, or not at all."""
    rgb = Image.open(photo).convert("RGB")
    return {
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG", quality=95),
        "grey16.png": sixteen_bit_png(photo)[0],
        "rotated.jpg": rotated_jpeg(photo)[0],
        "lossless.webp": encode(rgb, "WEBP", lossless=True),
        "photo.tif": encode(rgb, "TIFF"),
        "animated.gif": animated_gif(photo)[0],
        "render_rgba.png": render.read_bytes(),
    }


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    """Writes `{relative path: bytes}` below `root`, creating folders as needed."""
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def class_files(classes: dict[str, list[Path]], prefix: str = "") -> dict[str, bytes]:
    """`{prefix + class/file name: bytes}` for real image files grouped by class."""
    return {f"{prefix}{name}/{path.name}": path.read_bytes() for name, paths in classes.items() for path in paths}


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    """Writes a zip holding `{member name: bytes}`; names are stored exactly as given."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            archive.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def snapshot(folder: Path) -> dict[str, int]:
    """Every file and folder below `folder` with its size (folders as -1), to compare before and after."""
    if not folder.exists():
        return {}
    return {
        path.relative_to(folder).as_posix(): (path.stat().st_size if path.is_file() else -1)
        for path in folder.rglob("*")
    }


def file_hashes(folder: Path) -> dict[str, str]:
    """Every file below `folder` with a hash of its bytes, to prove files are unchanged or identical."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def tensorflow_pixels(path: Path) -> np.ndarray:
    """The pixels the training pipeline sees."""
    from tlcore.images import decode_tensor

    return decode_tensor(str(path)).numpy()


def assert_same_pixels(path: Path, expected: np.ndarray) -> None:
    """Asserts TensorFlow reads `path` exactly as `expected`."""
    actual = tensorflow_pixels(path)
    assert actual.shape == expected.shape, f"{path.name}: {actual.shape} != {expected.shape}"
    difference = np.abs(actual.astype(np.int16) - expected.astype(np.int16)).mean()
    assert difference == 0, f"{path.name}: mean difference {difference}"


def small_zip(source: Path, per_class: int) -> bytes:
    """A zip of the first `per_class` images of each class folder of `source`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for folder in sorted(p for p in source.iterdir() if p.is_dir()):
            for image in sorted(folder.iterdir())[:per_class]:
                archive.write(image, f"{folder.name}/{image.name}")
    return buffer.getvalue()
