"""One training at a time per server: a queue of training jobs served by one worker thread."""

from __future__ import annotations

import collections
import threading

from tlcore.training import TrainingJob


class JobManager:
    """Runs submitted training jobs one after another, in submission order.

    Front ends submit, then poll `get(job_id)`; a job's id is its run folder's name, so a page
    reloaded in the browser finds its job again.
    """

    def __init__(self):
        self._jobs: dict[str, TrainingJob] = {}
        self._queue: collections.deque[TrainingJob] = collections.deque()
        self._active: TrainingJob | None = None
        self._condition = threading.Condition()
        self._worker: threading.Thread | None = None

    def submit(self, data, model_config=None, train_config=None, runs_dir=None, work_dir=None) -> TrainingJob:
        """Queues a training; it starts as soon as the jobs before it have ended."""
        job = TrainingJob(data, model_config, train_config, runs_dir=runs_dir, work_dir=work_dir)
        with self._condition:
            self._jobs[job.run_dir.name] = job
            self._queue.append(job)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name="training-queue", daemon=True)
                self._worker.start()
            self._condition.notify_all()
        return job

    def _serve(self) -> None:
        while True:
            with self._condition:
                while not self._queue:
                    self._condition.wait()
                job = self._queue.popleft()
                self._active = job
            try:
                job.run()
            finally:
                with self._condition:
                    self._active = None
                    self._condition.notify_all()

    def get(self, job_id: str) -> TrainingJob | None:
        with self._condition:
            return self._jobs.get(job_id)

    def jobs(self) -> list[TrainingJob]:
        """Every job submitted to this server, oldest first."""
        with self._condition:
            return list(self._jobs.values())

    def active(self) -> TrainingJob | None:
        """The job training now, if any."""
        with self._condition:
            return self._active

    def position(self, job_id: str) -> int | None:
        """0 while training, 1 for the next in line, and so on; None once it has ended."""
        with self._condition:
            if self._active is not None and self._active.run_dir.name == job_id:
                return 0
            for place, job in enumerate(self._queue, start=1):
                if job.run_dir.name == job_id:
                    return place
        return None

    def stop(self, job_id: str) -> None:
        """Stops a training after its current batch, or takes a waiting one out of the queue."""
        with self._condition:
            job = self._jobs.get(job_id)
            if job is None:
                return
            if job in self._queue:
                self._queue.remove(job)
                job.cancel()
                return
        job.stop()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Blocks until no job is queued or running; False on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._queue and self._active is None, timeout)


_MANAGER: JobManager | None = None
_MANAGER_LOCK = threading.Lock()


def manager() -> JobManager:
    """The process-wide job manager, shared by every browser session of a server."""
    global _MANAGER
    with _MANAGER_LOCK:
        if _MANAGER is None:
            from tlcore.dataset import default_work_dir
            from tlcore.storage import remove_leftovers

            # A server starting after a crash tidies what the crash left half done.
            remove_leftovers(default_work_dir())
            _MANAGER = JobManager()
        return _MANAGER
