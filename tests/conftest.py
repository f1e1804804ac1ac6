"""Shared fixtures: the offline assets beside the project, and a Keras cache holding real weights."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
MOBILENET_WEIGHTS = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests never touch the user's own work folder or runs; a test that needs its own sets them itself.
os.environ.setdefault("TLCORE_HOME", tempfile.mkdtemp(prefix="tl-test-home-"))
os.environ.setdefault("TLCORE_RUNS", tempfile.mkdtemp(prefix="tl-test-runs-"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def asset(*parts: str) -> Path:
    """Path of an offline asset; skips the test when absent, except in CI where it fails."""
    path = ASSETS.joinpath(*parts)
    if not path.exists():
        message = f"offline asset missing: {path}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    return asset()


@pytest.fixture(scope="session")
def horses_or_humans() -> Path:
    return asset("datasets", "horse-or-human")


@pytest.fixture(scope="session")
def flowers() -> Path:
    return asset("datasets", "flowers")


@pytest.fixture(scope="session")
def small_dataset(horses_or_humans, tmp_path_factory):
    """24 horses and 24 humans from the real horse-or-human set, split 36 / 12."""
    from tlcore.dataset import load_folder

    root = tmp_path_factory.mktemp("small") / "horse-or-human"
    for name in ("horses", "humans"):
        (root / name).mkdir(parents=True)
        for path in sorted((horses_or_humans / name).glob("*.png"))[:24]:
            shutil.copy(path, root / name / path.name)
    return load_folder(root, val_split=0.25, seed=0)


@pytest.fixture(scope="session")
def keras_home(tmp_path_factory) -> Path:
    """A temporary KERAS_HOME whose cache holds the real MobileNetV2 (alpha 0.35) weights."""
    weights = asset("weights", MOBILENET_WEIGHTS)
    home = tmp_path_factory.mktemp("keras_home")
    (home / "models").mkdir()
    shutil.copy(weights, home / "models" / MOBILENET_WEIGHTS)
    return home


@pytest.fixture
def real_weights(keras_home, monkeypatch) -> Path:
    """Points Keras' weights cache at `keras_home` for one test."""
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    return keras_home


@pytest.fixture
def no_cached_weights(tmp_path, monkeypatch) -> Path:
    """An empty Keras cache, so `imagenet` weights must be downloaded (which fails offline)."""
    home = tmp_path / "empty_keras_home"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def browser():
    """A headless Debian Chromium driven by Playwright, for one test module."""
    from browser_helpers import CHROMIUM_ARGS, require_chromium

    chromium = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory, keras_home):
    """One `streamlit run` server for the browser tests that need no fresh one (each browser
    context is a new visitor, in its own workspace)."""
    from browser_helpers import Server, require_chromium

    require_chromium()
    running = Server(tmp_path_factory.mktemp("server"), keras_home)
    try:
        running.wait_healthy()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, keras_home, horses_or_humans):
    """A real run trained for 2 epochs on a small part of horses-or-humans (page and workspace tests)."""
    from conftest_data import small_zip
    from tlcore import runs
    from tlcore.config import ModelConfig, TrainConfig
    from tlcore.training import train

    root = tmp_path_factory.mktemp("trained")
    data = root / "data.zip"
    data.write_bytes(small_zip(horses_or_humans, 12))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(keras_home))
        job = train(
            data,
            ModelConfig(input_size=96),
            TrainConfig(epochs=2, batch_size=8),
            runs_dir=root / "runs",
            work_dir=root / "home",
        )
    assert job.snapshot().status == runs.FINISHED, job.snapshot().message
    return job.run_dir
