"""In a real Chromium: class names from a hostile zip are shown as written, never as links, images or markup.

A folder named `[Session expired - log in again](https:evil.example)` must not become a link,
and `![x](https:evil.example)` must not make every viewer's browser fetch from that host.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from browser_helpers import SLOW, TRAINING, open_page, shot, type_number

HOST = "evil.example"
NAMES = [
    f"[Session expired - log in again](https:{HOST})",
    f"![x](https:{HOST})",
    f"<img src=https:{HOST}> :red[alarm] $x^2$ <a href=https:{HOST}>click",
]


@pytest.fixture(scope="module")
def hostile_zip(tmp_path_factory, horses_or_humans) -> Path:
    path = tmp_path_factory.mktemp("hostile") / f"[zip](https:{HOST}).zip"
    sources = [sorted((horses_or_humans / folder).iterdir())[:8] for folder in ("horses", "humans", "horses")]
    with zipfile.ZipFile(path, "w") as archive:
        for name, images in zip(NAMES, sources):
            for index, image in enumerate(images):
                archive.write(image, f"{name}/{index}-{name[:10]}.png")
    return path


def assert_nothing_reached(page, requests: list[str]) -> None:
    assert not [url for url in requests if HOST in url], "the browser contacted the host named in a class"
    for selector in (f"a[href*='{HOST}']", f"img[src*='{HOST}']", f"[style*='{HOST}']"):
        assert page.locator(selector).count() == 0, selector


def test_hostile_class_names_are_plain_text_everywhere(browser, server, hostile_zip, horses_or_humans):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    try:
        page.goto(server.url)
        page.get_by_role("heading", name="Data", exact=True).first.wait_for(timeout=SLOW)
        page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(hostile_zip))
        page.get_by_text("A few images of each class").wait_for(timeout=SLOW)
        page.wait_for_function("() => [...document.images].filter(i => i.complete && i.naturalWidth > 0).length >= 8")
        text = page.locator("body").inner_text()
        for name in NAMES:
            assert name in text, f"{name!r} is not shown as written"
        assert f"[zip](https:{HOST}).zip" in text
        assert_nothing_reached(page, requests)
        shot(page, "names-01-data")

        open_page(page, "Model")
        type_number(page, "Input size (pixels per side)", 96)
        open_page(page, "Train")
        type_number(page, "Epochs", 1)
        page.get_by_role("button", name="Start training").click()
        page.get_by_text(re.compile(r"Training finished in")).wait_for(timeout=TRAINING)
        assert_nothing_reached(page, requests)

        open_page(page, "Predict")
        page.get_by_test_id("stFileUploaderDropzoneInput").first.set_input_files(str(sorted((horses_or_humans / "humans").iterdir())[-1]))
        page.get_by_text(re.compile(r"\d+% sure")).first.wait_for(timeout=SLOW)
        heading = page.get_by_text(re.compile(r"\d+% sure")).first.inner_text()
        assert any(name in heading for name in NAMES), heading
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 1")
        assert_nothing_reached(page, requests)
        shot(page, "names-02-predict")

        open_page(page, "Evaluate")
        page.get_by_text("Images the model got wrong").wait_for(timeout=SLOW)
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 1")
        assert_nothing_reached(page, requests)
        shot(page, "names-03-evaluate")
    finally:
        context.close()
