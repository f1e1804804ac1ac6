"""End to end in a real headless Chromium: from a zip to a trained model and a prediction."""

from __future__ import annotations

import re
import zipfile
from urllib.parse import parse_qs, urlparse
from pathlib import Path

import pytest

from tlcore.model import ModelConfig, summarize

from browser_helpers import (
    SLOW,
    TRAINING,
    chart_points,
    choose,
    open_page,
    shot,
    type_number,
    wait_for_points,
)

IMAGES_PER_CLASS = 40


@pytest.fixture(scope="module")
def workspace():
    """The workspace token of this module's first page; later tests open it as another device would."""
    return {}


@pytest.fixture
def page(browser, server, request, workspace):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(server.url + (f"/?ws={workspace['token']}" if workspace else ""))
    page.get_by_role("heading", name="Data", exact=True).first.wait_for(timeout=SLOW)
    page.wait_for_url(re.compile(r"[?&]ws=[A-Za-z0-9_-]{22,}"))
    workspace.setdefault("token", parse_qs(urlparse(page.url).query)["ws"][0])
    yield page
    shot(page, f"last-{request.node.name}")  # the page as it was when the test ended, passed or not
    context.close()


@pytest.fixture(scope="module")
def dataset_zip(tmp_path_factory, horses_or_humans) -> Path:
    """40 horses and 40 humans from the real dataset, zipped as a user would."""
    path = tmp_path_factory.mktemp("upload") / "horses-or-humans.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for folder in ("horses", "humans"):
            for image in sorted((horses_or_humans / folder).iterdir())[:IMAGES_PER_CLASS]:
                archive.write(image, f"horse-or-human/{folder}/{image.name}")
    return path


def upload_dataset(page, dataset_zip: Path) -> None:
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(dataset_zip))
    page.get_by_text("Images per class and split").first.wait_for(timeout=SLOW)
    page.get_by_text("A few images of each class").wait_for(timeout=SLOW)


def test_from_zip_to_prediction(page, server, dataset_zip, horses_or_humans):
    shot(page, "01-data-empty")
    upload_dataset(page, dataset_zip)
    page.wait_for_function("() => [...document.images].filter(i => i.complete && i.naturalWidth > 0).length >= 8")
    sidebar = page.get_by_test_id("stSidebar")
    assert "horses-or-humans.zip" in sidebar.inner_text()
    shot(page, "02-data-health")

    open_page(page, "Model")
    choose(page, "Pretrained network (backbone)", "MobileNetV2")
    type_number(page, "Input size (pixels per side)", 128)
    choose(page, "Cut layer", "block_14_add")
    dropout = page.get_by_role("slider", name="Dropout rate")
    dropout.focus()
    dropout.press("ArrowRight")
    dropout.press("ArrowRight")
    page.get_by_test_id("stSlider").filter(has_text="Dropout rate").get_by_text("0.30").wait_for()
    expected = summarize(ModelConfig(input_size=128, cut_layer="block_14_add", dropout=0.3), 2)
    page.get_by_test_id("stMetric").filter(has_text="Cut layer output").get_by_text(
        " x ".join(str(v) for v in expected.cut_output_shape)
    ).wait_for()
    page.get_by_test_id("stMetric").filter(has_text="Head parameters").get_by_text(f"{expected.head_params:,}").wait_for()
    assert "block_14_add" in sidebar.inner_text() and "dropout 0.3" in sidebar.inner_text()
    shot(page, "03-model")
    page.get_by_text("Layer browser: every layer of the backbone").click()
    page.get_by_label("Search layer names").fill("block_14")
    page.get_by_label("Search layer names").press("Enter")
    page.get_by_text(re.compile(r"^\d+ of 154 layers")).wait_for()
    assert "of 154 layers" in page.get_by_text(re.compile("of 154 layers")).inner_text()
    shot(page, "03b-layer-browser")

    open_page(page, "Train")
    type_number(page, "Epochs", 2)
    page.get_by_role("button", name="Start training").click()
    page.get_by_role("button", name="Stop training").wait_for(timeout=SLOW)
    shot(page, "04-training")

    # Opening another page does not stop the training; the sidebar keeps following it.
    open_page(page, "Data")
    page.get_by_test_id("stSidebar").get_by_text(re.compile("Training|Waiting in line")).first.wait_for()
    shot(page, "05-other-page-while-training")
    open_page(page, "Train")
    page.get_by_text(re.compile(r"Training finished in")).wait_for(timeout=TRAINING)
    wait_for_points(page, 2)
    assert chart_points(page, 0) == [2, 2], "accuracy: train and validation, one point per epoch"
    assert chart_points(page, 1) == [2, 2], "loss"
    page.get_by_role("button", name="Download the model with its class names (.zip)").wait_for()
    shot(page, "06-trained")

    open_page(page, "Predict")
    unseen = sorted((horses_or_humans / "horses").iterdir())[-1]
    page.get_by_test_id("stFileUploaderDropzoneInput").first.set_input_files(str(unseen))
    page.get_by_text(re.compile(r"\d+% sure")).first.wait_for(timeout=SLOW)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 1")
    bars = page.evaluate("() => document.querySelector('.js-plotly-plot').data[0]")
    assert sorted(bars["y"]) == ["horses", "humans"]
    assert sum(bars["x"]) == pytest.approx(1.0, abs=1e-3)
    shot(page, "07-predict")

    open_page(page, "Evaluate")
    page.get_by_text("Images the model got wrong").wait_for(timeout=SLOW)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 1")
    shot(page, "08-evaluate")

    open_page(page, "Runs")
    page.get_by_text("Every training is kept").wait_for()
    page.get_by_test_id("stDataFrame").wait_for()
    shot(page, "09-runs")


def test_stop_training_after_a_reload(page, server, dataset_zip):
    upload_dataset(page, dataset_zip)
    open_page(page, "Model")
    type_number(page, "Input size (pixels per side)", 96)
    page.get_by_test_id("stSidebar").get_by_text("96 px").wait_for()
    open_page(page, "Train")
    type_number(page, "Epochs", 200)
    page.get_by_text("Augment images").click()
    page.get_by_text("Augmentation costs time").wait_for()
    page.get_by_role("button", name="Start training").click()
    wait_for_points(page, 1)

    # A reload starts a new browser session; the page finds the training still going.
    page.reload()
    page.get_by_role("button", name="Stop training").wait_for(timeout=SLOW)
    wait_for_points(page, 1)
    shot(page, "10-reattached-after-reload")

    # Another student, in another browser, types the training's address: it grants nothing.
    job = parse_qs(urlparse(page.url).query)["job"][0]
    stranger = page.context.browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        other = stranger.new_page()
        other.goto(f"{server.url}/train?job={job}")
        other.get_by_role("heading", name="Train", exact=True).first.wait_for(timeout=SLOW)
        other.get_by_text("Choose a dataset first").wait_for(timeout=SLOW)
        assert other.get_by_test_id("stSidebar").get_by_text("Nothing training now").is_visible()
        assert not other.get_by_role("button", name="Stop training").count()
        assert job not in other.url, "the stranger's tab names no training of someone else"
        shot(other, "10b-stranger-with-the-job-address")
        for address, says in (("runs", "no trained model yet"), ("predict", "no trained model yet"), ("data", "No dataset chosen yet")):
            other.goto(f"{server.url}/{address}?job={job}")
            other.get_by_text(says).first.wait_for(timeout=SLOW)
            assert not other.locator("img[src*='media']").count(), f"no picture of another's dataset on {address}"
    finally:
        stranger.close()
    page.get_by_role("button", name="Stop training").click()
    page.get_by_text("Stopped by the user").wait_for(timeout=TRAINING)
    assert page.get_by_role("button", name="Start training").is_enabled()
    assert 1 <= chart_points(page, 0)[0] < 200
    assert "200" in page.get_by_label("Epochs", exact=True).input_value(), "the reloaded page shows the job's settings"
    shot(page, "11-stopped")

    # Two runs now exist (this one, and the one before in the same workspace, opened here from its
    # address as on another device): select both and overlay their curves.
    page.get_by_test_id("stToast").first.wait_for(state="hidden", timeout=SLOW)
    open_page(page, "Runs")
    table = page.get_by_test_id("stDataFrame")
    table.wait_for()
    box = table.bounding_box()
    for row in (1, 2):
        page.mouse.click(box["x"] + 18, box["y"] + 35 * row + 17)
    page.get_by_role("heading", name="Compare").wait_for(timeout=SLOW)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 1")
    assert len(chart_points(page, 0)) == 4, "train and validation curves of two runs"
    shot(page, "12-runs-compare")
