"""Run folders: everything about one training, kept on disk so any front end can rebuild it.

`Run` alone knows a run folder's layout; everything else reads and writes runs through it:

    config.json   the model and training settings, and what data it was trained on
    labels.json   class names in the model's output order
    split.json    which images trained it and which measured it
    history.json  one entry per epoch, and which epoch the saved model holds
    status.json   queued, running, finished, stopped, failed; who is running it
    model.keras   the trained model
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import re
import shutil
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tlcore.config import ModelConfig, Phase, Status, TrainConfig
from tlcore.errors import RunError

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
LABELS_FILE = "labels.json"
STATUS_FILE = "status.json"
SPLIT_FILE = "split.json"
MODEL_FILE = "model.keras"
CHECKPOINT_FILE = "checkpoint.keras"  # the model as of a recent epoch, while training runs

# Kept for callers that compare status strings.
QUEUED, RUNNING, FINISHED, STOPPED, FAILED, INTERRUPTED = (s.value for s in Status)
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")

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


@dataclass(frozen=True)
class SplitItem:
    """One image of a run's split: its name in the dataset, label, digest and the file read."""

    name: str
    label: int
    digest: str = ""
    path: str = ""


@dataclass(frozen=True)
class RunSplit:
    """Which images trained a run and which measured it, named as in the dataset."""

    classes: tuple[str, ...]
    train: tuple[SplitItem, ...] = ()
    validation: tuple[SplitItem, ...] = ()
    test: tuple[SplitItem, ...] = ()
    presplit: bool = False

    @classmethod
    def from_dataset(cls, dataset) -> "RunSplit":
        def items(split):
            return tuple(SplitItem(item.name, int(item.label), item.digest, str(item.path)) for item in split)

        return cls(tuple(dataset.classes), items(dataset.train), items(dataset.validation), items(dataset.test),
                   bool(dataset.presplit))

    def items(self, split: str) -> tuple[SplitItem, ...]:
        if split not in ("train", "validation", "test"):
            raise ValueError(f"Unknown split `{split}`. Choose one of: train, validation, test.")
        return getattr(self, split)

    def to_dict(self) -> dict:
        data = {"classes": list(self.classes), "presplit": self.presplit}
        for split in ("train", "validation", "test"):
            data[split] = [{"name": i.name, "label": i.label, "digest": i.digest, "path": i.path} for i in getattr(self, split)]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RunSplit":
        def items(entries):
            found = []
            for entry in entries or []:
                if isinstance(entry, dict):
                    found.append(SplitItem(str(entry.get("name", "")), int(entry["label"]), str(entry.get("digest", "")),
                                           str(entry.get("path", ""))))
                else:  # version 0.1: [path, label]
                    found.append(SplitItem(Path(entry[0]).name, int(entry[1]), "", str(entry[0])))
            return tuple(found)

        return cls(tuple(data.get("classes") or ()), items(data.get("train")), items(data.get("validation")),
                   items(data.get("test")), bool(data.get("presplit", False)))


@dataclass
class History:
    """Per-epoch metrics of a run, and which epoch the saved model holds.

    Attributes:
        metrics: `loss`, `accuracy`, `val_loss`, `val_accuracy`: one value per epoch.
        epoch_seconds: Seconds each epoch took.
        stages: The training stage of each epoch.
        best_epoch: When early stopping restored the best epoch, its number (from 1); the saved
            model holds that epoch's weights. None means the last epoch's.
    """

    metrics: dict[str, list[float]] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    best_epoch: int | None = None

    @property
    def epochs(self) -> int:
        return len(self.metrics.get("loss", []))

    def append(self, metrics: dict[str, float], seconds: float, stage: str) -> None:
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append(float(value))
        self.epoch_seconds.append(round(float(seconds), 3))
        self.stages.append(stage)

    @property
    def saved_epoch(self) -> int | None:
        """The epoch (from 1) whose weights the saved model holds."""
        if self.best_epoch:
            return self.best_epoch
        return self.epochs or None

    def final(self) -> dict[str, float]:
        """The saved model's figures: the restored epoch's, else the last epoch's."""
        epoch = self.saved_epoch
        if not epoch:
            return {}
        return {key: values[epoch - 1] for key, values in self.metrics.items() if len(values) >= epoch}

    def to_dict(self) -> dict:
        return {**{k: list(v) for k, v in self.metrics.items()}, "epoch_seconds": list(self.epoch_seconds),
                "stages": list(self.stages), "best_epoch": self.best_epoch}

    @classmethod
    def from_dict(cls, data: dict | None) -> "History":
        data = data or {}
        metrics = {k: [float(x) for x in data[k]] for k in METRICS if isinstance(data.get(k), list)}
        best = data.get("best_epoch")
        return cls(metrics, list(data.get("epoch_seconds") or []), list(data.get("stages") or []),
                   int(best) if best else None)


@dataclass(frozen=True)
class RunStatus:
    """What `status.json` says, with a run whose process is gone shown as interrupted."""

    status: Status
    message: str = ""
    phase: str = ""
    phases: dict = field(default_factory=dict)
    seconds: float | None = None
    updated: str = ""

    @property
    def done(self) -> bool:
        return self.status.done


def _process_start(pid: int) -> int | None:
    """When a process started (clock ticks since boot, from /proc), or None where unknown."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


_OWN_START = _process_start(os.getpid())


def _alive(pid, started) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    if started is None:
        return True
    # Another process may have the same number now (PID 1 in a new container): compare start times.
    return _process_start(int(pid)) == started


class Run:
    """One run folder. The only code that knows which file holds what.

    Args:
        path: The run folder.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Run) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(str(self.path.resolve()))

    @property
    def name(self) -> str:
        return self.path.name

    # Making and opening --------------------------------------------------------------------

    @classmethod
    def create(cls, runs_dir: str | Path, model_config: ModelConfig, train_config: TrainConfig, data: dict) -> "Run":
        """Makes a new, uniquely named run folder such as `20261123-101500-mobilenet_v2-out_relu`."""
        runs_dir = Path(runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        label = f"{model_config.backbone}-{model_config.cut_layer}"
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")[:40] or "run"
        for attempt in range(1000):
            path = runs_dir / f"{stamp}-{slug}{f'-{attempt}' if attempt else ''}"
            try:
                path.mkdir()
            except FileExistsError:
                continue
            run = cls(path)
            write_json(path / CONFIG_FILE, {"model": model_config.to_dict(), "train": train_config.to_dict(),
                                            "data": dict(data), "created": now_iso()})
            return run
        raise RunError(f"Could not create a new run folder in `{runs_dir}`.")

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """Opens an existing run folder.

        Raises:
            RunError: the folder is not a run.
        """
        run = cls(path)
        if not run.path.is_dir() or read_json(run.path / CONFIG_FILE, None) is None:
            raise RunError(f"`{run.path}` is not a Transfer Lab run folder (it has no {CONFIG_FILE}).")
        return run

    # Settings ------------------------------------------------------------------------------

    @property
    def config(self) -> dict:
        """The whole `config.json`: `model`, `train`, `data` and `created`."""
        return read_json(self.path / CONFIG_FILE, {}) or {}

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.config.get("model"))

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config.get("train"))

    @property
    def data(self) -> dict:
        """What the run was trained on: `source`, `root`, `classes`, `counts`, `presplit`."""
        return self.config.get("data") or {}

    @property
    def created(self) -> str:
        return self.config.get("created", "")

    def write_fine_tuning(self, after: str, layers: int) -> None:
        """Records that the top of the backbone was fine-tuned: the layers after `after`, `layers` of them."""
        config = self.config
        config["fine_tuned"] = {"after": after, "layers": int(layers)}
        write_json(self.path / CONFIG_FILE, config)

    @property
    def fine_tuned(self) -> dict | None:
        """`{"after": layer, "layers": count}` when the run fine-tuned the backbone's top, else None."""
        return self.config.get("fine_tuned")

    def update_data(self, **info) -> None:
        config = self.config
        config.setdefault("data", {}).update(info)
        write_json(self.path / CONFIG_FILE, config)

    # Classes and split ---------------------------------------------------------------------

    def write_labels(self, classes) -> None:
        write_json(self.path / LABELS_FILE, [str(name) for name in classes])

    def labels(self) -> tuple[str, ...]:
        """Class names in the model's output order.

        Raises:
            RunError: the run has none.
        """
        labels = read_json(self.path / LABELS_FILE, None)
        if not labels:
            raise RunError(f"The run `{self.name}` has no class names ({LABELS_FILE}).")
        return tuple(str(name) for name in labels)

    def write_split(self, split: RunSplit) -> None:
        write_json(self.path / SPLIT_FILE, split.to_dict())

    def split(self) -> RunSplit | None:
        data = read_json(self.path / SPLIT_FILE, None)
        return RunSplit.from_dict(data) if isinstance(data, dict) else None

    # History -------------------------------------------------------------------------------

    def write_history(self, history: History) -> None:
        write_json(self.path / HISTORY_FILE, history.to_dict())

    def history(self) -> History:
        return History.from_dict(read_json(self.path / HISTORY_FILE, {}))

    # Status --------------------------------------------------------------------------------

    def mark_live(self, live: bool) -> None:
        """Tells this process's status readers whether it is working on the run now."""
        with _LIVE_LOCK:
            (_LIVE_RUNS.add if live else _LIVE_RUNS.discard)(str(self.path.resolve()))

    def write_status(self, status: Status | str, message: str = "", *, phase: Phase | str = "", **extra) -> None:
        """Records where the run stands, and which process is working on it."""
        data = read_json(self.path / STATUS_FILE, {}) or {}
        data.update(extra)
        data.update(status=str(Status(status)), message=message, phase=str(phase), pid=os.getpid(),
                    process_start=_OWN_START, token=PROCESS_TOKEN, updated=now_iso())
        write_json(self.path / STATUS_FILE, data)

    def status(self) -> RunStatus:
        """The run's status, with a run whose process is gone reported as interrupted."""
        data = read_json(self.path / STATUS_FILE, None)
        if not isinstance(data, dict):
            return RunStatus(Status.INTERRUPTED, "The run has no status file; it never started properly.")
        try:
            status = Status(data.get("status"))
        except ValueError:
            status = Status.INTERRUPTED
        message = str(data.get("message") or "")
        if not status.done:
            if data.get("token") == PROCESS_TOKEN:
                with _LIVE_LOCK:
                    alive = str(self.path.resolve()) in _LIVE_RUNS
            else:
                alive = _alive(data.get("pid"), data.get("process_start"))
            if not alive:
                status = Status.INTERRUPTED
                message = ("Training was interrupted (the program stopped or restarted before it ended). "
                           "The epochs recorded before that are kept.")
        return RunStatus(status, message, "" if status.done else str(data.get("phase") or ""),
                         dict(data.get("phases") or {}), data.get("seconds"), str(data.get("updated") or ""))

    # The model -----------------------------------------------------------------------------

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def has_model(self) -> bool:
        return self.model_path.is_file()

    def model_stamp(self) -> int | None:
        """Changes whenever the saved model does; None without one."""
        try:
            return self.model_path.stat().st_mtime_ns
        except OSError:
            return None

    def save_model(self, model) -> None:
        """Saves the model so that a reader never finds half a file."""
        partial = self.path / f".{MODEL_FILE}.{uuid.uuid4().hex[:8]}.keras"
        try:
            model.save(partial)
            os.replace(partial, self.model_path)
        finally:
            partial.unlink(missing_ok=True)

    def save_checkpoint(self, model, epoch: int) -> None:
        """Keeps the model as of `epoch` (from 1), so a training killed outright still leaves a model."""
        partial = self.path / f".{CHECKPOINT_FILE}.{uuid.uuid4().hex[:8]}.keras"
        try:
            model.save(partial)
            os.replace(partial, self.path / CHECKPOINT_FILE)
            write_json(self.path / ".checkpoint.json", {"epoch": int(epoch), "saved": now_iso()})
        finally:
            partial.unlink(missing_ok=True)

    def keep_checkpoint(self) -> int | None:
        """After a training ended without saving its model, makes the last checkpoint the run's model.

        Returns:
            The epoch the model now holds, or None when there was no checkpoint to keep (a model
            saved at the end always wins: the checkpoint is then removed).
        """
        checkpoint = self.path / CHECKPOINT_FILE
        if not checkpoint.is_file():
            return None
        if self.has_model:
            checkpoint.unlink(missing_ok=True)
            return None
        epoch = (read_json(self.path / ".checkpoint.json", {}) or {}).get("epoch")
        os.replace(checkpoint, self.model_path)
        return int(epoch) if isinstance(epoch, int) else None

    def load_model(self):
        """Loads the saved model with Keras' safe mode.

        Raises:
            RunError: the run has no model (it failed before one was saved) or it is unreadable.
        """
        import keras

        import tlcore.model  # noqa: F401  (registers the layer that runs saved by version 0.1 hold)

        if not self.has_model:
            raise RunError(f"The run `{self.name}` has no saved model (it ended before one was saved).")
        try:
            return keras.saving.load_model(self.model_path, safe_mode=True)
        except Exception as error:
            raise RunError(f"The model of run `{self.name}` could not be loaded: {error}") from error

    def bundle(self) -> bytes:
        """A zip of the model with its class names, settings and history, for download.

        Raises:
            RunError: the run has no saved model.
        """
        if not self.has_model:
            raise RunError(f"The run `{self.name}` has no saved model to download.")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            for name in (MODEL_FILE, LABELS_FILE, CONFIG_FILE, HISTORY_FILE):
                if (self.path / name).is_file():
                    bundle.write(self.path / name, f"{self.name}/{name}")
        return buffer.getvalue()

    def delete(self) -> None:
        """Deletes the run folder; refuses a run that is still training."""
        if not self.status().done:
            raise RunError("This run is still training; stop it before deleting it.")
        shutil.rmtree(self.path)

    def info(self) -> "RunInfo":
        """A snapshot of the run for listing, read once."""
        status = self.status()
        config = self.config
        labels = read_json(self.path / LABELS_FILE, []) or []
        return RunInfo(self.path, self.name, str(status.status), status.message, config, self.history(),
                       tuple(str(n) for n in labels), config.get("created", ""), self.has_model)


@dataclass(frozen=True)
class RunInfo:
    """What the Runs page lists about one run, read from its folder."""

    path: Path
    name: str
    status: str
    message: str
    config: dict
    history_record: History
    classes: tuple[str, ...]
    created: str
    has_model: bool

    @property
    def run(self) -> Run:
        return Run(self.path)

    @property
    def history(self) -> dict:
        """Per-epoch metric lists (and each epoch's stage), as the charts take them."""
        return {**{k: list(v) for k, v in self.history_record.metrics.items()}, "stages": list(self.history_record.stages)}

    @property
    def val_accuracy(self) -> float | None:
        """Validation accuracy of the saved model."""
        return self.history_record.final().get("val_accuracy")

    @property
    def best_val_accuracy(self) -> float | None:
        values = self.history_record.metrics.get("val_accuracy", [])
        return max(values) if values else None

    @property
    def epochs_done(self) -> int:
        return self.history_record.epochs

    @property
    def fine_tuned(self) -> dict | None:
        """Where fine-tuning started (`after`, `layers`), or None for a run that did not fine-tune."""
        return self.config.get("fine_tuned")


def read_run(run_dir: str | Path) -> RunInfo:
    """Reads a run folder without loading its model.

    Raises:
        RunError: the folder is not a run.
    """
    return Run.open(run_dir).info()


def list_runs(runs_dir: str | Path | None = None) -> list[RunInfo]:
    """Every run under `runs_dir`, newest first; folders that are not runs are ignored."""
    runs_dir = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    if not runs_dir.is_dir():
        return []
    found = []
    for child in runs_dir.iterdir():
        if child.is_dir() and (child / CONFIG_FILE).is_file():
            try:
                found.append(read_run(child))
            except RunError:
                continue
    return sorted(found, key=lambda r: (r.created, r.name), reverse=True)


def load_model(run_dir: str | Path):
    """`Run(run_dir).load_model()`."""
    return Run(run_dir).load_model()


def load_labels(run_dir: str | Path) -> tuple[str, ...]:
    """`Run(run_dir).labels()`."""
    return Run(run_dir).labels()


def keep_checkpoints(runs_dir: str | Path) -> list[str]:
    """Gives every interrupted run under `runs_dir` (and its workspaces) the model of its last checkpoint.

    A server starting after a crash calls it: a training killed outright (its process gone, so
    no clean-up ran) keeps the model of its last checkpointed epoch. Returns the runs changed.
    """
    root = Path(runs_dir)
    folders = [root, *sorted((root / "workspaces").glob("*"))] if root.is_dir() else []
    kept = []
    for folder in folders:
        for child in sorted(folder.glob(f"*/{CHECKPOINT_FILE}")):
            run = Run(child.parent)
            status = run.status()
            if status.status != Status.INTERRUPTED:
                continue
            epoch = run.keep_checkpoint()
            if epoch is not None:
                run.write_status(Status.INTERRUPTED, f"{status.message} The model from epoch {epoch} is saved.")
                kept.append(run.name)
    return kept


def delete_run(run_dir: str | Path) -> None:
    """`Run.open(run_dir).delete()`."""
    Run.open(run_dir).delete()
