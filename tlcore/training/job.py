"""A training job: runs its stages in a background thread, reports typed events, stops on request."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras

from tlcore.config import ModelConfig, Phase, Status, TrainConfig
from tlcore.errors import Stopped, TransferLabError
from tlcore.features import FeatureCache
from tlcore.model import check_num_classes
from tlcore.runs import History, Run, RunSplit, default_runs_dir
from tlcore.training.events import Event, PhaseStarted, StatusChanged, StopRequested
from tlcore.training.state import JobState
from tlcore.training.stages import StageContext, stages_for


class TrainingJob:
    """One training, run in a background thread and observed through events and snapshots.

    Settings are checked before anything is written; then a run folder is made at once, so a
    queued training is already listed.

    Args:
        data: A dataset folder or zip path, or a loaded `tlcore.dataset.Dataset`.
        model_config: Backbone, cut and head settings.
        train_config: Optimiser, epochs and the rest.
        runs_dir: Where the run folder is created (`$TLCORE_RUNS` or `runs/` by default).
        work_dir: Where unpacked datasets and cached features are kept (`$TLCORE_HOME`).
        on_event: Called with every `tlcore.training.events.Event` as it happens, from the
            training's thread.
        callbacks: Extra Keras callbacks for every `fit`, after the job's own.
        run: A run folder already made for this training (by a server that queued it); a new
            one under `runs_dir` when None.

    Raises:
        ModelConfigError: a setting that cannot be used.
    """

    def __init__(
        self,
        data,
        model_config: ModelConfig | None = None,
        train_config: TrainConfig | None = None,
        runs_dir: str | Path | None = None,
        work_dir: str | Path | None = None,
        on_event: Callable[[Event], None] | None = None,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        run: Run | None = None,
    ):
        from tlcore.dataset import data_source, default_work_dir

        self.model_config = (model_config or ModelConfig()).resolved()
        self.train_config = (train_config or TrainConfig()).resolved()
        self.data = data
        self.work_dir = Path(work_dir) if work_dir is not None else default_work_dir()
        self.on_event = on_event
        self.extra_callbacks = list(callbacks)
        self.history = History()
        settings = self.train_config
        self.state = JobState(epochs=settings.epochs + (settings.fine_tune_epochs if settings.fine_tunes else 0))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interrupted: str | None = None
        self._thread: threading.Thread | None = None
        self._context: StageContext | None = None
        source = data_source(data)
        self.run_folder = run or Run.create(runs_dir if runs_dir is not None else default_runs_dir(),
                                            self.model_config, self.train_config, {"source": source})
        self.run_folder.mark_live(True)
        self.run_folder.write_status(Status.QUEUED)

    @property
    def run_dir(self) -> Path:
        return self.run_folder.path

    # Observing -----------------------------------------------------------------------------

    def snapshot(self) -> JobState:
        with self._lock:
            return dataclasses.replace(
                self.state,
                history={k: list(v) for k, v in self.state.history.items()},
                phase_seconds=dict(self.state.phase_seconds),
            )

    @property
    def status(self) -> Status:
        return self.state.status

    # What stages and callbacks use -----------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Hands an event to `on_event`; the job keeps none (its state says where it is)."""
        if self.on_event is not None:
            self.on_event(event)

    def update(self, **changes) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self.state, key, value)

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @contextlib.contextmanager
    def phase(self, phase: Phase):
        """Marks a phase of the work: shown to users, timed, written to the run's status."""
        start = time.perf_counter()
        self.update(phase=str(phase), step=0, steps=0, eta_seconds=None)
        self.emit(PhaseStarted(phase=phase, stage=self.state.stage))
        self.run_folder.write_status(Status.RUNNING, phase=phase)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                seconds = self.state.phase_seconds
                seconds[str(phase)] = round(seconds.get(str(phase), 0.0) + elapsed, 3)

    def record_epoch(self, metrics: dict[str, float], seconds: float, stage: str) -> None:
        """Adds a completed epoch to the history, in memory and in the run folder."""
        with self._lock:
            self.history.append(metrics, seconds, stage)
            self.state.history = {**{k: list(v) for k, v in self.history.metrics.items()},
                                  "epoch_seconds": list(self.history.epoch_seconds), "stages": list(self.history.stages)}
            self.state.epoch = self.history.epochs
        self.run_folder.write_history(self.history)

    def note_unreadable(self, items) -> None:
        """Records images TensorFlow could not decode, which training leaves out."""
        names = [item.name or Path(item.path).name for item in items]
        if not names:
            return
        with self._lock:
            self.state.unreadable = tuple(dict.fromkeys((*self.state.unreadable, *names)))

    def note_fine_tuning(self, boundary: str, layers: int) -> None:
        """Records where fine-tuning starts; the saved model no longer holds an earlier best epoch."""
        self.run_folder.write_fine_tuning(boundary, layers)
        with self._lock:
            self.history.best_epoch = None
            self.state.best_epoch = None

    def record_best_epoch(self, epoch: int) -> None:
        """Notes that the model now holds the weights of `epoch` (from 1), as early stopping restored them."""
        with self._lock:
            self.history.best_epoch = epoch
            self.state.best_epoch = epoch
        self.run_folder.write_history(self.history)

    # Control -------------------------------------------------------------------------------

    def start(self) -> "TrainingJob":
        self._thread = threading.Thread(target=self.run, name=f"train-{self.run_dir.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Asks the job to stop after the current batch; the model trained so far is kept."""
        self._stop.set()
        self.emit(StopRequested())

    def interrupt(self, message: str) -> None:
        """Stops after the current batch, keeping the model so far, and records the run as interrupted."""
        self._interrupted = message
        self.stop()

    def cancel(self) -> None:
        """Ends a job that never started, keeping its run folder as a record."""
        self._stop.set()
        self._finish(Status.STOPPED, "Cancelled before it started.")

    def wait(self, timeout: float | None = None) -> JobState:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    # Work ----------------------------------------------------------------------------------

    def run(self) -> JobState:
        """Runs the whole job in the calling thread; `start()` runs it in a new one."""
        self.update(status=Status.RUNNING, started=time.time())
        self.run_folder.write_status(Status.RUNNING)
        self.emit(StatusChanged(status=Status.RUNNING))
        try:
            self._work()
            if self._interrupted:
                self._finish(Status.INTERRUPTED, f"{self._interrupted} The model trained so far is saved.")
            elif self._stop.is_set():
                self._finish(Status.STOPPED, "Stopped by the user; the model trained so far is saved.")
            else:
                self._finish(Status.FINISHED, "")
        except Stopped:
            if self._interrupted:
                self._finish(Status.INTERRUPTED, f"{self._interrupted} It had not begun training; no model was saved.")
            else:
                self._finish(Status.STOPPED, "Stopped by the user before training began; no model was saved.")
        except BaseException as error:  # noqa: BLE001  (the job must always end with a status)
            message = explain_failure(error)
            if self._save_rescued():
                message += " The model from the last completed epoch is saved."
            self._finish(Status.FAILED, message)
        finally:
            # A finished job keeps its state only: the model, body and features are let go, and
            # with them the callbacks, which hold the model.
            self._context = None
            self.extra_callbacks = []
            self._keep_work_folder_within_budget()
        return self.snapshot()

    def _keep_work_folder_within_budget(self) -> None:
        from tlcore.storage import enforce_budget, live_paths

        try:
            enforce_budget(self.work_dir, keep=live_paths(self.run_dir.parent))
        except OSError:
            pass  # tidying is worth no failure

    def _finish(self, status: Status, message: str) -> None:
        unreadable = self.state.unreadable
        if unreadable and status != Status.STOPPED:
            listed = ", ".join(unreadable[:5]) + (f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else "")
            note = (f"{len(unreadable)} image(s) could not be read and were left out: {listed}. "
                    "Open them on your computer; re-save or remove them.")
            message = f"{message} {note}".strip()
        kept = self.run_folder.keep_checkpoint()  # the final model, when saved, wins over the checkpoint
        if kept is not None:
            message = f"{message} The model from epoch {kept} is saved.".strip()
        self.update(status=status, message=message, ended=time.time(), phase="", eta_seconds=None)
        state = self.snapshot()
        self.run_folder.write_status(status, message, phases=state.phase_seconds, seconds=round(state.seconds, 3),
                                     unreadable=list(state.unreadable))
        self.run_folder.mark_live(False)
        self.emit(StatusChanged(status=status, message=message))

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Stopped()

    def _work(self) -> None:
        from tlcore.extraction import frozen_body

        with self.phase(Phase.LOADING):
            dataset = self._load_dataset()
            check_num_classes(len(dataset.classes))
            self.update(classes=tuple(dataset.classes))
            self.run_folder.update_data(root=str(dataset.root), classes=list(dataset.classes), counts=dataset.counts(),
                                        presplit=dataset.presplit, folders=dict(dataset.folders))
            self.run_folder.write_labels(dataset.classes)
            self.run_folder.write_split(RunSplit.from_dataset(dataset))
            if not dataset.train or not dataset.validation:
                raise TransferLabError(
                    "Training needs images in both the training and the validation split; add more images to each class."
                )
            self._check_stop()
            kept = frozen_body(self.model_config)
        self._check_stop()
        # Seeded here, after everything that may draw random numbers (the first build of an
        # architecture, loading weights), so the same seed always gives the same head.
        keras.utils.set_random_seed(self.train_config.seed)
        context = StageContext(self.model_config, self.train_config, dataset, kept, FeatureCache(self.work_dir / "features"),
                               self, list(self.extra_callbacks))
        self._context = context
        model = None
        for name, stage in stages_for(self.train_config):
            self.update(stage=name)
            model = stage(context)
        with self.phase(Phase.SAVING):
            self.run_folder.save_model(model)

    def _load_dataset(self):
        from tlcore import dataset as datasets

        if isinstance(self.data, datasets.Dataset):
            return self.data
        return datasets.load_dataset(
            self.data, val_split=self.train_config.val_split, seed=self.train_config.seed, work_dir=self.work_dir
        )

    def _save_rescued(self) -> bool:
        """After a failure, saves the model as of the last completed epoch, if there is one."""
        context = self._context
        if context is None or context.rescue is None or context.model is None:
            return False
        try:
            if not context.rescue.restore():
                return False
            self.run_folder.save_model(context.model)
            return True
        except Exception:  # noqa: BLE001  (a failed rescue must not hide the first failure)
            return False


def explain_failure(error: BaseException) -> str:
    """Turns an exception from inside training into a sentence a user can act on."""
    if isinstance(error, TransferLabError):
        return str(error)
    if isinstance(error, FloatingPointError):
        return (
            "Training failed: the loss became NaN (not a number), which usually means the "
            "learning rate is too high. Try a learning rate 10 times smaller."
        )
    name = type(error).__name__
    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else name
    if isinstance(error, MemoryError) or name == "ResourceExhaustedError":
        return (
            "Training failed: the computer ran out of memory. Try a smaller batch size, a smaller "
            "input size, or global average pooling instead of Flatten."
        )
    if name == "InvalidArgumentError" and "decode" in text.lower():
        return f"Training failed: an image could not be decoded ({text}). Remove it and try again."
    return f"Training failed: {name}: {text}"


def train(data, model_config=None, train_config=None, runs_dir=None, work_dir=None, on_event=None, callbacks=()) -> TrainingJob:
    """Trains in the calling thread and returns the finished job (see `TrainingJob`)."""
    job = TrainingJob(data, model_config, train_config, runs_dir, work_dir, on_event, callbacks)
    job.run()
    return job


def result_dict(job: TrainingJob) -> dict:
    """What `python -m tlcore train --json` prints: the run, its status and the saved model's figures."""
    state = job.snapshot()
    final = state.final
    return {
        "run_dir": str(job.run_dir),
        "status": str(state.status),
        "message": state.message,
        "classes": list(state.classes),
        "history": {k: state.history.get(k, []) for k in ("loss", "accuracy", "val_loss", "val_accuracy")},
        "best_epoch": state.best_epoch,
        "val_accuracy": final.get("val_accuracy"),
        "val_loss": final.get("val_loss"),
        "seconds": round(state.seconds, 3),
        "phase_seconds": state.phase_seconds,
    }
