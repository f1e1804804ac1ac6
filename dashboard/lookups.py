"""Cached look-ups into `tlcore`: datasets, health reports, thumbnails and evaluations, each computed once."""

from __future__ import annotations

import contextlib
from pathlib import Path

import streamlit as st

from tlcore import runs as tlruns
from tlcore.errors import TransferLabError

from dashboard.state import DATA_SOURCE


def work_dir() -> Path:
    from tlcore.dataset import default_work_dir

    return Path(default_work_dir())


def runs_dir() -> Path:
    """This session's workspace's runs: nothing else is listed, opened, stopped or deleted from it."""
    from dashboard.workspace import current

    return current().runs_dir


UPLOAD_NAMES = {"datasets": "dataset.zip", "weights": "weights.h5"}


def save_upload(uploaded, folder: str) -> Path:
    """Keeps an uploaded file on disk (once per upload) and returns its path.

    The file is stored under a name of ours: the user's may be too long or hold anything.
    """
    safe_id = "".join(c for c in str(uploaded.file_id) if c.isalnum() or c in "-_")[:64] or "upload"
    target = work_dir() / "uploads" / folder / safe_id / UPLOAD_NAMES[folder]
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(uploaded.getbuffer())
        partial.replace(target)
    return target


def load_upload(uploaded) -> Path:
    """Unpacks and checks an uploaded dataset zip, then deletes the upload; returns the dataset's folder.

    The unpacked folder is named by the zip's content, so the same zip uploaded again is stored once.

    Raises:
        TransferLabError: the zip was refused; nothing of it is kept.
    """
    from tlcore.dataset import load_dataset

    path = save_upload(uploaded, "datasets")
    try:
        root = Path(load_dataset(path, work_dir=work_dir()).root)
    finally:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()
    dataset(str(root))  # read once more from its folder, which is what the pages use from now on
    return root


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
    except (TransferLabError, OSError):
        return None
    image.thumbnail((side, side))
    return image


@st.cache_resource(max_entries=4, show_spinner=False)
def _evaluation(run_dir: str, model_stamp: int, subset: str):
    from tlcore.evaluate import evaluate

    return evaluate(run_dir, subset=subset)


def evaluation(info, subset: str):
    """The run's scores on its own `subset` images ("validation" or "test"), once per saved model."""
    return _evaluation(str(info.path), info.run.model_stamp() or 0, subset)


@st.cache_data(max_entries=4, show_spinner=False)
def _export(run_dir: str, model_stamp: int, formats: tuple[str, ...]):
    import tempfile

    from tlcore.exports import bundle_zip, export_run

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / Path(run_dir).name
        report = export_run(run_dir, out, formats)
        return bundle_zip(out), report


def export_bundle(info, formats: tuple[str, ...]):
    """The run's export bundle as zip bytes, with its report; made once per saved model and formats."""
    return _export(str(info.path), info.run.model_stamp() or 0, tuple(formats))


def exportable_formats() -> list[str]:
    from tlcore.exports import default_formats

    return default_formats()


@st.cache_data(max_entries=16, show_spinner=False)
def _code(run_dir: str, stamp: str) -> str:
    from tlcore.exports.script import training_script

    return training_script(run_dir)


def training_code(info) -> str:
    """The plain Keras script that trains the run again."""
    return _code(str(info.path), info.created)


def predict_zip(info, uploaded, progress=None):
    """Every picture of an uploaded zip classified: the rows, and the same as CSV. The upload is not kept."""
    from tlcore.predict import batch_csv, get_predictor, predict_batch

    path = save_upload(uploaded, "datasets")
    try:
        rows = predict_batch(info.path, path, progress=progress, work_dir=work_dir() / "uploads")
    finally:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()
    return rows, batch_csv(rows, get_predictor(info.path).labels)


@st.cache_data(max_entries=64, show_spinner=False)
def _explanation(run_dir: str, model_stamp: int, data: bytes):
    from tlcore.explain import explain

    return explain(run_dir, data).overlay


def explanation(info, data: bytes):
    """The Grad-CAM overlay of a picture (its bytes) for the predicted class, made once per model and picture."""
    return _explanation(str(info.path), info.run.model_stamp() or 0, bytes(data))
