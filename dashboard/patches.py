"""The one change the dashboard makes to Streamlit itself, and why."""

from __future__ import annotations


def keep_keras_between_reruns() -> None:
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
