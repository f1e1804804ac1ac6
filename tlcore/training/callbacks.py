"""Everything around `fit`, as Keras callbacks: progress, history, NaN guard, rescue weights, stopping.

`fit` only loops. A callback reads and reports through the job's narrow interface
(`TrainingJob.update`, `.emit`, `.stop_requested`, `.history`, `.run`), so each one can be
tested alone and a test can inject a fault by adding a callback of its own.
"""

from __future__ import annotations

import math
import time

import keras

from tlcore.config import Phase
from tlcore.training.events import BestEpochRestored, EpochEnded, Progress

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


class StopOnRequest(keras.callbacks.Callback):
    """Ends `fit` after the current batch once the user asked the job to stop."""

    def __init__(self, job):
        super().__init__()
        self.job = job

    def _check(self):
        if self.job.stop_requested:
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._check()

    def on_train_batch_end(self, batch, logs=None):
        self._check()


class ProgressReporter(keras.callbacks.Callback):
    """Tells the job which epoch and batch it is at, with an estimate of the time left in the epoch."""

    def __init__(self, job, phase: Phase = Phase.TRAINING):
        super().__init__()
        self.job = job
        self.phase = phase
        self.epoch_start = time.perf_counter()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.epoch_start = time.perf_counter()
        self.job.update(epoch=epoch, step=0, steps=self.params.get("steps") or 0, eta_seconds=None)

    def on_train_batch_end(self, batch, logs=None):
        steps = self.params.get("steps") or 0
        elapsed = time.perf_counter() - self.epoch_start
        eta = elapsed / (batch + 1) * max(steps - batch - 1, 0) if steps else None
        self.job.update(step=batch + 1, steps=steps, eta_seconds=eta)
        self.job.emit(Progress(phase=self.phase, done=batch + 1, total=steps, epoch=self.epoch + 1, eta=eta))


class NanGuard(keras.callbacks.Callback):
    """Fails the training when the loss stops being a number, before that epoch is recorded.

    Keras' own `TerminateOnNaN` only stops, which would save a broken model as finished.
    """

    def on_epoch_end(self, epoch, logs=None):
        for key in METRICS:
            value = (logs or {}).get(key)
            if value is not None and (math.isnan(float(value)) or math.isinf(float(value))):
                raise FloatingPointError(f"{key} is {value}")


class HistoryWriter(keras.callbacks.Callback):
    """Appends each epoch's metrics to the job's history and writes it to the run folder."""

    def __init__(self, job, stage: str):
        super().__init__()
        self.job = job
        self.stage = stage
        self.epoch_start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = {key: float(value) for key, value in (logs or {}).items() if key in METRICS}
        seconds = time.perf_counter() - self.epoch_start
        self.job.record_epoch(metrics, seconds, self.stage)
        self.job.emit(EpochEnded(epoch=epoch + 1, metrics=metrics, seconds=round(seconds, 3), stage=self.stage))


class RescueWeights(keras.callbacks.Callback):
    """Keeps the trained layers' weights as of the last completed epoch, to save them after a failure.

    Args:
        model: The model whose weights change (the head, or the part of it that trains).
    """

    def __init__(self, model):
        super().__init__()
        self.watched = model
        self.weights = None

    def on_epoch_end(self, epoch, logs=None):
        self.weights = self.watched.get_weights()

    def restore(self) -> bool:
        """Puts back the last completed epoch's weights; False when no epoch completed."""
        if self.weights is None:
            return False
        self.watched.set_weights(self.weights)
        return True


class Checkpoint(keras.callbacks.Callback):
    """Saves the assembled model to the run folder after the first epoch, then after an epoch at
    most every `seconds` (so an epoch longer than that is always saved).

    A training whose process is killed outright (out of memory, a server killed with its
    workers) then still leaves the model of a recent epoch; see `Run.keep_checkpoint`. Saving
    takes a while next to an epoch on cached features, hence not after every quick one.
    """

    def __init__(self, ctx, seconds: float):
        super().__init__()
        self.ctx = ctx
        self.seconds = seconds
        self.last: float | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self.ctx.model is None or (self.last is not None and time.monotonic() - self.last < self.seconds):
            return
        job = self.ctx.job
        job.run_folder.save_checkpoint(self.ctx.model, job.state.epoch)
        self.last = time.monotonic()


class BestEpochRecorder(keras.callbacks.Callback):
    """Records which epoch an `EarlyStopping(restore_best_weights=True)` put back, once `fit` ends.

    Must come after the `EarlyStopping` callback, which restores the weights in its own
    `on_train_end`.
    """

    def __init__(self, job, early_stopping: keras.callbacks.EarlyStopping):
        super().__init__()
        self.job = job
        self.early_stopping = early_stopping

    def on_train_end(self, logs=None):
        if self.early_stopping.best_weights is None:
            return
        epoch = int(self.early_stopping.best_epoch) + 1
        self.job.record_best_epoch(epoch)
        metrics = {key: values[epoch - 1] for key, values in self.job.history.metrics.items() if len(values) >= epoch}
        self.job.emit(BestEpochRestored(epoch=epoch, metrics=metrics))


class KeepBestOnStop(keras.callbacks.Callback):
    """When the user stops this stage, puts back the weights of its best epoch so far (lowest validation loss)."""

    def __init__(self, job):
        super().__init__()
        self.job = job
        self.best = math.inf
        self.weights = None
        self.epoch = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss")
        if loss is not None and float(loss) < self.best:
            self.best, self.weights, self.epoch = float(loss), self.model.get_weights(), epoch + 1

    def on_train_end(self, logs=None):
        if self.job.stop_requested and self.weights is not None:
            self.model.set_weights(self.weights)
            self.job.record_best_epoch(self.epoch)
