"""Where trainings run: an engine queues them and runs them outside the web server.

`engine()` is the process-wide one, chosen by `$TLCORE_ENGINE`:

- `local` (the default): worker processes on this machine (`tlcore.engines.local`);
- `ray`: Ray actors on a Ray cluster, `$RAY_ADDRESS` or a local one (`tlcore.engines.ray_engine`).
"""

from __future__ import annotations

import os
import threading

from tlcore.engines.base import Engine, JobSpec, ServedJob, Slot

__all__ = ["Engine", "JobSpec", "ServedJob", "Slot", "engine", "ENGINES"]

ENGINES = ("local", "ray")

_ENGINE: Engine | None = None
_ENGINE_LOCK = threading.Lock()


def _make(name: str) -> Engine:
    if name == "local":
        from tlcore.engines.local import LocalEngine

        return LocalEngine()
    if name == "ray":
        from tlcore.engines.ray_engine import RayEngine

        return RayEngine()
    raise ValueError(f"TLCORE_ENGINE must be one of {', '.join(ENGINES)}, not {name!r}")


def engine() -> Engine:
    """The process-wide engine, shared by every browser session of a server."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            from tlcore.dataset import default_work_dir
            from tlcore.storage import remove_leftovers

            from tlcore.runs import default_runs_dir, keep_checkpoints

            # A server starting after a crash tidies what the crash left half done, and gives each
            # training it killed outright the model of its last checkpoint.
            remove_leftovers(default_work_dir())
            keep_checkpoints(default_runs_dir())
            _ENGINE = _make(os.environ.get("TLCORE_ENGINE", "local").strip().lower() or "local")
        return _ENGINE
