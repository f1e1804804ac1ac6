"""Tests of `tlcore.archive`: hostile zips are refused before anything lands outside a temporary folder."""

from __future__ import annotations

import stat
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from conftest_data import make_zip, snapshot
from tlcore.archive import ZipLimits, extract_zip, member_name
from tlcore.errors import DatasetError, UnsafeArchiveError

CENTRAL_HEADER = b"PK\x01\x02"
LOCAL_HEADER = b"PK\x03\x04"


@pytest.fixture
def upload(tmp_path) -> Path:
    return tmp_path / "upload.zip"


@pytest.fixture
def destination(tmp_path) -> Path:
    (tmp_path / "extracted").mkdir()
    return tmp_path / "extracted" / "dataset"


def assert_rejected(zip_path: Path, destination: Path, error=UnsafeArchiveError, match=None, **limits) -> None:
    """Extraction fails with `error`, and the folders around the destination are as they were."""
    watched = zip_path.parent
    before = snapshot(watched)
    with pytest.raises(error, match=match):
        extract_zip(zip_path, destination, ZipLimits(**limits))
    assert snapshot(watched) == before
    assert not destination.exists()


def patch_entry(
    data: bytes, *, file_size: int | None = None, crc: int | None = None, method: int | None = None, flag: int = 0
) -> bytes:
    """Rewrites the header fields of a one-entry zip, in both the local and the central header."""
    patched = bytearray(data)
    fields = ((LOCAL_HEADER, 6, 14, 22, 8), (CENTRAL_HEADER, 8, 16, 24, 10))
    for signature, flags_at, crc_at, size_at, method_at in fields:
        start = patched.index(signature)
        assert patched.count(signature) == 1
        (flags,) = struct.unpack_from("<H", patched, start + flags_at)
        struct.pack_into("<H", patched, start + flags_at, flags | flag)
        if file_size is not None:
            struct.pack_into("<I", patched, start + size_at, file_size)
        if crc is not None:
            struct.pack_into("<I", patched, start + crc_at, crc)
        if method is not None:
            struct.pack_into("<H", patched, start + method_at, method)
    return bytes(patched)


def rename_entries(data: bytes, placeholder: bytes, real: bytes) -> bytes:
    """Swaps an ASCII name for raw bytes of the same length, leaving the UTF-8 flag unset."""
    assert len(placeholder) == len(real) and data.count(placeholder) == 2
    return data.replace(placeholder, real)


def test_ordinary_zip_is_unpacked(upload, destination):
    files = {"cats/": b"", "cats/a.png": b"a" * 10, "dogs/b.png": b"b" * 20, "dogs/deep/c.png": b"c"}
    make_zip(upload, files)
    calls = []
    assert extract_zip(upload, destination, progress=lambda done, total: calls.append((done, total))) == destination
    assert snapshot(destination) == {"cats": -1, "cats/a.png": 10, "dogs": -1, "dogs/b.png": 20, "dogs/deep": -1, "dogs/deep/c.png": 1}
    assert calls[-1] == (4, 4)
    assert [path.name for path in destination.parent.iterdir()] == ["dataset"]


def test_windows_backslash_separators_become_folders(upload, destination):
    make_zip(upload, {"cats\\a.png": b"a", "dogs\\b.png": b"b"})
    extract_zip(upload, destination)
    assert (destination / "cats" / "a.png").read_bytes() == b"a"


@pytest.mark.parametrize(
    "name",
    ["../evil.txt", "cats/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt", "C:evil.txt", "..\\..\\evil.txt", "\\evil.txt"],
    ids=["dot-dot", "dot-dot-inside", "absolute", "drive-letter", "drive-relative", "backslash-dot-dot", "backslash-root"],
)
def test_paths_escaping_the_folder_are_refused(upload, destination, name):
    make_zip(upload, {"cats/a.png": b"a", name: b"gotcha"})
    assert_rejected(upload, destination, match="outside its folder")
    assert not (upload.parent.parent / "evil.txt").exists()


@pytest.mark.parametrize(
    "file_type, content, message",
    [(stat.S_IFLNK, b"/etc/passwd", "symbolic link"), (stat.S_IFIFO, b"", "special file")],
    ids=["symlink", "fifo"],
)
def test_links_and_special_files_are_refused(upload, destination, file_type, content, message):
    entry = zipfile.ZipInfo("cats/a.png")
    entry.create_system = 3
    entry.external_attr = (file_type | 0o777) << 16
    with zipfile.ZipFile(upload, "w") as archive:
        archive.writestr(entry, content)
    assert_rejected(upload, destination, match=message)


def test_encrypted_member_is_refused(upload, destination):
    make_zip(upload, {"cats/a.png": b"not really encrypted"})
    # Python's writer clears the flag bits it is given, so the "encrypted" bit is set in the bytes.
    upload.write_bytes(patch_entry(upload.read_bytes(), flag=0x1))
    assert zipfile.ZipFile(upload).infolist()[0].flag_bits & 0x1
    assert_rejected(upload, destination, match="password-protected")


def test_bomb_by_compression_ratio_is_refused(upload, destination):
    make_zip(upload, {"cats/zeros.png": bytes(50 * 1024 * 1024)})
    assert upload.stat().st_size < 200_000
    assert_rejected(upload, destination, match="zip bomb")


def test_small_files_that_compress_well_are_allowed(upload, destination):
    make_zip(upload, {"cats/blank.png": bytes(100_000), "dogs/blank.png": bytes(100_000)})
    extract_zip(upload, destination)
    assert (destination / "cats" / "blank.png").stat().st_size == 100_000


def test_too_many_members_are_refused(upload, destination):
    make_zip(upload, {f"cats/{index}.png": b"x" for index in range(4)})
    assert_rejected(upload, destination, match="4 entries", max_members=3)


def test_too_many_bytes_in_total_are_refused(upload, destination):
    make_zip(upload, {"cats/a.png": b"a" * 600, "dogs/b.png": b"b" * 600})
    assert_rejected(upload, destination, match="unpack to", max_total_bytes=1000)


def test_too_large_single_file_is_refused(upload, destination):
    make_zip(upload, {"cats/a.png": b"a" * 600})
    assert_rejected(upload, destination, match="allowed for one file", max_file_bytes=500)


def _lying_zip(upload: Path, real: bytes, declared: int, fix_checksum: bool) -> None:
    make_zip(upload, {"cats/a.png": real})
    crc = zlib.crc32(real[:declared]) if fix_checksum else None
    upload.write_bytes(patch_entry(upload.read_bytes(), file_size=declared, crc=crc))
    assert zipfile.ZipFile(upload).infolist()[0].file_size == declared


@pytest.mark.parametrize("fix_checksum", [False, True], ids=["size-only", "size-and-checksum"])
def test_header_understating_the_size_is_caught_while_writing(upload, destination, fix_checksum):
    _lying_zip(upload, bytes(3 * 1024 * 1024), declared=1000, fix_checksum=fix_checksum)
    assert_rejected(upload, destination, match="more data than its header declares")


def test_header_overstating_the_size_is_refused(upload, destination):
    real = b"real image bytes" * 10
    _lying_zip(upload, real, declared=len(real) + 10, fix_checksum=False)
    assert_rejected(upload, destination, match="damaged")


def test_damaged_data_is_refused(upload, destination):
    make_zip(upload, {"cats/a.png": bytes(range(256)) * 40})
    upload.write_bytes(patch_entry(upload.read_bytes(), crc=12345))
    assert_rejected(upload, destination, match="damaged")


def test_unsupported_compression_method_is_refused(upload, destination):
    make_zip(upload, {"cats/a.png": b"a" * 100})
    upload.write_bytes(patch_entry(upload.read_bytes(), method=99))
    assert_rejected(upload, destination, error=DatasetError, match="compression method")


def test_same_name_twice_is_refused(upload, destination):
    with pytest.warns(UserWarning, match="Duplicate name"):
        with zipfile.ZipFile(upload, "w") as archive:
            archive.writestr("cats/a.png", b"first")
            archive.writestr("cats/a.png", b"second")
    assert_rejected(upload, destination, match="twice")


@pytest.mark.parametrize("content", [b"", b"just some text, not a zip", b"PK\x03\x04broken"], ids=["empty-file", "text", "broken"])
def test_not_a_zip(upload, destination, content):
    upload.write_bytes(content)
    assert_rejected(upload, destination, error=DatasetError, match="This file is not a zip archive")


def test_cut_off_zip_is_not_a_zip(upload, destination):
    make_zip(upload, {"cats/a.png": bytes(range(256)) * 100})
    upload.write_bytes(upload.read_bytes()[:-30])
    assert_rejected(upload, destination, error=DatasetError, match="not a zip archive")


def test_cancelling_from_progress_leaves_nothing(upload, destination):
    make_zip(upload, {f"cats/{index}.png": b"x" for index in range(5)})
    before = snapshot(upload.parent)

    def stop(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_zip(upload, destination, progress=stop)
    assert snapshot(upload.parent) == before


def test_existing_destination_is_not_overwritten(upload, destination):
    make_zip(upload, {"cats/a.png": b"a"})
    destination.mkdir()
    with pytest.raises(FileExistsError):
        extract_zip(upload, destination)


def test_utf8_names_without_the_utf8_flag_are_read_as_utf8(upload, destination):
    make_zip(upload, {"cats/chXX.png": b"a"})
    upload.write_bytes(rename_entries(upload.read_bytes(), b"chXX", "ché".encode("utf-8")))
    info = zipfile.ZipFile(upload).infolist()[0]
    assert not info.flag_bits & 0x800 and member_name(info) == "cats/ché.png"
    extract_zip(upload, destination)
    assert (destination / "cats" / "ché.png").read_bytes() == b"a"


def test_legacy_cp437_names_are_kept(upload, destination):
    make_zip(upload, {"cats/cafX.png": b"a"})
    upload.write_bytes(rename_entries(upload.read_bytes(), b"cafX", b"caf\x82"))
    extract_zip(upload, destination)
    assert (destination / "cats" / "café.png").read_bytes() == b"a"
