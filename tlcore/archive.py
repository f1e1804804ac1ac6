"""Unpacking uploaded zip archives without letting a hostile archive harm the server."""

from __future__ import annotations

import contextlib
import copy
import lzma
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from tlcore.errors import DatasetError, UnsafeArchiveError

_MiB = 1024 * 1024
_CHUNK_BYTES = _MiB
_ENCRYPTED_FLAG = 0x1
_UTF8_FLAG = 0x800
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_SUPPORTED_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ZipLimits:
    """How much an uploaded zip may hold; the defaults suit a shared classroom server.

    Attributes:
        max_members: Most entries (files and folders) in one archive.
        max_total_bytes: Most bytes all files may take once unpacked.
        max_file_bytes: Most bytes one file may take once unpacked.
        max_ratio: Highest unpacked-to-packed size ratio of one file, a sign of a zip bomb.
        ratio_min_bytes: Files smaller than this are exempt from the ratio check, since small
            files (blank images, text) legitimately compress very well.
        max_total_ratio: Highest unpacked-to-packed ratio of the whole archive, which many small
            files of zeros cannot escape.
        total_ratio_min_bytes: Archives unpacking to less than this are exempt from the total ratio.
        max_depth: Most folders one entry's path may go down.
        max_name_length: Most characters in one file or folder name.
        max_path_length: Most characters in one entry's whole path.
    """

    max_members: int = 20_000
    max_total_bytes: int = 2 * 1024 * _MiB
    max_file_bytes: int = 256 * _MiB
    max_ratio: float = 100.0
    ratio_min_bytes: int = _MiB
    max_total_ratio: float = 50.0
    total_ratio_min_bytes: int = 64 * _MiB
    max_depth: int = 12
    max_name_length: int = 120
    max_path_length: int = 400

    @classmethod
    def from_limits(cls, limits) -> "ZipLimits":
        """The zip limits of a `tlcore.limits.Limits`."""
        return cls(
            max_members=limits.max_members, max_total_bytes=limits.max_total_bytes, max_file_bytes=limits.max_file_bytes,
            max_ratio=limits.max_ratio, max_total_ratio=limits.max_total_ratio, max_depth=limits.max_depth,
            max_name_length=limits.max_name_length, max_path_length=limits.max_path_length,
        )


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]
    is_dir: bool


def _display(name: str) -> str:
    return name if len(name) <= 80 else name[:77] + "..."


def member_name(info: zipfile.ZipInfo) -> str:
    """Returns an entry's name as the person who made the zip saw it.

    Zips made on macOS and Linux store UTF-8 names without setting the UTF-8 flag, which
    Python then reads as cp437; such names are decoded again as UTF-8 when that works.

    Args:
        info: The zip entry.

    Returns:
        The entry's name.
    """
    name = info.filename
    if info.flag_bits & _UTF8_FLAG:
        return name
    try:
        return info.orig_filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return name


def _safe_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    raw = member_name(info)
    # Windows tools may write `\` as the separator, and Windows treats it as one when unpacking.
    name = raw.replace("\\", "/")
    unsafe = UnsafeArchiveError(
        f"The zip archive was rejected because the entry `{_display(raw)}` would be unpacked outside its "
        "folder. Zip the dataset folder again with an ordinary zip tool."
    )
    if "\x00" in name or name.startswith("/") or _DRIVE_LETTER.match(name):
        raise unsafe
    parts = tuple(part for part in PurePosixPath(name).parts if part not in ("", "."))
    if ".." in parts:
        raise unsafe
    return parts


def _check_member(info: zipfile.ZipInfo, limits: ZipLimits) -> _Member:
    name = _display(member_name(info))
    parts = _safe_parts(info)
    if len(parts) > limits.max_depth + 1:
        raise UnsafeArchiveError(
            f"The zip archive was rejected because `{name}` lies {len(parts) - 1} folders deep, more than the "
            f"{limits.max_depth} allowed. Put the class folders near the top of the zip."
        )
    long_name = next((part for part in parts if len(part) > limits.max_name_length), None)
    if long_name is not None or len("/".join(parts)) > limits.max_path_length:
        raise UnsafeArchiveError(
            f"The zip archive was rejected because the name `{_display(long_name or '/'.join(parts))}` is too long "
            f"(at most {limits.max_name_length} characters per name). Rename the file or folder and zip it again."
        )
    mode = info.external_attr >> 16
    # Many tools store permission bits without a file type; no type means an ordinary file.
    file_type = stat.S_IFMT(mode)
    if file_type == stat.S_IFLNK:
        raise UnsafeArchiveError(
            f"The zip archive was rejected because `{name}` is a symbolic link, which could point anywhere "
            "on the server. Zip the real files instead of links."
        )
    is_dir = info.is_dir() or file_type == stat.S_IFDIR
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchiveError(
            f"The zip archive was rejected because `{name}` is a special file, not an ordinary file or folder."
        )
    if info.flag_bits & _ENCRYPTED_FLAG:
        raise UnsafeArchiveError(
            f"The zip archive is password-protected (`{name}` is encrypted). Zip the dataset again without a password."
        )
    if info.compress_type not in _SUPPORTED_METHODS:
        raise DatasetError(
            f"The zip archive uses a compression method this server cannot unpack (for `{name}`). "
            "Zip the dataset again with the standard zip tool of Windows, macOS or Linux."
        )
    if info.file_size > limits.max_file_bytes:
        raise UnsafeArchiveError(
            f"The zip archive was rejected because `{name}` would unpack to {_size(info.file_size)}, more than "
            f"the {_size(limits.max_file_bytes)} allowed for one file."
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size >= limits.ratio_min_bytes and ratio > limits.max_ratio:
        raise UnsafeArchiveError(
            f"The zip archive was rejected because `{name}` is compressed {ratio:,.0f} times, the mark of a "
            "zip bomb. Photos never compress that much; zip the real image files."
        )
    return _Member(info=info, parts=parts, is_dir=is_dir)


def _size(num_bytes: int) -> str:
    if num_bytes >= 1024 * _MiB:
        return f"{num_bytes / (1024 * _MiB):.1f} GB"
    return f"{num_bytes / _MiB:.1f} MB"


def open_zip(zip_path: str | Path) -> zipfile.ZipFile:
    """Opens a zip for reading, with a plain message when the file is not a zip.

    Args:
        zip_path: The file.

    Returns:
        The open archive; close it after use.

    Raises:
        DatasetError: the file is missing or not a zip archive.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise DatasetError(f"The file `{zip_path.name}` does not exist.")
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise DatasetError(
            f"This file is not a zip archive (`{zip_path.name}`). Upload a .zip file holding one folder "
            "per class with the images inside, for example `cats/` and `dogs/`."
        ) from None


def _check_zip(archive: zipfile.ZipFile, limits: ZipLimits = ZipLimits()) -> list[_Member]:
    """Checks every entry of an open zip against the safety rules, before anything is written.

    Args:
        archive: The open zip.
        limits: The size and count limits.

    Returns:
        The entries with their safe relative path parts.

    Raises:
        UnsafeArchiveError: an entry escapes the folder, is a link, is encrypted, or a limit is exceeded.
        DatasetError: an entry uses a compression method that cannot be unpacked.
    """
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise UnsafeArchiveError(
            f"The zip archive was rejected because it holds {len(infos):,} entries, more than the "
            f"{limits.max_members:,} allowed. Upload fewer images or split the dataset."
        )
    members = [_check_member(info, limits) for info in infos]
    total = sum(member.info.file_size for member in members)
    if total > limits.max_total_bytes:
        raise UnsafeArchiveError(
            f"The zip archive was rejected because it would unpack to {_size(total)}, more than the "
            f"{_size(limits.max_total_bytes)} allowed. Upload smaller images or fewer of them."
        )
    packed = sum(member.info.compress_size for member in members)
    if total >= limits.total_ratio_min_bytes and total / max(packed, 1) > limits.max_total_ratio:
        raise UnsafeArchiveError(
            f"The zip archive was rejected because it would unpack to {_size(total)} from only {_size(packed)} "
            f"({total / max(packed, 1):,.0f} times more), the mark of a zip bomb. Photos never compress that much; "
            "zip the real image files."
        )
    seen: set[tuple[str, ...]] = set()
    folders: set[tuple[str, ...]] = set()
    for member in members:
        if member.parts in seen and not member.is_dir:
            raise UnsafeArchiveError(
                f"The zip archive was rejected because it lists `{_display('/'.join(member.parts))}` twice. "
                "Zip the dataset folder again with an ordinary zip tool."
            )
        seen.add(member.parts)
        folders.update(member.parts[:i] for i in range(1, len(member.parts) + (1 if member.is_dir else 0)))
    clash = next((m for m in members if not m.is_dir and m.parts in folders), None)
    if clash is not None:
        raise UnsafeArchiveError(
            f"The zip archive was rejected because `{_display('/'.join(clash.parts))}` is both a file and a folder. "
            "Rename one of them and zip the dataset again."
        )
    return members


def extract_zip(
    zip_path: str | Path,
    destination: str | Path,
    limits: ZipLimits = ZipLimits(),
    progress: Progress | None = None,
) -> Path:
    """Unpacks a zip into `destination`, all or nothing, after checking it is safe.

    Everything is unpacked into a fresh hidden folder next to `destination` and renamed into
    place only once all entries were written; on any failure that folder is removed, so a
    rejected zip leaves nothing behind. Sizes are counted while writing, so headers that
    understate a file's size cannot slip past the limits.

    Args:
        zip_path: The uploaded zip file.
        destination: The folder to create; it must not exist yet.
        limits: The size and count limits.
        progress: Called as `progress(entries_done, entries_total)`; raising from it cancels the
            extraction cleanly.

    Returns:
        `destination` as a Path.

    Raises:
        DatasetError: the file is not a zip, or cannot be unpacked.
        UnsafeArchiveError: the zip breaks a safety rule.
        FileExistsError: `destination` already exists.
        OSError: another process created `destination` meanwhile.
    """
    zip_path, destination = Path(zip_path), Path(destination)
    if destination.exists():
        raise FileExistsError(destination)
    with open_zip(zip_path) as archive:
        members = _check_zip(archive, limits)
        try:
            with staged_folder(destination) as staging:
                _write_members(archive, members, staging, limits, progress)
        except (DatasetError, FileExistsError):
            raise
        except (OSError, RecursionError, ValueError) as error:
            # Whatever the file system makes of odd names, the user gets a refusal, not a traceback.
            raise UnsafeArchiveError(
                "The zip archive could not be unpacked on the server (its file or folder names are unusual: "
                f"{_first_words(error)}). Zip the dataset folder again with ordinary names."
            ) from error
    return destination


def _first_words(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return str(text).splitlines()[0][:80]


@contextmanager
def staged_folder(destination: Path) -> Iterator[Path]:
    """Yields a fresh hidden folder beside `destination` that becomes it only if the block succeeds.

    Readers never see a half-written folder: the rename at the end is atomic, and on any
    error (or cancellation) the hidden folder is removed.

    Args:
        destination: The folder to create; an existing one must be empty or is refused by the rename.

    Yields:
        The folder to fill.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent))
    try:
        yield staging
        staging.rename(destination)
    except BaseException:
        remove_tree(staging)
        raise


def remove_tree(folder: Path) -> None:
    """Deletes a folder however deep it goes, never raising; what cannot be deleted is left."""
    try:
        shutil.rmtree(folder, ignore_errors=True)
    except RecursionError:
        pass
    if folder.exists():
        # `rmtree` recurses; a folder nested thousands deep needs a loop.
        for root, dirs, files in os.walk(folder, topdown=False):
            for name in files:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, name))
            for name in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(root, name))
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def _write_members(
    archive: zipfile.ZipFile, members: list[_Member], staging: Path, limits: ZipLimits, progress: Progress | None
) -> None:
    written_total = 0
    for done, member in enumerate(members, start=1):
        if member.parts:
            target = staging.joinpath(*member.parts)
            # A second line of defence: `_safe_parts` should already make escaping impossible.
            if not target.resolve().is_relative_to(staging.resolve()):
                raise UnsafeArchiveError(
                    f"The zip archive was rejected because `{_display(member_name(member.info))}` would be "
                    "unpacked outside its folder."
                )
            if member.is_dir:
                target.mkdir(parents=True, exist_ok=True)
            else:
                written_total += _write_file(archive, member, target, written_total, limits)
        if progress is not None:
            progress(done, len(members))


def _write_file(archive: zipfile.ZipFile, member: _Member, target: Path, written_total: int, limits: ZipLimits) -> int:
    info = member.info
    name = _display(member_name(info))
    lying = UnsafeArchiveError(
        f"The zip archive was rejected because `{name}` holds more data than its header declares, "
        "a trick used by zip bombs."
    )
    written = 0
    checksum = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(_one_byte_more(info)) as source, open(target, "xb") as sink:
            while chunk := source.read(_CHUNK_BYTES):
                written += len(chunk)
                if written > info.file_size or written > limits.max_file_bytes:
                    raise lying
                if written_total + written > limits.max_total_bytes:
                    raise UnsafeArchiveError(
                        f"The zip archive was rejected because it unpacks to more than the "
                        f"{_size(limits.max_total_bytes)} allowed."
                    )
                checksum = zlib.crc32(chunk, checksum)
                sink.write(chunk)
    except (zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as error:
        raise UnsafeArchiveError(
            f"The zip archive is damaged: `{name}` does not match the size or checksum recorded in the "
            "archive. Zip the dataset folder again and upload the new file."
        ) from error
    except OSError as error:
        raise DatasetError(
            f"The zip archive could not be unpacked on the server ({error.strerror or error}). "
            "Check that the file names are ordinary and not too long, or ask the server's administrator."
        ) from error
    if written != info.file_size or checksum != info.CRC:
        raise UnsafeArchiveError(
            f"The zip archive is damaged: `{name}` does not match the size or checksum recorded in the "
            "archive. Zip the dataset folder again and upload the new file."
        )
    return written


def _one_byte_more(info: zipfile.ZipInfo) -> zipfile.ZipInfo:
    """A copy of an entry's header declaring one byte more than it does, and no checksum.

    Python's reader silently stops at the declared size, so a header that understates it would
    go unnoticed; allowed one byte more, the reader hands over that byte and the lie shows. Its
    checksum test would fail first on that byte, so the caller checks the checksum itself.
    """
    probe = copy.copy(info)
    probe.file_size = info.file_size + 1
    probe.CRC = None
    return probe
