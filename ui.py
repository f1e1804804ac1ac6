"""What every dashboard page shares: session keys, the sidebar, and cached look-ups into `tlcore`."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from tlcore import runs as tlruns
from tlcore.errors import TransferLabError

# Session State keys that are not widgets, so they survive page switches as they are.
DATA_SOURCE = "dataset_source"  # folder or zip path of the chosen dataset
DATA_NAME = "dataset_name"  # what the user calls it: the zip's name or the sample's
MODEL_CONFIG = "model_config"  # the ModelConfig chosen on the Model page
JOB_ID = "job_id"  # the training this session follows
OWNED = "job_owned"  # True when this session started that training (or reloaded the tab that did)
JOB_PARAM = "job"  # address-bar parameter naming the tab's training, so a reload finds it again
CURRENT_RUN = "current_run"  # run folder used by Evaluate and Predict



def _keep_keras_between_reruns() -> None:
    """Stops Streamlit from resetting Keras after every script run.

    Streamlit calls `keras.backend.clear_session()` when a script run ends, to free models a
    script built. Here models live on purpose between runs (training in a background thread,
    loaded predictors), and the page reruns every second while training: each reset clears
    TensorFlow's kernel cache and collects garbage under the training's feet, which made a
    training ten times slower. Matplotlib, the other module Streamlit tidies, is not used.
    """
    from streamlit.runtime.scriptrunner import script_runner

    if hasattr(script_runner, "_clean_problem_modules"):
        script_runner._clean_problem_modules = lambda: None


_keep_keras_between_reruns()

# Widget keys with this prefix keep their value when the user opens another page and comes back.
KEEP = "keep."
POLL_SECONDS = 1.0
# TrainConfig fields shown as widgets on the Train page, each under the key KEEP + name.
TRAIN_SETTINGS = (
    "epochs", "batch_size", "optimizer", "learning_rate", "augment", "augment_views", "early_stopping", "patience",
    "val_split", "seed",
)


def page_setup() -> None:
    """Runs first on every page: keeps remembered widgets and draws the sidebar."""
    # Streamlit forgets a widget's value once a page without it runs; writing the value back
    # into Session State is the documented way to keep it across pages.
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith(KEEP)]:
        st.session_state[key] = st.session_state[key]
    current_job()  # after a reload, re-attaches to the training before anything is drawn
    if owns_job():
        # Opening another page clears the address bar's parameters: put the training back.
        st.query_params[JOB_PARAM] = st.session_state[JOB_ID]
    with st.sidebar:
        sidebar()


def show_error(error: Exception) -> None:
    st.error(str(error), icon=":material/error:")


# Folders ------------------------------------------------------------------------------------


def work_dir() -> Path:
    from tlcore.dataset import default_work_dir

    return Path(default_work_dir())


def runs_dir() -> Path:
    return tlruns.default_runs_dir()


def save_upload(uploaded, folder: str) -> Path:
    """Keeps an uploaded file on disk (once per upload) and returns its path."""
    target = work_dir() / "uploads" / folder / uploaded.file_id / Path(uploaded.name).name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(uploaded.getbuffer())
    return target


# The chosen dataset -----------------------------------------------------------------------


@st.cache_resource(max_entries=8, show_spinner=False)
def _dataset(source: str, val_split: float, seed: int):
    from tlcore.dataset import load_dataset

    return load_dataset(source, val_split=val_split, seed=seed, work_dir=work_dir())


@st.cache_resource(max_entries=8, show_spinner=False)
def _health(source: str):
    from tlcore.health import health_report

    return health_report(_dataset(source, 0.2, 0))


def dataset(source: str | None = None):
    """The chosen dataset, read once per server; None when none is chosen.

    Raises:
        TransferLabError: the dataset cannot be read.
    """
    source = source or st.session_state.get(DATA_SOURCE)
    return _dataset(str(source), 0.2, 0) if source else None


def health(source: str):
    return _health(str(source))


def choose_dataset(source: str | Path, name: str) -> None:
    st.session_state[DATA_SOURCE] = str(source)
    st.session_state[DATA_NAME] = name


def class_count(default: int = 2) -> int:
    """Classes of the chosen dataset, or `default` while none is chosen or it is unreadable."""
    try:
        data = dataset()
    except TransferLabError:
        return default
    return len(data.classes) if data is not None else default


@st.cache_data(max_entries=512, show_spinner=False)
def thumbnail(source, side: int = 160):
    """A small upright RGB copy of an image (path or bytes) for galleries; None if unreadable."""
    from tlcore.images import load_rgb

    try:
        image = load_rgb(source)
    except TransferLabError:
        return None
    image.thumbnail((side, side))
    return image


# Model settings ---------------------------------------------------------------------------


def model_config():
    """The model settings chosen on the Model page, or the defaults."""
    from tlcore.model import ModelConfig

    config = st.session_state.get(MODEL_CONFIG)
    if config is None:
        config = ModelConfig().resolved()
    return config


def describe_model(config, inline: bool = False) -> str:
    from tlcore.backbones import get_backbone

    spec = get_backbone(config.backbone)
    alpha = f" (alpha {config.alpha})" if config.alpha is not None else ""
    dense = " + ".join(str(u) for u in config.dense_units) or "none"
    weights = config.weights if config.weights in ("imagenet", "none") else "file"
    weights = {"imagenet": "ImageNet", "none": "random", "file": "uploaded file"}[weights]
    parts = (
        f"**{spec.display_name}**{alpha}, {config.input_size} px",
        f"cut at `{config.cut_layer}`, {config.pooling} pooling",
        f"dense {dense}, dropout {config.dropout:g}, {weights} weights",
    )
    return (", " if inline else "  \n").join(parts)


# The training job -------------------------------------------------------------------------


def current_job():
    """The training this session follows.

    That is the one it started, or after a browser reload (a new session) the one named in the
    address bar; both are the session's own. Otherwise it watches whatever this server is
    training, which may be another user's: see `owns_job`.
    """
    from tlcore.jobs import manager

    jobs = manager()
    followed = jobs.get(st.session_state.get(JOB_ID) or "")
    if followed is not None and st.session_state.get(OWNED):
        return followed
    from_address = jobs.get(st.query_params.get(JOB_PARAM, ""))
    if from_address is not None:
        follow(from_address)
        # Pick up the dataset and settings the training uses, so the pages agree with it.
        if DATA_SOURCE not in st.session_state and isinstance(from_address.data, (str, Path)):
            choose_dataset(from_address.data, Path(from_address.data).name)
        if MODEL_CONFIG not in st.session_state:
            show_settings(from_address.model_config, from_address.train_config)
        return from_address
    watched = jobs.active() or _newest_unfinished(jobs) or followed
    st.session_state[JOB_ID] = watched.run_dir.name if watched is not None else None
    return watched


def follow(job) -> None:
    """Makes `job` this session's own training, and remembers it in the address bar."""
    st.session_state[JOB_ID] = job.run_dir.name
    st.session_state[OWNED] = True
    st.query_params[JOB_PARAM] = job.run_dir.name


def owns_job() -> bool:
    """True when the followed training was started by this user (in this tab)."""
    return bool(st.session_state.get(OWNED)) and bool(st.session_state.get(JOB_ID))


def show_settings(model_config, train_config) -> None:
    """Sets the Model and Train pages' widgets to a training's settings."""
    st.session_state[MODEL_CONFIG] = model_config
    weights = model_config.weights if model_config.weights in ("imagenet", "none") else "file"
    values = {
        "backbone": model_config.backbone,
        "input_size": model_config.input_size,
        "cut_layer": model_config.cut_layer,
        "pooling": model_config.pooling,
        "dense": ", ".join(str(units) for units in model_config.dense_units),
        "dropout": model_config.dropout,
        "weights": weights,
        **{name: getattr(train_config, name) for name in TRAIN_SETTINGS},
    }
    if model_config.alpha is not None:
        values["alpha"] = model_config.alpha
    for name, value in values.items():
        st.session_state[KEEP + name] = value


def _newest_unfinished(jobs):
    waiting = [job for job in jobs.jobs() if not job.snapshot().done]
    return waiting[-1] if waiting else None


def job_line(job, state) -> str:
    """One sentence saying where a training is."""
    from tlcore.jobs import manager

    if state.status == tlruns.QUEUED:
        place = manager().position(job.run_dir.name)
        ahead = f"{place - 1} training(s) ahead of it" if place else "starting"
        return f"Waiting in line: {ahead}. Only one training runs at a time on this server."
    if state.status == tlruns.RUNNING:
        if state.phase != "training":
            return f"Preparing to train: {state.phase or 'starting'}."
        return f"Training: epoch {min(state.epoch + 1, state.epochs)} of {state.epochs}."
    return {
        tlruns.FINISHED: "Training finished.",
        tlruns.STOPPED: "Training stopped.",
        tlruns.FAILED: "Training failed.",
    }.get(state.status, state.status)


def adopt_finished(job, state) -> None:
    """Makes a job's run the current model once it has saved one."""
    if state.done and (job.run_dir / tlruns.MODEL_FILE).is_file():
        if st.session_state.get("adopted") != job.run_dir.name:
            st.session_state["adopted"] = job.run_dir.name
            st.session_state[CURRENT_RUN] = str(job.run_dir)


def sidebar() -> None:
    st.markdown("#### Dataset")
    name = st.session_state.get(DATA_NAME)
    if name:
        try:
            data = dataset()
            counts = {split: sum(per.values()) for split, per in data.counts().items()}
            st.markdown(f"**{name}**  \n{len(data.classes)} classes: {', '.join(data.classes[:6])}"
                        f"{' …' if len(data.classes) > 6 else ''}  \n"
                        + ", ".join(f"{n} {split}" for split, n in counts.items()))
        except TransferLabError as error:
            st.caption(f"{name}: {error}")
    else:
        st.caption("None chosen yet: open **Data**.")
    st.markdown("#### Model")
    try:
        st.markdown(describe_model(model_config()))
    except TransferLabError as error:
        st.caption(str(error))
    st.markdown("#### Training")
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
    if state.status == tlruns.RUNNING and state.steps:
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
        st.caption(f"Current model: `{Path(run).name}`")


# Runs -------------------------------------------------------------------------------------


def run_picker(label: str = "Model to use"):
    """A selectbox of runs with a saved model, the current one first; None when there is none."""
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
    best = f", best validation accuracy {info.best_val_accuracy:.0%}" if info.best_val_accuracy is not None else ""
    return f"{info.name} — {model.get('backbone', '?')} cut at {model.get('cut_layer', '?')}{best}"


@st.cache_resource(max_entries=4, show_spinner=False)
def _evaluation(run_dir: str, model_stamp: int):
    from tlcore.evaluate import evaluate

    return evaluate(run_dir)


def evaluation(info):
    """The run's scores on its own validation images, computed once per saved model."""
    return _evaluation(str(info.path), (info.path / tlruns.MODEL_FILE).stat().st_mtime_ns)


def no_runs_yet() -> None:
    st.info("There is no trained model yet. Train one first.", icon=":material/info:")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/arrow_forward:")
