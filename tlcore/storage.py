"""The work folder's budget: what takes its space, removing what no training needs, and leftovers of crashes.

The work folder (`$TLCORE_HOME`) holds unpacked datasets, converted copies, kept image checks,
cached features and uploads on their way in. All of it can be made again from the user's files,
so when the folder outgrows its budget the least recently used parts go first, except what a
queued or running training still reads and anything touched in the last few minutes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tlcore.archive import remove_tree

PARTS = ("uploads", "datasets", "converted", "checks", "features")
# Nothing used this recently is removed: another thread may be about to read it.
MIN_AGE_SECONDS = 600
# Temporary files and half-unpacked folders older than this belong to work that died.
STALE_SECONDS = 3600


@dataclass(frozen=True)
class Entry:
    """One removable piece of the work folder: a dataset folder, a converted copy, a feature shard..."""

    part: str
    path: Path
    size: int
    used: float


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def entries(work_dir: str | Path) -> list[Entry]:
    """Everything removable in the work folder, least recently used first."""
    from tlcore.features import FeatureCache

    work_dir = Path(work_dir)
    found: list[Entry] = []
    for part, pattern in (("uploads", "*/*"), ("datasets", "*"), ("converted", "*/*.png"), ("checks", "*.json")):
        for path in (work_dir / part).glob(pattern):
            if path.name.startswith("."):
                continue
            found.append(Entry(part, path, _size(path), _mtime(path)))
    for shard in FeatureCache(work_dir / "features").shards():
        found.append(Entry("features", shard.rows_path, shard.nbytes(), _mtime(shard.rows_path)))
    return sorted(found, key=lambda entry: entry.used)


def usage(work_dir: str | Path) -> dict[str, int]:
    """Bytes taken by each part of the work folder, and in all (`"total"`)."""
    work_dir = Path(work_dir)
    sizes = {part: _size(work_dir / part) if (work_dir / part).exists() else 0 for part in PARTS}
    sizes["total"] = sum(sizes.values())
    return sizes


def enforce_budget(work_dir: str | Path, budget: int | None = None, keep: Iterable[str | Path] = ()) -> list[Path]:
    """Removes the least recently used parts of the work folder until it fits in `budget` bytes.

    Args:
        work_dir: The work folder.
        budget: Bytes allowed; `tlcore.limits.Limits.work_budget_bytes` by default.
        keep: Paths never removed now (datasets and copies a live training reads).

    Returns:
        What was removed.
    """
    from tlcore.features import FeatureCache
    from tlcore.limits import current

    work_dir = Path(work_dir)
    budget = current().work_budget_bytes if budget is None else int(budget)
    kept = {Path(path).resolve() for path in keep}
    found = entries(work_dir)
    total = usage(work_dir)["total"]
    removed = []
    now = time.time()
    shards = {shard.rows_path: shard for shard in FeatureCache(work_dir / "features").shards()}
    for entry in found:
        if total <= budget:
            break
        if now - entry.used < MIN_AGE_SECONDS or entry.path.resolve() in kept:
            continue
        if entry.part == "features":
            shard = shards.get(entry.path)
            if shard is None:
                continue
            shard.delete()
        elif entry.path.is_dir():
            remove_tree(entry.path)
        else:
            entry.path.unlink(missing_ok=True)
        total -= entry.size
        removed.append(entry.path)
    return removed


def live_paths(runs_dir: str | Path) -> set[Path]:
    """The datasets and image files that queued and running trainings under `runs_dir` read."""
    from tlcore.runs import list_runs

    paths: set[Path] = set()
    for info in list_runs(runs_dir):
        if info.status not in ("queued", "running"):
            continue
        root = (info.config.get("data") or {}).get("root") or (info.config.get("data") or {}).get("source")
        if root:
            paths.add(Path(root))
        split = info.run.split()
        if split is not None:
            paths.update(Path(item.path) for item in (*split.train, *split.validation, *split.test) if item.path)
    return paths


def remove_leftovers(work_dir: str | Path, older_than: float = STALE_SECONDS) -> int:
    """Deletes temporary files and half-made folders left by work that died (a killed server); returns how many."""
    from tlcore.features import FeatureCache

    work_dir = Path(work_dir)
    limit = time.time() - older_than
    count = FeatureCache(work_dir / "features").remove_stale(older_than)
    for part in ("datasets", "converted", "checks", "uploads"):
        folder = work_dir / part
        if not folder.is_dir():
            continue
        for path in list(folder.rglob(".*")):
            if not (path.name.endswith(".partial") or path.name.endswith(".tmp")) or _mtime(path) >= limit:
                continue
            if path.is_dir():
                remove_tree(path)
            else:
                path.unlink(missing_ok=True)
            count += 1
    return count
