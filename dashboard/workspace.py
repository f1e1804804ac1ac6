"""The browser session's workspace: its token in the address bar, and what its other tabs find again."""

from __future__ import annotations

import streamlit as st

from tlcore import workspaces
from tlcore.config import ModelConfig

from dashboard.state import DATA_NAME, DATA_SOURCE, MODEL_CONFIG, choose_dataset, show_model_settings

WORKSPACE_PARAM = "ws"  # address-bar parameter holding the workspace's secret token
TOKEN = "workspace_token"
TEACHER = "teacher"  # True once this session entered the teacher key


def current() -> workspaces.Workspace:
    """This session's workspace: the one in the address bar, else a new one."""
    from tlcore.runs import default_runs_dir

    if not workspaces.private():
        return workspaces.shared(default_runs_dir())
    token = st.session_state.get(TOKEN)
    if not token:
        given = st.query_params.get(WORKSPACE_PARAM, "")
        token = given if workspaces.valid_token(given) else workspaces.new_token()
        st.session_state[TOKEN] = token
        _restore(workspaces.Workspace.open(token, default_runs_dir()))
    return workspaces.Workspace.open(token, default_runs_dir())


def keep_in_address() -> None:
    """Opening another page clears the address bar: puts the workspace back, so a reload or a copied link finds it."""
    space = current()
    if space.token and st.query_params.get(WORKSPACE_PARAM) != space.token:
        st.query_params[WORKSPACE_PARAM] = space.token


def remember_dataset(source, name: str) -> None:
    """Chooses a dataset for this session and for the workspace's other tabs."""
    choose_dataset(source, name)
    current().remember(dataset={"source": str(source), "name": name})


def remember_model(config: ModelConfig) -> None:
    st.session_state[MODEL_CONFIG] = config
    current().remember(model=config.to_dict())


def _restore(space: workspaces.Workspace) -> None:
    """A new tab of a workspace starts with the dataset and model its other tabs chose."""
    from pathlib import Path

    from tlcore.errors import ModelConfigError

    kept = space.remembered()
    data = kept.get("dataset")
    if isinstance(data, dict) and DATA_SOURCE not in st.session_state:
        source, name = str(data.get("source", "")), str(data.get("name", ""))[:200]
        if source and Path(source).exists():
            st.session_state[DATA_SOURCE], st.session_state[DATA_NAME] = source, name
    model = kept.get("model")
    if isinstance(model, dict) and MODEL_CONFIG not in st.session_state:
        try:
            show_model_settings(ModelConfig.from_dict(model).resolved())
        except (ModelConfigError, TypeError, ValueError):
            pass
