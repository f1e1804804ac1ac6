"""Tests of `tlcore.images`: every upload format opens as upright 8-bit RGB, and TensorFlow agrees."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest_data import (
    animated_gif,
    assert_same_pixels,
    encode,
    real_images,
    rotated_jpeg,
    sixteen_bit_png,
    unusual_encodings,
)
from tlcore import images
from tlcore.errors import ImageError


@pytest.fixture
def render(horses_or_humans):
    return real_images(horses_or_humans / "horses", 1)[0]


@pytest.fixture
def photo(flowers):
    return real_images(flowers / "daisy", 1)[0]


def test_rgba_png_drops_alpha(render):
    rgba = np.asarray(Image.open(render))
    assert rgba.shape[2] == 4
    result = images.load_array(render)
    assert result.dtype == np.uint8 and result.shape == rgba.shape[:2] + (3,)
    np.testing.assert_array_equal(result, rgba[..., :3])


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1", "CMYK", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(photo, mode):
    image = Image.open(photo).convert(mode) if mode not in ("I;16",) else Image.fromarray(
        np.asarray(Image.open(photo).convert("L")).astype(np.uint16) * 257
    )
    result = images.load_rgb(image)
    assert result.mode == "RGB" and result.size == image.size


def test_sources_path_bytes_file_and_image_agree(photo):
    expected = images.load_array(photo)
    data = photo.read_bytes()
    for source in (str(photo), data, io.BytesIO(data), Image.open(photo)):
        np.testing.assert_array_equal(images.load_array(source), expected)


def test_cmyk_jpeg_reads_as_rgb_close_to_the_photo(photo):
    original = np.asarray(Image.open(photo).convert("RGB")).astype(int)
    data = encode(Image.open(photo).convert("RGB").convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    result = images.load_array(data)
    assert np.abs(result.astype(int) - original).mean() < 8


def test_sixteen_bit_png_is_scaled_not_clipped(photo):
    data, grey = sixteen_bit_png(photo)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    result = images.load_array(data)
    assert result.shape == grey.shape + (3,)
    # Clipping 16-bit values to 255 would make almost every pixel white.
    np.testing.assert_array_equal(result[..., 0], grey)


@pytest.mark.parametrize(
    "pixels, expected",
    [
        (np.array([[0, 257, 65535]], dtype=np.uint16), [0, 1, 255]),
        (np.array([[0, 25700, 65535]], dtype=np.int32), [0, 100, 255]),
        (np.array([[0, 7, 200]], dtype=np.int32), [0, 7, 200]),
        (np.array([[0.0, 0.5, 1.0]], dtype=np.float32), [0, 128, 255]),
    ],
    ids=["16-bit", "32-bit-holding-16-bit", "32-bit-holding-8-bit", "float"],
)
def test_high_bit_depth_is_scaled_to_the_full_8_bit_range(pixels, expected):
    assert images.load_array(Image.fromarray(pixels))[0, :, 0].tolist() == expected


def test_exif_rotation_is_applied(photo):
    data, stored = rotated_jpeg(photo)
    result = images.load_array(data)
    assert result.shape == (stored.width, stored.height, 3)
    upright = np.asarray(stored.transpose(Image.Transpose.ROTATE_270)).astype(int)
    assert np.abs(result.astype(int) - upright).mean() < 3


def test_gif_gives_its_first_frame(photo):
    data, first = animated_gif(photo)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    np.testing.assert_array_equal(images.load_array(data), np.asarray(first))


@pytest.mark.parametrize("image_format, options", [("WEBP", {"lossless": True}), ("TIFF", {}), ("BMP", {})])
def test_other_formats_read_exactly(photo, image_format, options):
    original = np.asarray(Image.open(photo).convert("RGB"))
    np.testing.assert_array_equal(images.load_array(encode(Image.open(photo), image_format, **options)), original)


def test_text_file_named_jpg_is_not_an_image(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("shopping list: milk, eggs")
    assert images.verify_image(fake) == images.NOT_AN_IMAGE
    with pytest.raises(ImageError, match="notes.jpg is not an image"):
        images.load_rgb(fake)


def test_truncated_png_is_refused(tmp_path, render):
    data = render.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    assert images.verify_image(cut) == images.CORRUPT
    with pytest.raises(ImageError, match="damaged or incomplete"):
        images.load_rgb(cut)


def test_corrupt_jpeg_is_refused(tmp_path, photo):
    damaged = bytearray(photo.read_bytes())
    for index in range(600, len(damaged) - 10, 7):
        damaged[index] = 0xFF if index % 2 else 0x00
    path = tmp_path / "damaged.jpg"
    path.write_bytes(bytes(damaged))
    assert images.verify_image(path) == images.CORRUPT



@pytest.mark.parametrize("pixels", [40 * 40, 100 * 100], ids=["above-limit", "twice-the-limit"])
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, pixels):
    side = int(pixels**0.5)
    path = tmp_path / "big.png"
    Image.new("RGB", (side, side)).save(path)
    monkeypatch.setenv("TLCORE_MAX_IMAGE_PIXELS", "1000")
    assert images.verify_image(path) == images.TOO_LARGE
    with pytest.raises(ImageError, match="too many pixels"):
        images.load_rgb(path)


def test_tiny_images_are_fine(tmp_path):
    path = tmp_path / "tiny.png"
    Image.new("RGB", (8, 8), "red").save(path)
    assert images.verify_image(path) is None


def test_check_image_reports_upright_size(tmp_path, photo):
    path = tmp_path / "rotated.jpg"
    data, stored = rotated_jpeg(photo)
    path.write_bytes(data)
    check = images.check_image(path)
    assert (check.problem, check.width, check.height, check.needs_conversion) == (
        None,
        stored.height,
        stored.width,
        True,
    )


def _plain_encodings(photo, render) -> dict[str, bytes]:
    rgb = Image.open(photo).convert("RGB")
    return {
        "photo.jpg": photo.read_bytes(),
        "grey.jpg": encode(rgb.convert("L"), "JPEG", quality=95),
        "render.png": encode(Image.open(render).convert("RGB"), "PNG"),
        "grey.png": encode(rgb.convert("L"), "PNG"),
        "palette.png": encode(rgb.quantize(colors=32), "PNG"),
        "photo.bmp": encode(rgb, "BMP"),
        "opaque.gif": encode(rgb.quantize(colors=32), "GIF"),
    }


def test_needs_conversion_only_for_what_tensorflow_reads_differently(tmp_path, photo, render):
    for name, data in _plain_encodings(photo, render).items():
        (tmp_path / name).write_bytes(data)
        assert not images.needs_conversion(tmp_path / name), name
    for name, data in unusual_encodings(photo, render).items():
        (tmp_path / name).write_bytes(data)
        # An opaque animated GIF and an RGBA PNG are read alike by both decoders.
        expected = name not in ("render_rgba.png", "animated.gif")
        assert images.needs_conversion(tmp_path / name) is expected, name


def test_tensorflow_reads_plain_and_normalised_files_like_pillow(tmp_path, photo, render):
    files = {**_plain_encodings(photo, render), **unusual_encodings(photo, render)}
    for name, data in files.items():
        source = tmp_path / name
        source.write_bytes(data)
        used = source
        if images.needs_conversion(source):
            used = images.normalise_image(source, tmp_path / f"{name}.normalised.png")
            assert Image.open(used).mode == "RGB"
        assert_same_pixels(used, images.load_array(source))
