"""The on-disk feature cache: backbone outputs of single images, found again by the images' bytes.

Features live in one folder per extraction key (which backbone, cut, weights and settings made
them). Inside, each extraction adds a shard: `.npy` arrays with one row per image, and a
`.rows.json` list naming each row by the image's content digest. So the same picture in two
uploads, a subset of an upload, or a moved folder reuses the rows already computed; a shard
is written whole before it is named, so readers in other threads and processes never see
half of one, and nothing is ever rewritten in place. The cache is bounded in size and drops
the least recently used shards first.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FEATURE_DTYPE = np.float16
"""How feature maps are stored: half the disk and memory of float32, same accuracy."""
POOLED_DTYPE = np.float32
"""How pooled features are stored: they are small, and exact float32 lets training on them
retrace the classic training on images step for step."""
DEFAULT_CACHE_BYTES = 4 * 1024**3

MAP = "map"
"""The cut layer's whole feature map, `(height, width, channels)` per image."""
POOLED = ("avg", "max")
"""The map averaged or maximised over height and width, `(channels,)` per image."""
MAP32 = "map32"
"""A whole feature map in float32: the input of layers that train (fine-tuning), where float16's
rounding would change what they learn."""
VARIANTS = (MAP, MAP32, *POOLED)

# Features at most this large (as float32) are read into memory for training; larger ones are
# streamed from disk batch by batch, so a Flatten head on a big cut never holds them all.
IN_MEMORY_BYTES = 512 * 1024**2
ROWS_SUFFIX = ".rows.json"
# A temporary file older than this belongs to an extraction that died.
STALE_SECONDS = 6 * 3600


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"Unknown feature variant `{variant}`. Choose one of: {', '.join(VARIANTS)}.")
    return variant


@dataclass(frozen=True)
class Shard:
    """One extraction's features: row i of every array belongs to `ids[i]`."""

    folder: Path
    name: str
    ids: tuple[str, ...]
    variants: dict[str, tuple[int, ...]]

    def path(self, variant: str) -> Path:
        return self.folder / f"{self.name}.{variant}.npy"

    @property
    def rows_path(self) -> Path:
        return self.folder / f"{self.name}{ROWS_SUFFIX}"

    def array(self, variant: str) -> np.memmap:
        return np.load(self.path(variant), mmap_mode="r")

    def delete(self) -> None:
        """Removes the shard: its rows file first, so it is never seen half there."""
        self.rows_path.unlink(missing_ok=True)
        for variant in self.variants:
            self.path(variant).unlink(missing_ok=True)

    def nbytes(self) -> int:
        total = 0
        for path in (self.rows_path, *(self.path(v) for v in self.variants)):
            try:
                total += path.stat().st_size
            except OSError:
                pass
        return total


class FeatureCache:
    """A folder of feature stores, bounded in total size, evicting the least recently used shards.

    Args:
        folder: Where the stores live (`$TLCORE_HOME/features`).
        max_bytes: Total size kept; the oldest shards are deleted past it.
    """

    def __init__(self, folder: str | Path, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)

    def store(self, key: str) -> "FeatureStore":
        """The features made under one extraction key."""
        return FeatureStore(self, key)

    def shards(self) -> list[Shard]:
        """Every complete shard, least recently used first."""
        if not self.folder.is_dir():
            return []
        found = []
        for rows in self.folder.glob(f"*/*{ROWS_SUFFIX}"):
            shard = _read_shard(rows)
            if shard is not None:
                found.append((_mtime(rows), shard))
        return [shard for _, shard in sorted(found, key=lambda pair: pair[0])]

    def size(self) -> int:
        return sum(shard.nbytes() for shard in self.shards())

    def evict(self, keep: Iterable[str] = ()) -> None:
        """Deletes least recently used shards until the cache fits in `max_bytes`.

        Args:
            keep: Names of shards never deleted now (those being used).
        """
        kept = set(keep)
        shards = self.shards()
        sizes = {shard.name: shard.nbytes() for shard in shards}
        total = sum(sizes.values())
        for shard in shards:
            if total <= self.max_bytes:
                break
            if shard.name in kept:
                continue
            shard.delete()
            total -= sizes[shard.name]

    def remove_stale(self, older_than: float = STALE_SECONDS) -> int:
        """Deletes temporary files left by extractions that died; returns how many."""
        removed = 0
        if not self.folder.is_dir():
            return 0
        limit = time.time() - older_than
        for path in self.folder.glob("*/.*tmp"):
            if _mtime(path) < limit:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class FeatureStore:
    """The features of one extraction key: shards of rows, each row named by an image id."""

    def __init__(self, cache: FeatureCache, key: str):
        self.cache = cache
        self.key = key
        self.folder = cache.folder / key

    def shards(self) -> list[Shard]:
        """Complete shards of this store, most recently written first."""
        if not self.folder.is_dir():
            return []
        found = [(_mtime(p), shard) for p in self.folder.glob(f"*{ROWS_SUFFIX}") if (shard := _read_shard(p))]
        return [shard for _, shard in sorted(found, key=lambda pair: pair[0], reverse=True)]

    def locate(self, ids: Sequence[str], variant: str) -> "Located":
        """Where each id's row of `variant` is, as far as the store has it."""
        check_variant(variant)
        wanted = set(ids)
        places: dict[str, tuple[Shard, int]] = {}
        for shard in self.shards():
            if variant not in shard.variants or not wanted - places.keys():
                continue
            for row, image_id in enumerate(shard.ids):
                if image_id in wanted and image_id not in places:
                    places[image_id] = (shard, row)
        return Located(tuple(ids), variant, places)

    def writer(self, ids: Sequence[str], shapes: dict[str, tuple[int, ...]]) -> "ShardWriter":
        """Starts a new shard holding one row per id of each variant in `shapes` (row shape, no batch)."""
        return ShardWriter(self, ids, shapes)


@dataclass(frozen=True)
class Located:
    """The rows of some ids in a store: which are there, which are missing, and reading them."""

    ids: tuple[str, ...]
    variant: str
    places: dict[str, tuple[Shard, int]]

    @property
    def missing(self) -> list[str]:
        """Ids with no row yet, each once, in order of first appearance."""
        return list(dict.fromkeys(i for i in self.ids if i not in self.places))

    @property
    def shard_names(self) -> set[str]:
        return {shard.name for shard, _ in self.places.values()}

    def touch(self) -> None:
        """Marks the shards read as recently used."""
        for shard in {shard.name: shard for shard, _ in self.places.values()}.values():
            try:
                os.utime(shard.rows_path)
            except OSError:
                pass

    def rows(self, max_bytes: int | None = None):
        """The features in the order of `ids`: a float32 array when small, else `Rows` read from disk.

        Raises:
            KeyError: some ids have no row (see `missing`).
        """
        if self.missing:
            raise KeyError(f"{len(self.missing)} image(s) have no cached features")
        rows = Rows(self)
        limit = IN_MEMORY_BYTES if max_bytes is None else max_bytes
        if rows.nbytes_float32 > limit:
            return rows
        return rows[np.arange(len(rows))].astype(np.float32, copy=False)


class ShardWriter:
    """Writes one shard batch by batch, then publishes it.

    Batches are appended with plain file writes rather than through a memory map, so writing
    features larger than memory never makes them resident in the process.
    """

    def __init__(self, store: FeatureStore, ids: Sequence[str], shapes: dict[str, tuple[int, ...]]):
        store.folder.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.ids = tuple(ids)
        self.name = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}"
        self.variants = {check_variant(v): (len(self.ids), *map(int, shape)) for v, shape in shapes.items()}
        self._files = {}
        self._tmp = {}
        self.count = {v: 0 for v in self.variants}
        for variant, shape in self.variants.items():
            dtype = np.dtype(FEATURE_DTYPE if variant == MAP else POOLED_DTYPE)
            tmp = store.folder / f".{self.name}.{variant}.npy.tmp"
            handle = open(tmp, "w+b")
            np.lib.format.write_array_header_1_0(
                handle, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
            )
            self._files[variant], self._tmp[variant] = (handle, dtype), tmp

    def write(self, batches: dict[str, np.ndarray]) -> None:
        """Appends the next rows of each variant."""
        for variant, batch in batches.items():
            handle, dtype = self._files[variant]
            batch = np.ascontiguousarray(batch, dtype=dtype)
            shape = self.variants[variant]
            if batch.shape[1:] != shape[1:] or self.count[variant] + len(batch) > shape[0]:
                raise ValueError(f"A batch of shape {batch.shape} does not fit features of shape {shape}.")
            handle.write(batch.data)
            self.count[variant] += len(batch)

    def commit(self, keep: Iterable[str] = (), ids: Sequence[str] | None = None) -> Shard:
        """Publishes the shard (arrays first, then its rows file) and trims the cache.

        Args:
            keep: Names of other shards in use, never evicted to make room for this one.
            ids: The ids of the rows written, when fewer than promised (images that could not
                be read were left out); all the promised ids by default.
        """
        ids = self.ids if ids is None else tuple(ids)
        for variant, (handle, dtype) in self._files.items():
            if self.count[variant] != len(ids):
                self.abort()
                raise ValueError(f"The shard got {self.count[variant]} rows of `{variant}` for {len(ids)} ids.")
            shape = (len(ids), *self.variants[variant][1:])
            if shape != self.variants[variant]:
                _rewrite_header(handle, dtype, shape)
            handle.close()
            os.replace(self._tmp[variant], self.store.folder / f"{self.name}.{variant}.npy")
        rows = self.store.folder / f"{self.name}{ROWS_SUFFIX}"
        partial = self.store.folder / f".{self.name}.rows.tmp"
        variants = {v: [len(ids), *s[1:]] for v, s in self.variants.items()}
        partial.write_text(json.dumps({"ids": list(ids), "variants": variants}))
        os.replace(partial, rows)
        shard = _read_shard(rows)
        self.store.cache.evict(keep={self.name, *keep})
        return shard

    def abort(self) -> None:
        for variant, (handle, _) in self._files.items():
            handle.close()
            self._tmp[variant].unlink(missing_ok=True)


class Rows:
    """Rows of located features, read straight from their files when indexed.

    Unlike a memory map, reading never keeps the files' pages mapped in the process, so memory
    use stays at one batch whatever the size of the files. The files are held open, so shards
    evicted from the cache meanwhile can still be read.
    """

    def __init__(self, located: Located):
        index_of: dict[str, int] = {}
        shards: list[Shard] = []
        shard_of, row_of = [], []
        for image_id in located.ids:
            shard, row = located.places[image_id]
            if shard.name not in index_of:
                index_of[shard.name] = len(shards)
                shards.append(shard)
            shard_of.append(index_of[shard.name])
            row_of.append(row)
        self._files = [_OpenArray(shard.path(located.variant)) for shard in shards]
        self.shard_of = np.asarray(shard_of, dtype=np.int64)
        self.row_of = np.asarray(row_of, dtype=np.int64)
        row_shape = self._files[0].shape[1:] if self._files else ()
        self.shape = (len(located.ids), *row_shape)
        self.dtype = self._files[0].dtype if self._files else np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes_float32(self) -> int:
        return 4 * math.prod(self.shape)

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        shards, file_rows = self.shard_of[rows], self.row_of[rows]
        for index in np.unique(shards):
            picked = np.flatnonzero(shards == index)
            order = np.argsort(file_rows[picked], kind="stable")
            out[picked[order]] = self._files[index].read(file_rows[picked][order])
        return out


class _OpenArray:
    """A `.npy` file held open and read row by row with `pread`."""

    def __init__(self, path: Path):
        array = np.load(path, mmap_mode="r")
        self.shape, self.dtype, self.offset = tuple(array.shape), array.dtype, int(array.offset)
        self.row_bytes = self.dtype.itemsize * math.prod(self.shape[1:])
        del array
        self._fd = os.open(path, os.O_RDONLY)

    def __del__(self):
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows in ascending order; one read per run of consecutive rows."""
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        view = out.reshape(len(rows), -1).view(np.uint8)
        start = 0
        while start < len(rows):
            end = start + 1
            while end < len(rows) and rows[end] == rows[end - 1] + 1:
                end += 1
            target = memoryview(view[start:end]).cast("B")
            position = self.offset + int(rows[start]) * self.row_bytes
            done = 0
            while done < len(target):
                read = os.preadv(self._fd, [target[done:]], position + done)
                if not read:
                    raise OSError("A cached feature file is shorter than its header says; delete the feature cache.")
                done += read
            start = end
        return out


def _rewrite_header(handle, dtype, shape) -> None:
    """Gives an open `.npy` file a header for fewer rows than it was begun with, and cuts off the rest."""
    import io

    handle.flush()
    handle.seek(0)
    np.lib.format.read_magic(handle)
    np.lib.format.read_array_header_1_0(handle)
    data_start = handle.tell()
    data_bytes = math.prod(shape) * np.dtype(dtype).itemsize
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    )
    header = buffer.getvalue()
    # A row count with fewer digits may change the header's padded length: then the rows move.
    rows = None
    if len(header) != data_start:
        handle.seek(data_start)
        rows = handle.read(data_bytes)
    handle.seek(0)
    handle.write(header)
    if rows is not None:
        handle.write(rows)
    handle.truncate(len(header) + data_bytes)


def pool(features: np.ndarray, variant: str) -> np.ndarray:
    """Pools feature maps `(n, height, width, channels)` over height and width, in float32."""
    values = np.asarray(features, dtype=np.float32)
    return values.mean(axis=(1, 2)) if variant == "avg" else values.max(axis=(1, 2))


def _read_shard(rows_path: Path) -> Shard | None:
    try:
        data = json.loads(rows_path.read_text())
        name = rows_path.name[: -len(ROWS_SUFFIX)]
        variants = {v: tuple(int(n) for n in shape) for v, shape in data["variants"].items()}
        shard = Shard(rows_path.parent, name, tuple(data["ids"]), variants)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not all(shard.path(v).is_file() for v in variants):
        return None
    return shard


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
