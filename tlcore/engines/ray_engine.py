"""The Ray engine: each training runs in a long-lived Ray actor, anywhere in a Ray cluster.

Chosen with `TLCORE_ENGINE=ray`. The cluster is `$RAY_ADDRESS`, or a local one the server
starts. Every training asks for `TLCORE_RAY_CPUS` CPUs (default 1) and `TLCORE_RAY_GPUS` GPUs
(default 0; a fraction such as 0.25 shares a GPU, and TensorFlow is then held to that share of
its memory). Where an actor sees the server's files (the same machine, or `TLCORE_RUNS` and
`TLCORE_HOME` at the same paths on a shared file system) it reads the dataset and writes into
the run folder the server made. Where it does not, the dataset is sent with the job and the
finished run folder comes back, into the server's run folder: the pages work the same either
way. `TLCORE_RAY_SHARED_FILES` says which: `auto` (the default: asked of each actor), `yes` or
`no`.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import tempfile
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

from tlcore.config import Status
from tlcore.engines.base import Engine, ServedJob, Slot
from tlcore.engines.local import WORKER_DIED
from tlcore.errors import TransferLabError
from tlcore.training.state import JobState

POLL_SECONDS = 0.5
SEEN_FILE = ".seen-by-ray"  # written for a moment into a run folder, to ask an actor whether it sees it
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # a local cluster only passes small messages


def _number(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if number < 0:
        raise ValueError(f"{name} must not be negative, not {value!r}")
    return number


def resources() -> dict:
    """What each training asks Ray for."""
    return {"num_cpus": _number("TLCORE_RAY_CPUS", 1.0), "num_gpus": _number("TLCORE_RAY_GPUS", 0.0)}


def shared_files() -> str:
    """`TLCORE_RAY_SHARED_FILES`: "auto", "yes" or "no"."""
    value = os.environ.get("TLCORE_RAY_SHARED_FILES", "").strip().lower() or "auto"
    if value not in ("auto", "yes", "no"):
        raise ValueError(f"TLCORE_RAY_SHARED_FILES must be auto, yes or no, not {value!r}")
    return value


def pack(folder: str | Path) -> bytes:
    """A folder's files as zip bytes (a dataset, or a run folder), to travel with a job."""
    folder = Path(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def unpack(data: bytes, folder: str | Path) -> Path:
    """Writes zip bytes made by `pack` into `folder` (files already there are replaced)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(folder)  # extractall keeps every member inside `folder`
    return folder


def connect() -> None:
    """Joins `$RAY_ADDRESS`, or starts a local Ray on this machine, once per process; waits until done.

    Raises:
        TransferLabError: Ray is not installed, or the cluster cannot be reached.
    """
    _connection().wait()


class _Connection:
    """Joins or starts the cluster on a thread of its own, which then lives as long as the process.

    A local Ray's processes are killed when the thread that started them ends (Linux's parent
    death signal follows the thread), and the dashboard's threads end after every script run.
    Starting in the background also lets the first page draw before Ray has started.
    """

    def __init__(self):
        self._done = threading.Event()
        self._error: BaseException | None = None
        threading.Thread(target=self._keep, name="tlcore-ray", daemon=True).start()

    def _keep(self) -> None:
        try:
            _join_or_start()
        except BaseException as error:  # noqa: BLE001  (raised again to whoever waits)
            self._error = error
        self._done.set()
        if self._error is None:
            threading.Event().wait()

    def wait(self) -> None:
        self._done.wait()
        if self._error is not None:
            raise self._error


_CONNECTION: _Connection | None = None
_CONNECTION_LOCK = threading.Lock()


def _connection() -> _Connection:
    global _CONNECTION
    with _CONNECTION_LOCK:
        if _CONNECTION is None:
            _CONNECTION = _Connection()
        return _CONNECTION


def _join_or_start() -> None:
    try:
        import ray
    except ImportError:
        raise TransferLabError("The Ray engine needs Ray: pip install ray.") from None
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS", "").strip() or None
    # Workers import tlcore from where this server does (installed, or this repository).
    here = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    options = {"include_dashboard": False, "log_to_driver": False, "runtime_env": {"env_vars": {"PYTHONPATH": path}}}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(object_store_memory=LOCAL_OBJECT_STORE_BYTES, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise TransferLabError(f"Could not reach the Ray cluster at {address or 'this machine'}: {error}") from None


class TrainingActor:
    """A Ray actor that trains one job at a time and keeps its warm caches between jobs."""

    def __init__(self, gpu_share: float = 0.0):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        _limit_gpu_memory(gpu_share)
        from tlcore.device import training_device

        self.device = training_device()
        self.jobs: dict = {}

    def ready(self) -> tuple[str, int]:
        return self.device, os.getpid()

    def sees(self, run_dir: str, token: str) -> bool:
        """True when this actor sees the server's run folder (the same files, not just the same path)."""
        try:
            return (Path(run_dir) / SEEN_FILE).read_text() == token
        except OSError:
            return False

    def train(self, spec, shipped: dict | None = None) -> dict:
        """Runs a job; `shipped` carries its dataset and run folder when this actor cannot see the
        server's files, and the run folder then goes back with the result."""
        from tlcore.engines.worker import failed_state, job_for

        copies = None
        try:
            if shipped is not None:
                own = self._own_folder()
                copies = Path(tempfile.mkdtemp(prefix="job-", dir=own))
                spec = self._on_copies(spec, shipped, copies, own)
            job = job_for(spec)
        except Exception as error:  # noqa: BLE001  (reported as the run's failure)
            return {"state": failed_state(error), "folder": None}
        self.jobs[spec.name] = job
        try:
            state = job.run().to_dict()
            return {"state": state, "folder": pack(spec.run_dir) if copies is not None else None}
        finally:
            self.jobs.pop(spec.name, None)
            if copies is not None:
                shutil.rmtree(copies, ignore_errors=True)

    @staticmethod
    def _own_folder() -> Path:
        """This actor's folder, which keeps its feature cache from job to job."""
        own = Path(tempfile.gettempdir()) / f"tlcore-ray-{os.getpid()}"
        own.mkdir(parents=True, exist_ok=True)
        return own

    @staticmethod
    def _on_copies(spec, shipped: dict, copies: Path, own: Path):
        """The spec on copies of its dataset and run folder, unpacked into `copies`; its feature
        cache and home in the actor's own folder `own`."""
        data = unpack(shipped["data"], copies / "data" / shipped["data_name"])
        run_dir = unpack(shipped["run"], copies / "runs" / spec.name)
        env = {**spec.env, "TLCORE_RUNS": str(copies / "runs"), "TLCORE_HOME": str(own / "home")}
        return replace(spec, run_dir=str(run_dir), data=str(data), work_dir=str(own / "work"), env=env)

    def snapshot(self, name: str) -> dict | None:
        job = self.jobs.get(name)
        return job.snapshot().to_dict() if job is not None else None

    def stop(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is not None:
            job.stop()


def _limit_gpu_memory(share: float) -> None:
    """With a fraction of a GPU, TensorFlow may take only that share of its memory."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus or not 0 < share < 1:
        return
    total = _gpu_memory_mb()
    for gpu in gpus:
        if total:
            tf.config.set_logical_device_configuration(
                gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=int(total * share))])
        else:
            tf.config.experimental.set_memory_growth(gpu, True)


def _gpu_memory_mb() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).total // (1024 * 1024)
    except Exception:  # noqa: BLE001  (no NVML: fall back to memory growth)
        return None


class RayActorSlot(Slot):
    """One Ray actor, made when first needed and replaced when it dies."""

    def __init__(self):
        super().__init__()
        self._actor = None
        self._pid: int | None = None

    @property
    def pid(self) -> int | None:
        return self._pid

    def _ensure_actor(self):
        import ray

        with self._lock:
            if self._actor is None:
                wanted = resources()
                remote = ray.remote(max_concurrency=4, max_restarts=0, **wanted)(TrainingActor)
                self._actor = remote.remote(wanted["num_gpus"])
            actor = self._actor
        self._device, self._pid = ray.get(actor.ready.remote())
        return actor

    def run(self, job: ServedJob) -> None:
        import ray
        from ray.exceptions import RayActorError, RayError

        with self._lock:
            self._job = job
        try:
            actor = self._ensure_actor()
            shipped = self._shipment(actor, job)
            result = actor.train.remote(job.spec, shipped)
            while True:
                done, _ = ray.wait([result], timeout=POLL_SECONDS)
                if done:
                    outcome = ray.get(result)
                    if outcome["folder"] is not None:
                        unpack(outcome["folder"], job.run_dir)
                    job.report(JobState.from_dict(outcome["state"]))
                    return
                state = ray.get(actor.snapshot.remote(job.run_dir.name))
                if state is not None:
                    job.report(JobState.from_dict(state))
        except RayActorError:
            with self._lock:
                self._actor = None  # the next job gets a new actor
            job.end(Status.FAILED, WORKER_DIED)
        except RayError as error:
            job.end(Status.FAILED, f"Training failed: the Ray cluster could not run it ({type(error).__name__}).")
        finally:
            with self._lock:
                self._job = None

    @staticmethod
    def _shipment(actor, job: ServedJob) -> dict | None:
        """The job's dataset and run folder, when the actor does not see the server's files."""
        import ray

        setting = shared_files()
        if setting == "auto":
            marker, token = job.run_dir / SEEN_FILE, secrets.token_hex(16)
            marker.write_text(token)
            try:
                setting = "yes" if ray.get(actor.sees.remote(str(job.run_dir), token)) else "no"
            finally:
                marker.unlink(missing_ok=True)
        if setting == "yes":
            return None
        from tlcore.dataset import data_source

        data = Path(data_source(job.spec.data))
        return {"data": pack(data), "data_name": data.name or "data", "run": pack(job.run_dir)}

    def stop(self, job: ServedJob) -> None:
        with self._lock:
            actor = self._actor if self._job is job else None
        if actor is not None:
            actor.stop.remote(job.run_dir.name)

    def kill(self) -> None:
        import ray

        with self._lock:
            actor = self._actor
        if actor is not None:
            ray.kill(actor, no_restart=True)

    def close(self) -> None:
        with self._lock:
            job, actor = self._job, self._actor
        if job is not None and actor is not None:
            actor.stop.remote(job.run_dir.name)


class RayEngine(Engine):
    """Trains on a Ray cluster, `workers` trainings at a time (default: as many as its CPUs allow)."""

    name = "ray"

    def __init__(self, workers: int | None = None):
        super().__init__(workers or 1)
        self._workers_known = workers is not None
        _connection()  # starts now, in the background: the first page need not wait for Ray

    def submit(self, *args, **kwargs) -> ServedJob:
        """As `Engine.submit`, once the cluster is reached (the first time, it may take seconds).

        Raises:
            TransferLabError: Ray is not installed, or the cluster cannot be reached.
        """
        connect()
        if not self._workers_known:
            self.workers, self._workers_known = _default_workers(), True
        return super().submit(*args, **kwargs)

    def _make_slot(self, index: int) -> RayActorSlot:
        return RayActorSlot()


def _default_workers() -> int:
    import ray

    value = os.environ.get("TLCORE_WORKERS", "").strip()
    if value:
        from tlcore.engines.local import default_workers

        return default_workers()
    cpus = float(ray.cluster_resources().get("CPU", 1))
    return max(1, int(cpus // max(resources()["num_cpus"], 0.01)))

