"""What a training reports while it runs: typed, frozen events that the CLI and the dashboard both read."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import ClassVar

from tlcore.config import Phase, Status


@dataclass(frozen=True)
class Event:
    """Something that happened in a training, at `time` (seconds since the epoch)."""

    kind: ClassVar[str] = "event"
    time: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict:
        data = {"type": self.kind}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            data[item.name] = str(value) if isinstance(value, (Phase, Status)) else value
        return data


@dataclass(frozen=True)
class StatusChanged(Event):
    """The training was queued, started, or ended (finished, stopped or failed)."""

    kind: ClassVar[str] = "status"
    status: Status
    message: str = ""


@dataclass(frozen=True)
class PhaseStarted(Event):
    """Loading the data, extracting features, training or saving began."""

    kind: ClassVar[str] = "phase"
    phase: Phase
    stage: str = ""


@dataclass(frozen=True)
class Progress(Event):
    """Part of a phase is done: images of a split, or batches of an epoch.

    Attributes:
        phase: The phase.
        done: Images or batches done so far.
        total: How many there are.
        split: While extracting: `"train"`, `"validation"` or `"train, view N"`.
        epoch: While training: the epoch, counted from 1.
        eta: Seconds left in this part, when known.
        cached: While extracting: every feature came from the cache.
    """

    kind: ClassVar[str] = "progress"
    phase: Phase
    done: int
    total: int
    split: str | None = None
    epoch: int | None = None
    eta: float | None = None
    cached: bool = False


@dataclass(frozen=True)
class EpochEnded(Event):
    """An epoch ended with these metrics (`loss`, `accuracy`, `val_loss`, `val_accuracy`)."""

    kind: ClassVar[str] = "epoch"
    epoch: int
    metrics: dict
    seconds: float
    stage: str = ""


@dataclass(frozen=True)
class BestEpochRestored(Event):
    """Early stopping put back the weights of the best epoch; the saved model holds them."""

    kind: ClassVar[str] = "best_epoch"
    epoch: int
    metrics: dict


@dataclass(frozen=True)
class StopRequested(Event):
    """The user asked the training to stop after the current batch."""

    kind: ClassVar[str] = "stop_requested"
