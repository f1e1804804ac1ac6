"""Hostile files built on the spot: images that lie about themselves, and zips that try to hurt the server."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

from PIL import Image


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    checksum = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum & 0xFFFFFFFF)


def png_with_bad_idat_checksum(source: Path) -> bytes:
    """A real picture as a PNG whose pixel data's checksum is wrong: Pillow reads it, libpng refuses it."""
    buffer = io.BytesIO()
    Image.open(source).convert("RGB").save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[start : start + 4])[0]
    crc_at = start + 8 + length
    data[crc_at : crc_at + 4] = bytes(b ^ 0xFF for b in data[crc_at : crc_at + 4])
    return bytes(data)


def os2_bmp(source: Path, side: int = 48) -> bytes:
    """A real picture as a BMP with the old OS/2 header (BITMAPCOREHEADER), which Pillow reads and TensorFlow does not."""
    image = Image.open(source).convert("RGB").resize((side, side))
    row_bytes = (side * 3 + 3) // 4 * 4
    rows = []
    for y in range(side - 1, -1, -1):  # bottom-up
        row = b"".join(bytes(image.getpixel((x, y))[::-1]) for x in range(side))
        rows.append(row + b"\0" * (row_bytes - len(row)))
    pixels = b"".join(rows)
    header = struct.pack("<IHHHH", 12, side, side, 1, 24)
    offset = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + pixels


def empty_png(width: int, height: int, bit_depth: int = 16, colour_type: int = 0) -> bytes:
    """A PNG of the given size, all black, built row by row: megapixels cost only kilobytes, to make and to send."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = b"\0" * (1 + width * channels * bit_depth // 8)
    packer = zlib.compressobj(9)
    parts = [packer.compress(row) for _ in range(height)]
    parts.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")


def jpeg2000(source: Path, side: int = 32) -> bytes:
    """A tiny JPEG 2000 picture: a format whose decoder can take minutes for a kilobyte."""
    buffer = io.BytesIO()
    Image.open(source).convert("RGB").resize((side, side)).save(buffer, "JPEG2000")
    return buffer.getvalue()


def zip_of(path: Path, files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data, compress_type=method)
    return path
