"""Built-in sample datasets: procedurally drawn shapes, and the classic cats-and-dogs download."""

from __future__ import annotations

import colorsys
import json
import math
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from tlcore.archive import staged_folder
from tlcore.dataset import METADATA_FILE, default_work_dir, unpack_zip
from tlcore.errors import DatasetError

SHAPES = ("circle", "square", "star", "triangle")
SHAPES_VERSION = 1
TRAIN_FRACTION = 0.8
# Shapes are drawn this many times larger and scaled down, which smooths their edges.
_SUPERSAMPLE = 2

CATS_AND_DOGS_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
CATS_AND_DOGS_FILE = "cats_and_dogs_filtered.zip"


@dataclass(frozen=True)
class Sample:
    """A dataset the app can offer without an upload.

    Attributes:
        name: Stable key, used on the command line and in saved runs.
        display_name: Name shown to users.
        description: One or two sentences shown to users.
        needs_download: True when preparing it needs the internet.
        prepare: Makes the dataset available under a work folder and returns its folder.
    """

    name: str
    display_name: str
    description: str
    needs_download: bool
    prepare: Callable[[Path], Path]


def make_shapes_dataset(dest: str | Path, *, seed: int = 0, per_class: int = 120, size: int = 96) -> Path:
    """Draws a small dataset of coloured shapes on noisy backgrounds, split into train and validation.

    Each image has a random colour, size, position and rotation; the same arguments always give
    the same files, and a folder already holding that dataset is reused as it is.

    Args:
        dest: The folder to create (or reuse).
        seed: Seed of every random choice.
        per_class: Images per shape; 80 % go to `train/`, the rest to `validation/`.
        size: Width and height of the images, in pixels.

    Returns:
        `dest`, holding `train/<shape>/` and `validation/<shape>/` folders of PNG images.

    Raises:
        DatasetError: `dest` is a non-empty folder that is not a shapes dataset, or the arguments are too small.
    """
    dest = Path(dest)
    if per_class < 5 or size < 16:
        raise DatasetError(
            f"The shapes sample needs at least 5 images per class and 16 pixels per side (got {per_class} and {size})."
        )
    settings = {"sample": "shapes", "version": SHAPES_VERSION, "seed": seed, "per_class": per_class, "size": size}
    marker = dest / METADATA_FILE
    if marker.is_file() and _read_json(marker) == settings:
        return dest
    if dest.exists() and not marker.is_file() and any(dest.iterdir()):
        raise DatasetError(f"The folder `{dest}` already holds other files, so the shapes sample was not written there.")
    with staged_folder(dest) as staging:
        n_train = int(round(per_class * TRAIN_FRACTION))
        for class_index, shape in enumerate(SHAPES):
            for split in ("train", "validation"):
                (staging / split / shape).mkdir(parents=True)
            for index in range(per_class):
                split = "train" if index < n_train else "validation"
                image = draw_shape(shape, size, np.random.default_rng([seed, class_index, index]))
                # Light compression: noisy backgrounds barely shrink, and saving dominates the time.
                image.save(staging / split / shape / f"{shape}_{index:04d}.png", compress_level=1)
        (staging / METADATA_FILE).write_text(json.dumps(settings))
        # A stale dataset of ours (other settings) is replaced; only a complete one ever appears at `dest`.
        if dest.exists():
            shutil.rmtree(dest)
    return dest


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draws one shape with a random colour, size, position and rotation on a noisy background.

    Args:
        shape: One of `SHAPES`.
        size: Width and height in pixels.
        rng: The source of every random choice.

    Returns:
        An RGB image.
    """
    if shape not in SHAPES:
        raise ValueError(f"Unknown shape `{shape}`. Choose one of: {', '.join(SHAPES)}")
    dark_background = rng.random() < 0.5
    base = rng.integers(0, 70, 3) if dark_background else rng.integers(185, 256, 3)
    noise = rng.normal(0.0, 18.0, (size, size, 3))
    background = np.clip(base + noise, 0, 255).astype(np.uint8)
    canvas = Image.fromarray(background).resize((size * _SUPERSAMPLE,) * 2, Image.Resampling.NEAREST)
    # Strong contrast with the background keeps the shape easy to see for an ImageNet backbone.
    value = rng.uniform(0.85, 1.0) if dark_background else rng.uniform(0.1, 0.35)
    red, green, blue = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.5, 1.0), value)
    colour = (int(red * 255), int(green * 255), int(blue * 255))

    full = size * _SUPERSAMPLE
    radius = rng.uniform(0.2, 0.38) * full
    centre_x, centre_y = rng.uniform(radius, full - radius, 2)
    rotation = rng.uniform(0.0, 2.0 * math.pi)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse((centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius), fill=colour)
    else:
        draw.polygon(_outline(shape, centre_x, centre_y, radius, rotation), fill=colour)
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def _outline(shape: str, centre_x: float, centre_y: float, radius: float, rotation: float) -> list[tuple[float, float]]:
    if shape == "star":
        # Points alternate between the outer and the inner radius.
        radii = [radius if k % 2 == 0 else radius * 0.45 for k in range(10)]
    else:
        radii = [radius] * (3 if shape == "triangle" else 4)
    step = 2.0 * math.pi / len(radii)
    return [
        (centre_x + r * math.cos(rotation + k * step), centre_y + r * math.sin(rotation + k * step))
        for k, r in enumerate(radii)
    ]


def _prepare_shapes(work_dir: Path) -> Path:
    return make_shapes_dataset(work_dir / "samples" / "shapes")


def _prepare_cats_and_dogs(work_dir: Path) -> Path:
    archive = download(CATS_AND_DOGS_URL, CATS_AND_DOGS_FILE, work_dir / "downloads", "The cats and dogs sample")
    folder = unpack_zip(archive, work_dir)
    inner = folder / "cats_and_dogs_filtered"
    return inner if inner.is_dir() else folder


def download(url: str, file_name: str, cache_dir: Path, what: str) -> Path:
    """Downloads a file once into `cache_dir` with Keras' downloader, or explains why it cannot.

    Keras' own `extract=True` is not used: it unpacks again on every call and does not apply
    our zip safety checks, so the caller unpacks with `unpack_zip`.

    Args:
        url: Where the file is.
        file_name: Its name in the cache.
        cache_dir: The cache folder (Keras adds a `datasets/` sub-folder).
        what: How to name the file to the user, e.g. "The cats and dogs sample".

    Returns:
        The downloaded file.

    Raises:
        DatasetError: the server is offline or the download failed.
    """
    cached = cache_dir / "datasets" / file_name
    if cached.is_file():
        return cached
    offline = DatasetError(
        f"{what} could not be downloaded: this server cannot reach the internet. Connect it to the internet, "
        "or upload a zip of your own images instead."
    )
    host = url.split("/")[2]
    try:
        # Keras' downloader has no timeout; a quick connection test fails fast on an offline server.
        socket.create_connection((host, 443), timeout=10).close()
    except OSError:
        raise offline from None
    import keras

    try:
        return Path(keras.utils.get_file(file_name, origin=url, cache_dir=str(cache_dir)))
    except Exception as error:
        raise offline from error


SAMPLES: dict[str, Sample] = {
    "shapes": Sample(
        name="shapes",
        display_name="Shapes",
        description="Circles, squares, stars and triangles drawn on the spot in random colours. "
        "Small, instant and available offline.",
        needs_download=False,
        prepare=_prepare_shapes,
    ),
    "cats_and_dogs": Sample(
        name="cats_and_dogs",
        display_name="Cats and dogs",
        description="3,000 photos of cats and dogs from Google's machine learning course, already split "
        "into training and validation. Needs the internet the first time (about 70 MB).",
        needs_download=True,
        prepare=_prepare_cats_and_dogs,
    ),
}


def prepare_sample(name: str, work_dir: str | Path | None = None) -> Path:
    """Makes a built-in sample available on disk and returns its dataset folder.

    Args:
        name: A key of `SAMPLES`.
        work_dir: The work folder; default `default_work_dir()`.

    Returns:
        A folder `load_dataset` can read.

    Raises:
        DatasetError: the name is unknown, or the sample could not be downloaded.
    """
    if name not in SAMPLES:
        raise DatasetError(f"There is no sample called `{name}`. Choose one of: {', '.join(SAMPLES)}.")
    return SAMPLES[name].prepare(Path(work_dir) if work_dir is not None else default_work_dir())
