"""Frozen-backbone features: computed once per image, cached on disk, reused across runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

FEATURE_DTYPE = np.float16
DEFAULT_CACHE_BYTES = 4 * 1024**3
# Bump when the way features are computed changes, so stale caches are never reused.
FEATURE_FORMAT = 1


def feature_key(model_key: dict, paths) -> str:
    """Names the features of these image files under these backbone settings.

    A file is identified by its path, size and modification time, so an edited image is
    extracted again.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": FEATURE_FORMAT, **model_key}, sort_keys=True).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"\n{os.path.abspath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


class FeatureCache:
    """A folder of `.npy` feature arrays, bounded in size, evicting the least recently used.

    Args:
        folder: Where the arrays live.
        max_bytes: Total size kept; older entries are deleted past it.
    """

    def __init__(self, folder: str | Path, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def get(self, key: str):
        """The cached array, memory-mapped read-only, or None."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # marks it recently used
        return array

    def create(self, key: str, shape: tuple[int, ...]) -> "FeatureWriter":
        """Starts writing a new entry; it becomes visible only when `commit()` is called."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return FeatureWriter(self, key, shape)

    def entries(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("*.npy"), key=lambda p: p.stat().st_mtime)

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.entries())

    def evict(self, keep: str | None = None) -> None:
        """Deletes least recently used entries until the cache fits in `max_bytes`."""
        entries = self.entries()
        total = sum(p.stat().st_size for p in entries)
        for path in entries:
            if total <= self.max_bytes:
                break
            if keep and path.stem == keep:
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class FeatureWriter:
    """Writes features batch by batch into a memory-mapped file, then publishes it."""

    def __init__(self, cache: FeatureCache, key: str, shape: tuple[int, ...]):
        self.cache = cache
        self.key = key
        self.tmp = cache.folder / f".{key}.{uuid.uuid4().hex[:8]}.npy.tmp"
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=FEATURE_DTYPE, shape=shape)
        self.count = 0

    def write(self, batch) -> None:
        batch = np.asarray(batch)
        self.array[self.count : self.count + len(batch)] = batch
        self.count += len(batch)

    def commit(self):
        """Publishes the entry and returns it memory-mapped read-only."""
        self.array.flush()
        del self.array
        os.replace(self.tmp, self.cache._path(self.key))
        self.cache.evict(keep=self.key)
        return self.cache.get(self.key)

    def abort(self) -> None:
        self.array = None
        self.tmp.unlink(missing_ok=True)

