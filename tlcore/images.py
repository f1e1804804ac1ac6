"""Opening any image a user may upload as 8-bit RGB, and making files TensorFlow decodes the same way."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlcore.errors import ImageError

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image, np.ndarray]

NOT_AN_IMAGE = "not an image"
CORRUPT = "corrupt or truncated"
TOO_LARGE = "too large (decompression bomb)"

_SENTENCES = {
    NOT_AN_IMAGE: "is not an image file that can be opened. Use JPEG or PNG pictures",
    CORRUPT: "is damaged or incomplete and cannot be read. Re-export or re-download the picture",
    TOO_LARGE: "has far too many pixels to be opened safely. Resize it to a few thousand pixels on a side",
}
# The formats an upload may be in: what TensorFlow reads, and what is converted for it. Others
# (JPEG 2000, PSD, ...) are refused before decoding: some cost minutes for a kilobyte file.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")  # JPEG covers MPO, the multi-picture JPEG
# Images above this many pixels are decoded one at a time, so a few of them at once cannot
# exhaust the memory; JPEGs that large are checked at a reduced scale, which reads every byte.
BIG_IMAGE_PIXELS = 4_000_000
_BIG_IMAGES = threading.Lock()

# Bump when decoding or resizing for the network changes: cached features depend on it.
PIPELINE_VERSION = 1

# The EXIF tag holding the camera orientation; 1 means "already upright".
_ORIENTATION_TAG = 0x0112


class _Unreadable(Exception):
    """An image that failed to decode, with one of the short reasons above."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageCheck:
    """What a full decode of one image file found.

    Attributes:
        problem: None when the image is usable, else a short reason such as "corrupt or truncated".
        width: Width in pixels after EXIF rotation (0 when unreadable).
        height: Height in pixels after EXIF rotation (0 when unreadable).
        needs_conversion: True when TensorFlow would fail on the file or decode other pixels.
        digest: SHA-256 of the file's bytes (None when it could not be read).
        phash: Perceptual hash of the decoded picture (`tlcore.near_duplicates`), or None.
        colour: Its colour signature, as hex (`tlcore.near_duplicates.colour_signature`), or None.
    """

    problem: str | None
    width: int = 0
    height: int = 0
    needs_conversion: bool = False
    digest: str | None = None
    phash: int | None = None
    colour: str | None = None


def _source_name(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    return "The image"


def max_pixels() -> int:
    """The most pixels an image may have (`tlcore.limits.Limits.max_image_pixels`)."""
    from tlcore.limits import current

    return current().max_image_pixels


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[-1] != 3:
            raise _Unreadable(NOT_AN_IMAGE)
        source = Image.fromarray(np.clip(source, 0, 255).astype(np.uint8), "RGB")
    if isinstance(source, Image.Image):
        if source.width * source.height > max_pixels():
            raise _Unreadable(TOO_LARGE)
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        raise IsADirectoryError(str(source))
    try:
        image = Image.open(source, formats=FORMATS)
    except UnidentifiedImageError:
        raise _Unreadable(NOT_AN_IMAGE) from None
    except Image.DecompressionBombError:
        raise _Unreadable(TOO_LARGE) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception:
        # A malformed header can make a Pillow plugin raise almost any exception type.
        raise _Unreadable(CORRUPT) from None
    # Checked here, before decoding, rather than through Pillow's warnings, which are global to
    # the process and only warn between one and two times its own, far higher, limit.
    if image.width * image.height > max_pixels():
        image.close()
        raise _Unreadable(TOO_LARGE)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        # Rounds v / 257 to the nearest level in integers: no float copy of a big image.
        levels = ((np.asarray(image, dtype=np.uint32) + 128) // 257).astype(np.uint8)
        return Image.fromarray(levels).convert("RGB")
    if image.mode in ("I", "F"):
        return Image.fromarray(_scale_to_8bit(np.asarray(image))).convert("RGB")
    # Alpha is dropped rather than composited so the pixels match TensorFlow's `channels=3` decode.
    return image.convert("RGB")


def _scale_to_8bit(values: np.ndarray) -> np.ndarray:
    """Maps a 32-bit integer or float greyscale array to 0-255, scaling rather than clipping.

    These modes do not say which range they use, so it is read from the values.
    """
    is_float = values.dtype.kind == "f"
    values = values.astype(np.float32)
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if is_float and low >= 0 and high <= 1:
        scaled = values * 255.0
    elif low >= 0 and high <= 255:
        # Images that only hold 8-bit values would turn black if rescaled.
        scaled = values
    elif low >= 0 and high <= 65535:
        scaled = values / 257.0
    else:
        scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _decode(image: Image.Image) -> Image.Image:
    """Fully decodes the first frame of an opened image into upright RGB pixels."""
    try:
        image.seek(0)
        image.load()
        upright = ImageOps.exif_transpose(image)
        rgb = _to_rgb(upright)
        rgb.load()
    except _Unreadable:
        raise
    except Image.DecompressionBombError:
        raise _Unreadable(TOO_LARGE) from None
    except MemoryError:
        raise _Unreadable(TOO_LARGE) from None
    except Exception:
        # Truncated and corrupt data surface as OSError, SyntaxError, zlib or struct errors.
        raise _Unreadable(CORRUPT) from None
    return rgb


def load_rgb(source: ImageSource) -> Image.Image:
    """Opens an image of any common format and mode as upright 8-bit RGB.

    Applies the EXIF orientation, takes the first frame of animations, drops transparency
    (as TensorFlow does), and scales 16-bit images down to 8 bits.

    Args:
        source: A file path, the file's bytes, an open binary file, or a Pillow image.

    Returns:
        A fully decoded Pillow image in mode "RGB".

    Raises:
        ImageError: the data is not an image, is damaged or truncated, or is too large to open
            safely; or the path is missing or a folder.
    """
    try:
        image = _open(source)
        try:
            with _BIG_IMAGES if image.width * image.height > BIG_IMAGE_PIXELS else contextlib.nullcontext():
                return _decode(image)
        finally:
            # `_decode` returns a new image, so a file we opened can be closed (animations keep it open).
            if image is not source:
                image.close()
    except _Unreadable as problem:
        raise ImageError(f"{_source_name(source)} {_SENTENCES[problem.reason]}.") from None
    except IsADirectoryError:
        raise ImageError(f"`{_source_name(source)}` is a folder, not an image file. Give the images inside it.") from None
    except FileNotFoundError:
        raise ImageError(f"`{_source_name(source)}` does not exist. Check the file's name and folder.") from None


def load_array(source: ImageSource) -> np.ndarray:
    """Opens an image as a `uint8` array of shape (height, width, 3); see `load_rgb`.

    Args:
        source: A file path, the file's bytes, an open binary file, or a Pillow image.

    Returns:
        The RGB pixels.

    Raises:
        ImageError: the image cannot be decoded.
    """
    return np.asarray(load_rgb(source), dtype=np.uint8)


def check_image(path: str | Path) -> ImageCheck:
    """Decodes an image file completely, with Pillow and with TensorFlow, and tells whether it can be used, and how.

    A file TensorFlow cannot decode although Pillow can (a PNG with a bad checksum, a BMP with
    an OS/2 header) is marked for conversion, so training never meets it as it is.

    Args:
        path: The image file.

    Returns:
        The check result, with the file's digest and perceptual hash; `problem` is set instead
        of raising when the file is unusable.
    """
    from tlcore.near_duplicates import colour_signature, perceptual_hash

    try:
        data = Path(path).read_bytes()
    except OSError:
        return ImageCheck(problem="could not be read")
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = _open(io.BytesIO(data))
    except _Unreadable as problem:
        return ImageCheck(problem=problem.reason, digest=digest)
    with image:
        width, height = image.size
        big = width * height > BIG_IMAGE_PIXELS
        try:
            with _BIG_IMAGES if big else contextlib.nullcontext():
                # Before decoding: loading discards the frame layout the GIF check reads.
                convert = _needs_conversion(image, data[:26])
                if _is_rotated_sideways(image):
                    width, height = height, width
                if big and image.format in ("JPEG", "MPO"):
                    image.draft("RGB", (image.width // 4, image.height // 4))
                rgb = _decode(image)
                phash = perceptual_hash(rgb)
                colour = colour_signature(rgb).hex()
                del rgb
                # JPEGs go through libjpeg-turbo in Pillow and in TensorFlow alike; the other
                # formats have decoders of their own, which disagree on damaged files.
                if not convert and image.format != "JPEG" and not tensorflow_decodes(data):
                    convert = True
        except _Unreadable as problem:
            return ImageCheck(problem=problem.reason, digest=digest)
        except Exception:
            return ImageCheck(problem=CORRUPT, digest=digest)
    return ImageCheck(None, width, height, convert, digest, phash, colour)


def _is_rotated_sideways(image: Image.Image) -> bool:
    return image.getexif().get(_ORIENTATION_TAG, 1) in (5, 6, 7, 8)


def tensorflow_decodes(data: bytes) -> bool:
    """Tells whether the training's own decoder (`decode_tensor`) reads these file bytes."""
    import tensorflow as tf

    try:
        _decode_contents(tf.constant(data))
    except (tf.errors.OpError, ValueError):
        return False
    return True


def verify_image(path: str | Path) -> str | None:
    """Tells why an image file cannot be used, or None when it decodes fine.

    Args:
        path: The image file.

    Returns:
        None, or a short reason: "not an image", "corrupt or truncated", "too large (decompression bomb)".
    """
    return check_image(path).problem


def needs_conversion(path: str | Path) -> bool:
    """Tells whether TensorFlow's decoder would fail on a file or read other pixels than `load_rgb`.

    `tf.io.decode_image(contents, channels=3, expand_animations=False)` agrees with `load_rgb` only for
    8-bit JPEG (RGB or greyscale, upright), 8-bit PNG, plain 24-bit BMP and opaque GIF. Everything else
    (TIFF, WebP, CMYK JPEG, 16-bit PNG, EXIF-rotated photos, ...) must be converted first.

    Args:
        path: A readable image file.

    Returns:
        True when the file should be replaced by a PNG made with `normalise_image`.

    Raises:
        ImageError: the file is not a readable image.
    """
    try:
        image = _open(path)
    except _Unreadable as problem:
        raise ImageError(f"{_source_name(path)} {_SENTENCES[problem.reason]}.") from None
    with image, open(path, "rb") as handle:
        return _needs_conversion(image, handle.read(26))


def _needs_conversion(image: Image.Image, header: bytes) -> bool:
    if image.format != "GIF" and getattr(image, "n_frames", 1) > 1:
        # Animated PNG and multi-page files: TensorFlow may not pick the frame Pillow shows.
        return True
    if image.format in ("JPEG", "MPO"):
        return image.mode not in ("RGB", "L") or _is_rotated(image)
    if image.format == "PNG":
        return _png_bit_depth(header) != 8 and image.mode != "P"
    if image.format == "BMP":
        return not (image.mode == "RGB" and image.info.get("compression", 0) == 0)
    if image.format == "GIF":
        # TensorFlow paints transparent pixels and pixels outside the first frame's box differently.
        first_box = image.tile[0][1] if image.tile else (0, 0) + image.size
        return "transparency" in image.info or tuple(first_box) != (0, 0) + image.size
    return True


def _is_rotated(image: Image.Image) -> bool:
    return image.getexif().get(_ORIENTATION_TAG, 1) not in (0, 1)


def _png_bit_depth(header: bytes) -> int:
    # Pillow hides the bit depth of RGB PNGs (it silently reduces 16-bit RGB to 8 bits), so read IHDR.
    return header[24] if len(header) >= 26 else 0


def normalise_image(path: str | Path, out_path: str | Path) -> Path:
    """Writes an 8-bit RGB PNG copy of an image that TensorFlow decodes exactly like `load_rgb`.

    Args:
        path: The source image.
        out_path: Where to write the PNG; its folder must exist.

    Returns:
        `out_path` as a Path.

    Raises:
        ImageError: the source cannot be decoded.
    """
    out_path = Path(out_path)
    load_rgb(path).save(out_path, format="PNG")
    return out_path



def decode_tensor(path):
    """Reads an image file inside a TensorFlow graph as uint8 RGB, pixel for pixel as `load_array`.

    JPEGs are decoded with the accurate DCT, as Pillow decodes them; other formats with
    `tf.io.decode_image`. Files for which the two would differ are converted when the dataset
    is loaded (`needs_conversion`), so training, evaluation and prediction see the same pixels.
    """
    import tensorflow as tf

    return _decode_contents(tf.io.read_file(path))


def _decode_contents(contents):
    import tensorflow as tf

    image = tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def decode_file(path, input_size: tuple[int, int] | int):
    """`decode_tensor`, then resized to `input_size` as raw RGB float32.

    The resize is the model's own (bilinear, no antialiasing), so its Resizing layer then
    leaves the image unchanged.
    """
    import tensorflow as tf

    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    # Resized as uint8 (the result is float32 all the same, to the bit): a float copy of a
    # 25-megapixel picture alone would take 300 MB.
    return tf.image.resize(decode_tensor(path), input_size, method="bilinear", antialias=False)
