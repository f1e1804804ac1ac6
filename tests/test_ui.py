"""The dashboard's one Streamlit patch keeps Keras' state between page reruns."""

import keras


def test_streamlit_no_longer_clears_keras_after_a_script_run(monkeypatch):
    from streamlit.runtime.scriptrunner import script_runner

    import dashboard  # noqa: F401  (installs the fix on import)

    cleared = []
    monkeypatch.setattr(keras.backend, "clear_session", lambda *a, **k: cleared.append(True))
    script_runner._clean_problem_modules()
    assert cleared == []
