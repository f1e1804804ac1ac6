"""The sidebar every page shows: the chosen dataset, the model settings, and the training."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from tlcore.config import Status
from tlcore.errors import TransferLabError

from dashboard.following import POLL_SECONDS, adopt_finished, current_job, job_line
from dashboard.lookups import dataset
from dashboard.state import CURRENT_RUN, DATA_NAME, model_config
from dashboard.text import plain


def describe_model(config, inline: bool = False) -> str:
    """The model settings in a few words (Markdown; no user-supplied text except a weights file's kind)."""
    from tlcore.backbones import get_backbone

    spec = get_backbone(config.backbone)
    alpha = f" (alpha {config.alpha})" if config.alpha is not None else ""
    dense = " + ".join(str(u) for u in config.dense_units) or "none"
    weights = {"imagenet": "ImageNet", "none": "random"}.get(config.weights, "uploaded file")
    parts = (
        f"**{spec.display_name}**{alpha}, {config.input_size} px",
        f"cut at `{config.cut_layer}`, {config.pooling} pooling",
        f"dense {dense}, dropout {config.dropout:g}, {weights} weights",
    )
    return (", " if inline else "  \n").join(parts)


def sidebar() -> None:
    st.markdown("#### Dataset")
    name = st.session_state.get(DATA_NAME)
    if name:
        try:
            data = dataset()
            counts = {split: sum(per.values()) for split, per in data.counts().items()}
            shown = ", ".join(data.classes[:6]) + (" …" if len(data.classes) > 6 else "")
            # Names come from the user's files: shown as plain text, never as Markdown.
            st.text(f"{name}\n{len(data.classes)} classes: {shown}")
            st.caption(", ".join(f"{n} {split}" for split, n in counts.items()))
        except TransferLabError as error:
            st.text(name)
            st.caption(plain(error))
    else:
        st.caption("None chosen yet: open **Data**.")
    st.markdown("#### Model")
    try:
        st.markdown(describe_model(model_config()))
    except TransferLabError as error:
        st.caption(plain(error))
    st.markdown("#### Training")
    from tlcore.engines import engine

    device = engine().device()  # as the training workers report it; the server never loads TensorFlow for it
    if device:
        st.caption(f"Runs on: {plain(device)}")
    job = current_job()
    if job is None or job.snapshot().done:
        _sidebar_job()
    else:
        st.fragment(_sidebar_job, run_every=POLL_SECONDS)()


def _sidebar_job() -> None:
    job = current_job()
    if job is None:
        st.caption("Nothing training now.")
        return
    state = job.snapshot()
    st.caption(job_line(job, state))
    if state.status == Status.RUNNING and state.steps:
        st.progress(min(state.step / state.steps, 1.0))
    if state.done:
        adopt_finished(job, state)
        if st.session_state.get("sidebar_saw_running") == job.run_dir.name:
            # The training just ended: redraw the whole page so it shows the result.
            st.session_state["sidebar_saw_running"] = None
            st.rerun()
    else:
        st.session_state["sidebar_saw_running"] = job.run_dir.name
    run = st.session_state.get(CURRENT_RUN)
    if run:
        st.caption(f"Current model: {plain(Path(run).name)}")
