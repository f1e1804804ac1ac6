"""Run folders: everything about one training, kept on disk so any front end can rebuild it."""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import threading
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tlcore.errors import RunError

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
LABELS_FILE = "labels.json"
STATUS_FILE = "status.json"
SPLIT_FILE = "split.json"
MODEL_FILE = "model.keras"

RUNNING, FINISHED, STOPPED, FAILED, INTERRUPTED = "running", "finished", "stopped", "failed", "interrupted"
QUEUED = "queued"

# Identifies this process, so a run marked running by a process that has since died is
# recognised as interrupted rather than shown as running forever.
PROCESS_TOKEN = uuid.uuid4().hex
_LIVE_RUNS: set[str] = set()
_LIVE_LOCK = threading.Lock()


def default_runs_dir() -> Path:
    """`$TLCORE_RUNS`, else `runs/` in the current folder."""
    return Path(os.environ.get("TLCORE_RUNS") or "runs")


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def write_json(path: Path, data) -> None:
    """Writes JSON atomically: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def new_run_dir(runs_dir: str | Path, label: str) -> Path:
    """Creates a fresh, uniquely named run folder such as `20261123-101500-mobilenet_v2`."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")[:40] or "run"
    for attempt in range(1000):
        suffix = f"-{attempt}" if attempt else ""
        path = runs_dir / f"{stamp}-{slug}{suffix}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError(f"Could not create a new run folder in `{runs_dir}`.")


def mark_live(run_dir: Path, live: bool) -> None:
    with _LIVE_LOCK:
        (_LIVE_RUNS.add if live else _LIVE_RUNS.discard)(str(Path(run_dir).resolve()))


def write_status(run_dir: Path, status: str, message: str = "", **extra) -> None:
    data = read_json(Path(run_dir) / STATUS_FILE, {}) or {}
    data.update(extra)
    data.update(status=status, message=message, pid=os.getpid(), token=PROCESS_TOKEN, updated=now_iso())
    write_json(Path(run_dir) / STATUS_FILE, data)


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def read_status(run_dir: Path) -> dict:
    """The run's status, with a run whose process is gone reported as `interrupted`."""
    run_dir = Path(run_dir)
    data = read_json(run_dir / STATUS_FILE, None)
    if data is None:
        return {"status": INTERRUPTED, "message": "The run has no status file; it never started properly."}
    if data.get("status") in (RUNNING, QUEUED):
        if data.get("token") == PROCESS_TOKEN:
            with _LIVE_LOCK:
                alive = str(run_dir.resolve()) in _LIVE_RUNS
        else:
            alive = _pid_alive(data.get("pid"))
        if not alive:
            data = dict(data)
            data["status"] = INTERRUPTED
            data["message"] = (
                "Training was interrupted (the program stopped or restarted before it ended). "
                "The epochs recorded before that are kept."
            )
    return data


@dataclass(frozen=True)
class RunInfo:
    """What the Runs page lists about one run, read from its folder."""

    path: Path
    name: str
    status: str
    message: str
    config: dict
    history: dict
    classes: tuple[str, ...]
    created: str
    has_model: bool

    @property
    def best_val_accuracy(self) -> float | None:
        values = [v for v in self.history.get("val_accuracy", []) if v is not None]
        return max(values) if values else None

    @property
    def epochs_done(self) -> int:
        return len(self.history.get("loss", []))


def read_run(run_dir: str | Path) -> RunInfo:
    """Reads a run folder without loading its model.

    Raises:
        RunError: the folder is not a run.
    """
    run_dir = Path(run_dir)
    config = read_json(run_dir / CONFIG_FILE, None)
    if not run_dir.is_dir() or config is None:
        raise RunError(f"`{run_dir}` is not a Transfer Lab run folder (it has no {CONFIG_FILE}).")
    status = read_status(run_dir)
    return RunInfo(
        path=run_dir,
        name=run_dir.name,
        status=status.get("status", INTERRUPTED),
        message=status.get("message", ""),
        config=config,
        history=read_json(run_dir / HISTORY_FILE, {}) or {},
        classes=tuple(read_json(run_dir / LABELS_FILE, []) or []),
        created=config.get("created", ""),
        has_model=(run_dir / MODEL_FILE).is_file(),
    )


def list_runs(runs_dir: str | Path | None = None) -> list[RunInfo]:
    """Every run under `runs_dir`, newest first; folders that are not runs are ignored."""
    runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    if not runs_dir.is_dir():
        return []
    runs = []
    for child in runs_dir.iterdir():
        if child.is_dir() and (child / CONFIG_FILE).is_file():
            try:
                runs.append(read_run(child))
            except RunError:
                continue
    return sorted(runs, key=lambda r: (r.created, r.name), reverse=True)


def delete_run(run_dir: str | Path) -> None:
    """Deletes a run folder; refuses a run that is still training."""
    info = read_run(run_dir)
    if info.status in (RUNNING, QUEUED):
        raise RunError("This run is still training; stop it before deleting it.")
    shutil.rmtree(info.path)


def load_model(run_dir: str | Path):
    """Loads a run's saved model with Keras' safe mode.

    Raises:
        RunError: the run has no model (it failed before one was saved) or it is unreadable.
    """
    import keras

    import tlcore.model  # noqa: F401  (registers the preprocessing layer for loading)

    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise RunError(f"The run `{Path(run_dir).name}` has no saved model (it ended before one was saved).")
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except Exception as error:
        raise RunError(f"The model of run `{Path(run_dir).name}` could not be loaded: {error}") from error


def load_labels(run_dir: str | Path) -> tuple[str, ...]:
    """Class names in the model's output order."""
    labels = read_json(Path(run_dir) / LABELS_FILE, None)
    if not labels:
        raise RunError(f"The run `{Path(run_dir).name}` has no class names ({LABELS_FILE}).")
    return tuple(labels)


def export_bundle(run_dir: str | Path) -> bytes:
    """A zip of the run's model with its class names, settings and history, for download.

    Raises:
        RunError: the run has no saved model.
    """
    import io

    run_dir = Path(run_dir)
    if not (run_dir / MODEL_FILE).is_file():
        raise RunError(f"The run `{run_dir.name}` has no saved model to download.")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name in (MODEL_FILE, LABELS_FILE, CONFIG_FILE, HISTORY_FILE):
            if (run_dir / name).is_file():
                bundle.write(run_dir / name, f"{run_dir.name}/{name}")
    return buffer.getvalue()
