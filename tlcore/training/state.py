"""Where a training job stands: a snapshot any thread or process can read (no TensorFlow here)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from tlcore.config import Status
from tlcore.runs import History


@dataclass
class JobState:
    """A snapshot of a job, safe to read from any thread."""

    status: Status = Status.QUEUED
    phase: str = ""
    stage: str = ""
    message: str = ""
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    eta_seconds: float | None = None
    history: dict = field(default_factory=dict)
    best_epoch: int | None = None
    phase_seconds: dict = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = ()
    started: float | None = None
    ended: float | None = None

    @property
    def done(self) -> bool:
        return Status(self.status).done

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or time.time()) - self.started

    @property
    def final(self) -> dict[str, float]:
        """The figures of the model that is (or will be) saved: the restored epoch's, else the last's."""
        from tlcore.runs import METRICS

        metrics = {key: values for key, values in self.history.items() if key in METRICS}
        return History(metrics, best_epoch=self.best_epoch).final()

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["status"] = str(self.status)
        data["classes"] = list(self.classes)
        data["seconds"] = round(self.seconds, 3)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "JobState":
        """The inverse of `to_dict`, as a worker's snapshot arrives in the server."""
        names = {item.name for item in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        values["status"] = Status(values.get("status", Status.QUEUED))
        values["classes"] = tuple(values.get("classes", ()))
        values["unreadable"] = tuple(values.get("unreadable", ()))
        return cls(**values)
