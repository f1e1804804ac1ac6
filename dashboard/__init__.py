"""The dashboard's shared code: session state, cached look-ups, the followed training, the sidebar.

Pages only render: they read widgets, call one `tlcore` function and show the result. What
they share lives here, one concern per module; `tlcore` never imports any of it.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard.following import (  # noqa: F401  (the pages' API)
    JOB_ID,
    JOB_PARAM,
    OWNED,
    POLL_SECONDS,
    adopt_finished,
    current_job,
    follow,
    job_line,
    keep_job_in_address,
    owns_job,
    run_from_address,
)
from dashboard.lookups import (  # noqa: F401
    class_count,
    dataset,
    evaluation,
    explanation,
    export_bundle,
    exportable_formats,
    health,
    load_upload,
    predict_zip,
    runs_dir,
    save_upload,
    thumbnail,
    training_code,
    work_dir,
)
from dashboard.navigation import app_navigation, run_inside_app  # noqa: F401
from dashboard.patches import keep_keras_between_reruns
from dashboard.text import plain
from dashboard.workspace import TEACHER, keep_in_address, remember_model  # noqa: F401
from dashboard.workspace import current as workspace  # noqa: F401
from dashboard.workspace import remember_dataset as choose_dataset  # noqa: F401  (for this tab and the workspace's others)
from dashboard.sidebar import describe_model, sidebar  # noqa: F401  (the pages use describe_model)
from dashboard.state import (  # noqa: F401
    CURRENT_RUN,
    DATA_NAME,
    DATA_SOURCE,
    KEEP,
    MODEL_CONFIG,
    MODEL_SETTINGS,
    TRAIN_SETTINGS,
    model_config,
    remember_widgets,
    show_settings,
)

keep_keras_between_reruns()


def page_setup() -> None:
    """Runs first on every page: makes sure it runs inside the navigation, keeps remembered widgets, draws the sidebar."""
    run_inside_app()
    remember_widgets()
    workspace()  # a new tab of a workspace finds its dataset and model again
    keep_in_address()
    current_job()  # after a reload, re-attaches to the training before anything is drawn
    keep_job_in_address()
    with st.sidebar:
        sidebar()


def show_error(error: Exception) -> None:
    """A `tlcore` error's sentence, which may quote a user's names, shown as written."""
    st.error(plain(error), icon=":material/error:")


def run_picker(label: str = "Model to use"):
    """A selectbox of runs with a saved model, the current one first; None when there is none."""
    from tlcore import runs as tlruns

    choices = [info for info in tlruns.list_runs(runs_dir()) if info.has_model]
    if not choices:
        return None
    current = st.session_state.get(CURRENT_RUN)
    names = [info.name for info in choices]
    index = names.index(Path(current).name) if current and Path(current).name in names else 0
    picked = st.selectbox(
        label,
        choices,
        index=index,
        format_func=run_label,
        help="Every training you ran is kept as a run. The newest one is used unless you pick another.",
    )
    st.session_state[CURRENT_RUN] = str(picked.path)
    return picked


def run_label(info) -> str:
    model = info.config.get("model", {})
    accuracy = f", validation accuracy {info.val_accuracy:.0%}" if info.val_accuracy is not None else ""
    return f"{info.name} — {model.get('backbone', '?')} cut at {model.get('cut_layer', '?')}{accuracy}"


def no_runs_yet() -> None:
    st.info("There is no trained model yet. Train one first.", icon=":material/info:")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/arrow_forward:")


def run_row(info) -> dict:
    """One run's settings and figures, as a table row (the Runs page, the teacher's leaderboard)."""
    model, train = info.config.get("model", {}), info.config.get("train", {})
    return {
        "run": info.name,
        "status": info.status,
        "val_accuracy": info.val_accuracy,
        "backbone": model.get("backbone"),
        "input_size": model.get("input_size"),
        "cut_layer": model.get("cut_layer"),
        "pooling": model.get("pooling"),
        "dense_units": ", ".join(str(u) for u in model.get("dense_units") or []) or "none",
        "dropout": model.get("dropout"),
        "weights": model.get("weights"),
        "epochs": f"{info.epochs_done} / {train.get('epochs', '?')}",
        "optimizer": train.get("optimizer"),
        "learning_rate": train.get("learning_rate"),
        "augment": train.get("augment"),
        "class_weights": train.get("class_weights", "none"),
        "fine_tuned": f"after {info.fine_tuned['after']} ({info.fine_tuned['layers']} layers)" if info.fine_tuned else "",
        "created": info.created,
    }


def run_columns() -> dict:
    """How the columns of `run_row` are titled and drawn."""
    return {
        "run": st.column_config.TextColumn("Run"),
        "status": st.column_config.TextColumn("Status"),
        "val_accuracy": st.column_config.ProgressColumn(
            "Validation accuracy", format="percent", min_value=0.0, max_value=1.0,
            help="Of the saved model (the restored epoch when early stopping kept an earlier one).",
        ),
        "backbone": "Backbone",
        "input_size": "Input size",
        "cut_layer": "Cut layer",
        "pooling": "Pooling",
        "dense_units": "Hidden layers",
        "dropout": "Dropout",
        "weights": "Weights",
        "epochs": "Epochs",
        "optimizer": "Optimizer",
        "learning_rate": st.column_config.NumberColumn("Learning rate", format="%g"),
        "augment": st.column_config.CheckboxColumn("Augment"),
        "class_weights": "Class weights",
        "fine_tuned": st.column_config.TextColumn("Fine-tuned", help="The top of the backbone trained too, in a second stage."),
        "created": "Started",
    }
