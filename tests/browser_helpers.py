"""Starting the dashboard and a headless Chromium for the end-to-end tests, and acting on widgets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = Path(os.environ.get("TLCORE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
SLOW = 120_000  # milliseconds: building a model on a busy machine
TRAINING = 300_000  # milliseconds: a whole (short) training on a busy machine


def require_chromium() -> Path:
    """The browser binary; fails in CI and skips elsewhere when it is missing."""
    if CHROMIUM.is_file():
        return CHROMIUM
    message = f"Chromium not found at {CHROMIUM} (install Debian's `chromium` package)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`streamlit run app.py` on a free port, with its own runs and work folders."""

    def __init__(self, tmp: Path, keras_home: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "server.log"
        env = {
            **os.environ,
            "KERAS_HOME": str(keras_home),
            "TLCORE_RUNS": str(tmp / "runs"),
            "TLCORE_HOME": str(tmp / "home"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        command = [
            sys.executable, "-m", "streamlit", "run", "app.py",
            "--server.headless", "true",
            "--server.port", str(self.port),
            "--server.address", "127.0.0.1",
            "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none",
        ]
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited early:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"streamlit did not become healthy in {timeout} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def shot(page, name: str) -> Path:
    """Saves a screenshot of the whole current page, taller than the window if need be."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # Streamlit scrolls inside its own container, so a "full page" screenshot would stop at the
    # window's edge: grow the window to the content's height for the picture instead.
    size = page.viewport_size
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=stMain], [data-testid=stSidebarContent]')]"
        ".map(e => e.scrollHeight), 0)"
    )
    page.set_viewport_size({"width": size["width"], "height": min(max(height, size["height"]), 4000)})
    try:
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)
    return path


def open_page(page, title: str) -> None:
    """Clicks a page in the sidebar navigation and waits for its title."""
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title, exact=True).click()
    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=SLOW)


def choose(page, label: str, option: str) -> None:
    """Picks `option` in the selectbox labelled `label`."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    page.get_by_role("option", name=option, exact=True).click()
    wait_for_value(page, label, option)


def wait_for_value(page, label: str, value: str) -> None:
    """Waits until the input labelled `label` shows `value` (the app has taken it)."""
    page.wait_for_function(
        "([label, value]) => [...document.querySelectorAll('input')].some("
        "i => i.getAttribute('aria-label') === label && i.value === value)",
        arg=[label, value],
        timeout=SLOW,
    )


def type_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    wait_for_value(page, label, str(value))


def chart_points(page, index: int = 0) -> list[int]:
    """Points per trace of the `index`-th Plotly chart on the page (0 when there is none)."""
    return page.evaluate(
        "(index) => { const plots = document.querySelectorAll('.js-plotly-plot');"
        " const plot = plots[index]; return plot && plot.data ? plot.data.map(t => (t.x || []).length) : []; }",
        index,
    )


def wait_for_points(page, count: int, timeout_ms: int = TRAINING) -> None:
    page.wait_for_function(
        "(count) => { const plot = document.querySelector('.js-plotly-plot');"
        " return plot && plot.data && plot.data.length > 0 && plot.data.every(t => (t.x || []).length >= count); }",
        arg=count,
        timeout=timeout_ms,
    )
