"""Every page runs inside `app.py`'s navigation, even the first one a fresh server is asked for."""

from __future__ import annotations

import runpy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

APP = Path(__file__).resolve().parents[1] / "app.py"  # in the repository; installed, Streamlit says where
_this_run = threading.local()  # Streamlit runs each script run of a session in one thread


@contextmanager
def app_navigation() -> Iterator[None]:
    """Marks the script run as going through `app.py`: the pages run inside this block."""
    outer = getattr(_this_run, "in_app", False)
    _this_run.in_app = True
    try:
        yield
    finally:
        _this_run.in_app = outer


def run_inside_app() -> None:
    """Hands a page that Streamlit started without `app.py` over to `app.py`, in the same run.

    Until some session of a server has called `st.navigation`, Streamlit follows its older
    convention for a `pages/` folder beside the main script: an address such as /train runs
    `pages/train.py` on its own, so the sidebar lists file names. Running `app.py` here calls
    `st.navigation` (the sidebar gets the named pages, and the server drops the older
    convention for every later run), and `app.py` runs this page again inside its navigation.
    That run drew the whole page, so this one stops. Rerunning instead (`st.rerun`) would drop
    the click that started the run.
    """
    if getattr(_this_run, "in_app", False):
        return
    runpy.run_path(str(_main_script()), run_name="__main__")
    st.stop()


def _main_script() -> Path:
    """The `app.py` this server runs (the repository's, or the installed package's)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    context = get_script_run_ctx()
    path = getattr(context, "main_script_path", None)
    return Path(path) if path else APP
