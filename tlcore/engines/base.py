"""What every engine shares: the queue of trainings, their places in it, and the server's view of a job.

An engine runs trainings somewhere else than the web server (worker processes, a Ray cluster)
and keeps, for each, a `ServedJob`: its run folder and the latest `JobState` the worker sent.
Subclasses say how one slot runs one job (`Engine._make_slot`); the queue is the same for all.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tlcore.config import ModelConfig, Status, TrainConfig
from tlcore.runs import Run, default_runs_dir
from tlcore.training.state import JobState

# Environment a worker takes from the server with each job: where things are, and which limits hold.
FORWARDED_PREFIXES = ("TLCORE_", "KERAS_HOME", "TF_CPP_MIN_LOG_LEVEL")
# Until a training has ended on this server, a queued one is expected to take this long.
DEFAULT_JOB_SECONDS = 60.0


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run a training queued by the server (picklable)."""

    run_dir: str
    data: object
    model_config: ModelConfig
    train_config: TrainConfig
    work_dir: str
    env: dict

    @property
    def name(self) -> str:
        return Path(self.run_dir).name


def forwarded_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key.startswith(FORWARDED_PREFIXES)}


class ServedJob:
    """A training as the server sees it: its run folder and the state its worker last reported.

    Pages use it as they would a `tlcore.training.TrainingJob`: `snapshot()`, `run_dir`,
    `run_folder`, `data`, `model_config`, `train_config`.
    """

    def __init__(self, spec: JobSpec, run_folder: Run, engine: "Engine"):
        self.spec = spec
        self.run_folder = run_folder
        # The engine's name for the job: its run folder's absolute path (run folders of different
        # workspaces share a name when two students start in the same second).
        self.id = str(run_folder.path)
        self.data = spec.data
        self.model_config = spec.model_config
        self.train_config = spec.train_config
        self._engine = engine
        self._lock = threading.Lock()
        settings = spec.train_config
        self._state = JobState(epochs=settings.epochs + (settings.fine_tune_epochs if settings.fine_tunes else 0))
        self._ended = threading.Event()

    @property
    def run_dir(self) -> Path:
        return self.run_folder.path

    @property
    def status(self) -> Status:
        return self.snapshot().status

    def snapshot(self) -> JobState:
        with self._lock:
            return dataclasses.replace(self._state, history={k: list(v) for k, v in self._state.history.items()},
                                       phase_seconds=dict(self._state.phase_seconds))

    def report(self, state: JobState) -> None:
        """Takes the state a worker sent; a job that has ended stays ended."""
        with self._lock:
            if self._state.done:
                return
            self._state = state
        if state.done:
            if not self.run_folder.status().done:  # the worker could not write it (it never began)
                self.run_folder.write_status(state.status, state.message)
            self.run_folder.mark_live(False)
            self._ended.set()

    def end(self, status: Status, message: str) -> None:
        """Ends the job from the server's side (cancelled, or its worker died), in memory and on disk."""
        with self._lock:
            if self._state.done:
                return
            self._state = dataclasses.replace(self._state, status=status, message=message, phase="",
                                              eta_seconds=None, ended=time.time())
        kept = self.run_folder.keep_checkpoint()
        if kept is not None:
            message = f"{message} The model from epoch {kept} is saved."
            with self._lock:
                self._state = dataclasses.replace(self._state, message=message)
        self.run_folder.write_status(status, message)
        self.run_folder.mark_live(False)
        self._ended.set()

    def stop(self) -> None:
        self._engine.stop(self.id)

    def wait(self, timeout: float | None = None) -> JobState:
        self._ended.wait(timeout)
        return self.snapshot()


class Slot:
    """Runs one job at a time for an engine; `run` blocks until the job has ended."""

    def __init__(self):
        self._device: str | None = None  # what the worker trains on, once it said
        self._job: ServedJob | None = None  # the job it runs now
        self._lock = threading.Lock()

    def run(self, job: ServedJob) -> None:
        raise NotImplementedError

    def stop(self, job: ServedJob) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        """Ends the worker at once, as an out-of-memory kill or a crashed machine would."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    @property
    def device(self) -> str | None:
        return self._device

    @property
    def pid(self) -> int | None:
        return None

    @property
    def job(self) -> ServedJob | None:
        return self._job


class Engine:
    """A queue of trainings served by `workers` slots, oldest first.

    Front ends submit, then poll `get(job_id)`; a job's id (`ServedJob.id`) is its run folder's
    absolute path. A queued job is told its place (`position`) and an estimated start
    (`estimated_start`).
    """

    name = "engine"

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))
        self._jobs: dict[str, ServedJob] = {}
        self._queue: collections.deque[ServedJob] = collections.deque()
        self._running: dict[str, tuple[ServedJob, float]] = {}
        self._durations: list[float] = []
        self._condition = threading.Condition()
        self._slots: list[Slot] = []
        self._threads: list[threading.Thread] = []
        self._closed = False

    # Slots ------------------------------------------------------------------------------------

    def _make_slot(self, index: int) -> Slot:
        raise NotImplementedError

    def _ensure_slots(self) -> None:
        while len(self._threads) < self.workers:
            index = len(self._threads)
            slot = self._make_slot(index)
            self._slots.append(slot)
            thread = threading.Thread(target=self._serve, args=(slot,), name=f"{self.name}-slot-{index}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, slot: Slot) -> None:
        while True:
            with self._condition:
                while not self._queue and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return
                job = self._queue.popleft()
                self._running[job.id] = (job, time.time())
            try:
                slot.run(job)
            except Exception as error:  # noqa: BLE001  (a slot's failure fails its job, never the server)
                job.end(Status.FAILED, f"Training failed: the training worker could not run it ({type(error).__name__}).")
            finally:
                with self._condition:
                    _, started = self._running.pop(job.id, (None, time.time()))
                    if job.snapshot().status == Status.FINISHED:
                        self._durations.append(time.time() - started)
                    self._condition.notify_all()

    # The queue ---------------------------------------------------------------------------------

    def submit(self, data, model_config=None, train_config=None, runs_dir=None, work_dir=None) -> ServedJob:
        """Queues a training; it starts as soon as a worker is free and the jobs before it have started.

        Settings are checked before anything is written; then the run folder is made at once, so
        a queued training is already listed.

        Raises:
            ModelConfigError: a setting that cannot be used.
        """
        from tlcore.dataset import data_source, default_work_dir

        model_config = (model_config or ModelConfig()).resolved()
        train_config = (train_config or TrainConfig()).resolved()
        source = data_source(data)
        # An absolute run folder, so that telling whose a job is needs no file system call.
        folder = Path(runs_dir if runs_dir is not None else default_runs_dir()).resolve()
        run = Run.create(folder, model_config, train_config, {"source": source})
        run.mark_live(True)
        run.write_status(Status.QUEUED)
        spec = JobSpec(str(run.path), data, model_config, train_config,
                       str(Path(work_dir if work_dir is not None else default_work_dir()).resolve()), forwarded_env())
        job = ServedJob(spec, run, self)
        with self._condition:
            self._jobs[job.id] = job
            self._queue.append(job)
            self._ensure_slots()
            self._condition.notify_all()
        return job

    def get(self, job_id: str) -> ServedJob | None:
        with self._condition:
            return self._jobs.get(job_id)

    def jobs(self) -> list[ServedJob]:
        """Every job submitted to this server, oldest first."""
        with self._condition:
            return list(self._jobs.values())

    def running(self) -> list[ServedJob]:
        """The jobs training now, oldest first."""
        with self._condition:
            return [job for job, _ in self._running.values()]

    def active(self) -> ServedJob | None:
        """The oldest job training now, if any."""
        running = self.running()
        return running[0] if running else None

    def position(self, job_id: str) -> int | None:
        """0 while training, 1 for the next in line, and so on; None once it has ended."""
        with self._condition:
            if job_id in self._running:
                return 0
            for place, job in enumerate(self._queue, start=1):
                if job.id == job_id:
                    return place
        return None

    def estimated_start(self, job_id: str) -> float | None:
        """Seconds until a queued job should start (0 when it is training), from the trainings this
        server has finished; None once it has ended."""
        with self._condition:
            if job_id in self._running:
                return 0.0
            ids = [job.id for job in self._queue]
            if job_id not in ids:
                return None
            typical = statistics.median(self._durations) if self._durations else DEFAULT_JOB_SECONDS
            now = time.time()
            free = sorted(max(typical - (now - started), 0.0) for _, started in self._running.values())
            free += [0.0] * (self.workers - len(free))
            for _ in range(ids.index(job_id)):
                free[0] += typical
                free.sort()
            return free[0]

    def stop(self, job_id: str) -> None:
        """Stops a training after its current batch, or takes a waiting one out of the queue."""
        with self._condition:
            job = self._jobs.get(job_id)
            if job is None:
                return
            if job in self._queue:
                self._queue.remove(job)
                job.end(Status.STOPPED, "Cancelled before it started.")
                self._condition.notify_all()
                return
            slots = list(self._slots)
        for slot in slots:  # the slot running it passes the request on; the others ignore it
            slot.stop(job)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Blocks until no job is queued or running; False on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: not self._queue and not self._running, timeout)

    def device(self) -> str | None:
        """What the workers train on (as they reported it), once one has started."""
        return next((slot.device for slot in self._slots if slot.device), None)

    def worker_pids(self) -> list[int]:
        """The process of each worker that is running (on this machine, or wherever Ray put it)."""
        return [slot.pid for slot in self._slots if slot.pid is not None]

    def kill_worker_of(self, job_id: str) -> bool:
        """Kills the worker running `job_id`, as the system would when memory runs out (tests, benchmarks)."""
        for slot in self._slots:
            running = slot.job
            if running is not None and running.id == job_id:
                slot.kill()
                return True
        return False

    def close(self) -> None:
        """Stops serving: queued jobs stay queued on disk (a restarted server shows them interrupted)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        for slot in self._slots:
            slot.close()
