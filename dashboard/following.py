"""Which training a browser session follows, and what to say about it."""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from tlcore.config import Status

from dashboard.state import CURRENT_RUN, choose_dataset, show_settings

JOB_ID = "job_id"  # the training this session follows
OWNED = "job_owned"  # True when this session started that training (or reloaded the tab that did)
JOB_PARAM = "job"  # address-bar parameter naming the tab's training, so a reload finds it again
POLL_SECONDS = 1.0
# What a run folder's name may look like; anything else in the address names nothing.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


def current_job():
    """The training this session follows, always one of its workspace's.

    That is the one it started, or after a browser reload (a new session) the one named in the
    address bar, or the newest unfinished one of the workspace (started in another tab). With
    workspaces off, everyone shares one space: it may then watch another user's training, which
    it does not own (see `owns_job`).
    """
    from tlcore.engines import engine

    from dashboard.workspace import current

    space = current()
    jobs = engine()
    mine = space.runs_dir.resolve()  # once: this runs on every rerun of every page, for every job

    def ours(job) -> bool:
        return job is not None and (space.shared or job.run_dir.parent == mine)

    def named(name) -> object:
        """This workspace's job of that run name (the engine knows jobs by their folder's path)."""
        name = str(name or "")[:200]
        return jobs.get(str(mine / name)) if RUN_NAME.fullmatch(name) else None

    followed = named(st.session_state.get(JOB_ID))
    if ours(followed) and st.session_state.get(OWNED):
        return followed
    from_address = named(st.query_params.get(JOB_PARAM, ""))
    if ours(from_address):
        adopt(from_address)
        return from_address
    unfinished = [job for job in jobs.jobs() if ours(job) and not job.snapshot().done]
    if space.shared:
        watched = jobs.active() or (unfinished[-1] if unfinished else None) or (followed if ours(followed) else None)
        st.session_state[JOB_ID] = watched.run_dir.name if watched is not None else None
        return watched
    if unfinished:  # started in another tab of this workspace: it is this user's as much
        adopt(unfinished[-1])
        return unfinished[-1]
    watched = followed if ours(followed) else None
    st.session_state[JOB_ID] = watched.run_dir.name if watched is not None else None
    return watched


def adopt(job) -> None:
    """Follows a training this session did not start (after a reload, or from another tab), with the
    dataset and settings it uses, so the pages agree with it."""
    fresh = st.session_state.get(JOB_ID) != job.run_dir.name
    follow(job)
    if fresh:
        if isinstance(job.data, (str, Path)):
            choose_dataset(job.data, Path(job.data).name)
        show_settings(job.model_config, job.train_config)


def follow(job) -> None:
    """Makes `job` this session's own training, and remembers it in the address bar."""
    st.session_state[JOB_ID] = job.run_dir.name
    st.session_state[OWNED] = True
    st.query_params[JOB_PARAM] = job.run_dir.name


def owns_job() -> bool:
    """True when the followed training was started by this user (in this workspace)."""
    return bool(st.session_state.get(OWNED)) and bool(st.session_state.get(JOB_ID))


def keep_job_in_address() -> None:
    """Opening another page clears the address bar's parameters: puts the training back."""
    if owns_job():
        st.query_params[JOB_PARAM] = st.session_state[JOB_ID]
    elif JOB_PARAM in st.query_params and run_from_address() is None:
        del st.query_params[JOB_PARAM]  # it names nothing of this workspace: nothing to keep


def job_line(job, state) -> str:
    """One sentence saying where a training is."""
    from tlcore.engines import engine

    if state.status == Status.QUEUED:
        jobs = engine()
        place = jobs.position(job.id)
        ahead = f"{place - 1} training(s) ahead of it" if place else "starting"
        return f"Waiting in line: {ahead}. This server trains {jobs.workers} at a time."
    if state.status == Status.RUNNING:
        if state.phase not in ("training", "fine-tuning"):
            return f"Preparing to train: {state.phase or 'starting'}."
        tuning = ", fine-tuning the top of the backbone" if state.phase == "fine-tuning" else ""
        return f"Training: epoch {min(state.epoch + 1, state.epochs)} of {state.epochs}{tuning}."
    return {
        Status.FINISHED: "Training finished.",
        Status.STOPPED: "Training stopped.",
        Status.FAILED: "Training failed.",
    }.get(state.status, str(state.status))


def adopt_finished(job, state) -> None:
    """Makes a job's run the current model once it has saved one."""
    if state.done and job.run_folder.has_model:
        if st.session_state.get("adopted") != job.run_dir.name:
            st.session_state["adopted"] = job.run_dir.name
            st.session_state[CURRENT_RUN] = str(job.run_dir)


def run_from_address():
    """The run the address bar names when its training is not running in this server (it was
    interrupted by a restart, or ended before it): a `tlcore.runs.RunInfo`, or None."""
    from tlcore.errors import RunError
    from tlcore.runs import read_run

    from dashboard.workspace import current

    name = str(st.query_params.get(JOB_PARAM, ""))
    if not RUN_NAME.fullmatch(name) or ".." in name:
        return None
    try:
        return read_run(current().runs_dir / name)  # only this workspace's runs: a name alone grants nothing
    except RunError:
        return None
