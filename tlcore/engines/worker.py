"""A training worker: a long-lived process that runs the trainings its server sends, one at a time.

It keeps what makes the next training quick (TensorFlow imported, bodies loaded, features in
the cache), and talks to its server through one connection:

- server to worker: `("train", JobSpec)`, `("stop", job_id)`; the connection closing means the
  server is gone, and the training then ends as interrupted with the model so far saved.
- worker to server: `("ready", device)` once, then for each job `("state", job_id, state)`
  several times a second and `("done", job_id, state)` at the end.
"""

from __future__ import annotations

import os
import signal
import threading

REPORT_SECONDS = 0.25


class _ServerGone(Exception):
    """The server closed the connection, or is shutting its workers down."""


def _on_terminate(signum, frame):
    raise _ServerGone()


class _Connection:
    """Sends from several threads; a server that is gone is not an error here."""

    def __init__(self, conn):
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, *message) -> bool:
        with self.lock:
            try:
                self.conn.send(message)
                return True
            except (OSError, EOFError, ValueError):
                return False


def serve(conn, threads: int | None = None) -> None:
    """The worker process's main loop: reads requests until the server goes away."""
    try:
        _serve(conn, threads)
    except (_ServerGone, KeyboardInterrupt):
        pass  # told to end before any training began


def _serve(conn, threads: int | None) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    link = _Connection(conn)
    # A server shutting down sends SIGTERM (and Ctrl-C reaches the whole process group): either
    # ends the training as interrupted, with its model so far saved, like a server that is gone.
    signal.signal(signal.SIGTERM, _on_terminate)
    signal.signal(signal.SIGINT, _on_terminate)
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, threads // 2))
    from tlcore.device import training_device
    from tlcore.training import TrainingJob  # everything training needs, imported before the first job

    link.send("ready", training_device())
    current: dict = {}
    trainer: threading.Thread | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, _ServerGone):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the model be saved
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            job = current.get("job")
            if job is not None:
                job.interrupt("The server stopped while this training ran.")
            if trainer is not None:
                trainer.join()
            return
        kind = message[0]
        if kind == "train":
            if trainer is not None:
                trainer.join()
            trainer = threading.Thread(target=_train, args=(message[1], link, current, TrainingJob), daemon=True)
            trainer.start()
        elif kind == "stop":
            job = current.get("job")
            if job is not None and job.run_dir.name == message[1]:
                job.stop()


def job_for(spec, job_class=None):
    """The `TrainingJob` of a spec, on the run folder its server made, with the server's environment."""
    from tlcore.errors import TransferLabError
    from tlcore.runs import Run

    if job_class is None:
        from tlcore.training import TrainingJob as job_class
    if not os.path.isdir(spec.run_dir):
        raise TransferLabError(
            "Training failed: this worker cannot see the run folder. Workers on other machines need the "
            "server's TLCORE_RUNS and TLCORE_HOME folders at the same paths (a shared file system), "
            "or TLCORE_RAY_SHARED_FILES set to auto or no, so that the files travel with each job."
        )
    os.environ.update(spec.env)
    return job_class(spec.data, spec.model_config, spec.train_config, work_dir=spec.work_dir, run=Run(spec.run_dir))


def failed_state(error: BaseException) -> dict:
    """What a job that could not even be set up reports."""
    import time

    from tlcore.config import Status
    from tlcore.training.job import explain_failure
    from tlcore.training.state import JobState

    return JobState(status=Status.FAILED, message=explain_failure(error), ended=time.time()).to_dict()


def _train(spec, link: _Connection, current: dict, job_class) -> None:
    try:
        job = job_for(spec, job_class)
    except Exception as error:  # noqa: BLE001  (reported as the run's failure)
        link.send("done", spec.name, failed_state(error))
        return
    current["job"] = job
    done = threading.Event()

    def report() -> None:
        while not done.wait(REPORT_SECONDS):
            link.send("state", spec.name, job.snapshot().to_dict())

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        job.run()
    finally:
        done.set()
        reporter.join()
        current.pop("job", None)
        link.send("done", spec.name, job.snapshot().to_dict())
