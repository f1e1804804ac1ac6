"""What a browser session remembers: the chosen dataset and model, and widgets kept across pages."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from tlcore.config import ModelConfig, TrainConfig, config_fields

# Session State keys that are not widgets, so they survive page switches as they are.
DATA_SOURCE = "dataset_source"  # folder or zip path of the chosen dataset
DATA_NAME = "dataset_name"  # what the user calls it: the zip's name or the sample's
MODEL_CONFIG = "model_config"  # the ModelConfig chosen on the Model page
CURRENT_RUN = "current_run"  # run folder used by Evaluate and Predict

# Widget keys with this prefix keep their value when the user opens another page and comes back.
KEEP = "keep."
# Every setting has a widget under KEEP + its field name: the Model page for ModelConfig,
# the Train page for TrainConfig (a test checks both pages against the fields).
MODEL_SETTINGS = tuple(item.name for item in config_fields(ModelConfig))
TRAIN_SETTINGS = tuple(item.name for item in config_fields(TrainConfig))


def remember_widgets() -> None:
    """Keeps remembered widgets' values when a page without them runs.

    Streamlit forgets a widget's value once a page without it runs; writing the value back
    into Session State is the documented way to keep it across pages.
    """
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith(KEEP)]:
        st.session_state[key] = st.session_state[key]


def choose_dataset(source: str | Path, name: str) -> None:
    st.session_state[DATA_SOURCE] = str(source)
    st.session_state[DATA_NAME] = name


def model_config() -> ModelConfig:
    """The model settings chosen on the Model page, or the defaults."""
    config = st.session_state.get(MODEL_CONFIG)
    return config if config is not None else ModelConfig().resolved()


def show_model_settings(model_config: ModelConfig) -> None:
    """Sets the Model page's widgets to `model_config`."""
    st.session_state[MODEL_CONFIG] = model_config
    values = {name: getattr(model_config, name) for name in MODEL_SETTINGS}
    values["dense_units"] = ", ".join(str(units) for units in model_config.dense_units) or "0"
    values["weights"] = model_config.weights if model_config.weights in ("imagenet", "none") else "file"
    _set_widgets(values)


def show_settings(model_config: ModelConfig, train_config: TrainConfig) -> None:
    """Sets the Model and Train pages' widgets to a training's settings."""
    show_model_settings(model_config)
    values = {name: getattr(train_config, name) for name in TRAIN_SETTINGS}
    values["fine_tune_on"] = train_config.fine_tunes
    _set_widgets(values)


def _set_widgets(values: dict) -> None:
    for name, value in values.items():
        if value is not None:
            st.session_state[KEEP + name] = value
