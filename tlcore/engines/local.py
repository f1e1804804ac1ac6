"""The local engine: trainings run in long-lived worker processes on this machine, never in the server."""

from __future__ import annotations

import multiprocessing
import os

from tlcore.config import Status
from tlcore.engines.base import Engine, ServedJob, Slot
from tlcore.training.state import JobState

# How long a new worker may take to import TensorFlow and report ready.
START_SECONDS = 300.0
POLL_SECONDS = 0.5

WORKER_DIED = (
    "Training failed: the process running it ended unexpectedly, most likely because the computer "
    "ran out of memory. Try a smaller batch size or input size, or global average pooling instead "
    "of Flatten. Other trainings were not affected."
)


def default_workers() -> int:
    """`$TLCORE_WORKERS`, else one worker per 4 CPUs (1 on small machines), at most 4."""
    value = os.environ.get("TLCORE_WORKERS", "").strip()
    if value:
        try:
            workers = int(value)
        except ValueError:
            raise ValueError(f"TLCORE_WORKERS must be a whole number of at least 1, not {value!r}") from None
        if workers < 1:
            raise ValueError(f"TLCORE_WORKERS must be a whole number of at least 1, not {value!r}")
        return workers
    return max(1, min(4, (os.cpu_count() or 1) // 4))


class WorkerProcess(Slot):
    """One worker process, started when first needed and replaced when it dies."""

    def __init__(self, threads: int | None = None):
        super().__init__()
        self.threads = threads
        self._process = None
        self._conn = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Starts the process if it is not running (it imports TensorFlow in the background)."""
        from tlcore.engines.worker import serve

        with self._lock:
            if self._process is not None and self._process.is_alive():
                return
            context = multiprocessing.get_context("spawn")  # no fork of a threaded server
            ours, theirs = context.Pipe()
            process = context.Process(target=serve, args=(theirs, self.threads), name="tlcore-worker", daemon=True)
            process.start()
            theirs.close()
            self._process, self._conn = process, ours

    def run(self, job: ServedJob) -> None:
        self.start()
        with self._lock:
            process, conn = self._process, self._conn
            self._job = job
        try:
            conn.send(("train", job.spec))
            self._relay(job, process, conn)
        except (OSError, EOFError, ValueError):
            self._died(job)
        finally:
            with self._lock:
                self._job = None

    def _relay(self, job: ServedJob, process, conn) -> None:
        name = job.run_dir.name
        while True:
            if conn.poll(POLL_SECONDS):
                kind, *rest = conn.recv()
                if kind == "ready":
                    self._device = rest[0]
                elif rest and rest[0] == name:
                    job.report(JobState.from_dict(rest[1]))
                    if kind == "done":
                        return
            elif not process.is_alive():
                self._died(job)
                return

    def _died(self, job: ServedJob) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._process, self._conn = None, None  # the next job starts a new worker
        job.end(Status.FAILED, WORKER_DIED)

    def stop(self, job: ServedJob) -> None:
        with self._lock:
            if self._job is not job or self._conn is None:
                return
            try:
                self._conn.send(("stop", job.run_dir.name))
            except (OSError, ValueError):
                pass

    def kill(self) -> None:
        with self._lock:
            if self._process is not None:
                self._process.kill()

    def close(self) -> None:
        with self._lock:
            process, conn = self._process, self._conn
        if conn is not None:
            conn.close()  # the worker sees the server gone: a training ends interrupted, its model saved
        if process is not None:
            process.join(120)
            if process.is_alive():
                process.kill()


class LocalEngine(Engine):
    """Trains in `workers` worker processes on this machine; the rest of the trainings wait in order.

    Workers start at once (importing TensorFlow takes seconds) and live as long as the engine, so
    a retrain with only head settings changed finds the body loaded and the features cached.
    """

    name = "local"

    def __init__(self, workers: int | None = None, start: bool = True):
        super().__init__(workers if workers is not None else default_workers())
        cpus = os.cpu_count() or 1
        self._threads_per_worker = max(1, cpus // self.workers) if self.workers > 1 else None
        if start:
            with self._condition:
                self._ensure_slots()

    def _make_slot(self, index: int) -> WorkerProcess:
        worker = WorkerProcess(self._threads_per_worker)
        worker.start()
        return worker
