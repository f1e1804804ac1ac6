"""Every dashboard page driven with Streamlit's AppTest: widgets, defaults, errors, numbers."""

from __future__ import annotations

import ast
import re
import io
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

import tlcore.engines
from tlcore import runs
from tlcore.errors import DatasetError
from tlcore.config import ModelConfig, TrainConfig
from tlcore.model import summarize
from tlcore.training import JobState

from conftest_data import small_zip

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["data", "model", "train", "evaluate", "predict", "runs", "class"]
TIMEOUT = 120


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Separate work and runs folders for one test, as the server's environment sets them.

    Workspaces are off: these tests are about the pages, and put their runs in `TLCORE_RUNS`
    itself; `test_workspaces.py` covers private workspaces.
    """
    monkeypatch.setenv("TLCORE_WORKSPACES", "off")
    monkeypatch.setenv("TLCORE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TLCORE_RUNS", str(tmp_path / "runs"))
    return SimpleNamespace(home=tmp_path / "home", runs=tmp_path / "runs")


def app(page: str | None = None, **state) -> AppTest:
    """The app opened on `page`, with Session State preset."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    # The app hides error details from users; a failing test should show them.
    st_config.set_option("client.showErrorDetails", "full")
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> list[str]:
    """What the elements say, as a reader sees it: the Markdown escapes of user-supplied names removed."""
    return [re.sub(r"\\(.)", r"\1", str(element.value)) for element in elements]


def sidebar_text(at: AppTest) -> str:
    """Everything the sidebar says; names a user chose are shown as plain text, the rest as Markdown."""
    return " ".join(texts(at.sidebar.markdown) + texts(at.sidebar.text) + texts(at.sidebar.caption))


def metrics(at: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in at.metric}


# Navigation ---------------------------------------------------------------------------------


def test_navigation_lists_the_pages_in_order():
    tree = ast.parse((ROOT / "app.py").read_text())
    pages = [
        call
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "Page"
    ]
    titles = [next(k.value.value for k in call.keywords if k.arg == "title") for call in pages]
    assert titles == ["Data", "Model", "Train", "Evaluate", "Predict", "Runs", "Class"]
    assert [call.args[0].value for call in pages] == [f"pages/{name}.py" for name in PAGES]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens_without_a_dataset_or_runs(dirs, page):
    at = app(page)
    assert at.title[0].value == page.capitalize()
    assert any("None chosen yet" in text for text in texts(at.sidebar.caption))


# Data ---------------------------------------------------------------------------------------


def test_data_page_defaults(dirs):
    at = app()
    assert at.file_uploader[0].label == "Drop a zip of your images here, or click Upload"
    assert at.file_uploader[0].allowed_type == [".zip"]
    assert at.selectbox[0].value == "shapes"
    assert at.button[0].label == "Use this sample"
    assert any("No dataset chosen yet" in text for text in texts(at.info))


def test_data_page_uses_the_shapes_sample_and_shows_its_health(dirs):
    at = app()
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert metrics(at)["Classes"] == "4"
    assert metrics(at)["Train images"] == "384"
    assert at.success, "a clean dataset says so"
    assert at.get("plotly_chart"), "counts chart"
    assert len(at.get("imgs")) >= 4 or len(at.get("image")) >= 4
    assert "Shapes (sample)" in sidebar_text(at)


def test_data_page_reads_an_uploaded_zip_of_a_real_dataset(dirs, horses_or_humans):
    at = app()
    at.file_uploader[0].set_value(("hoh.zip", small_zip(horses_or_humans, 6), "application/zip")).run()
    assert not at.exception and not at.error, texts(at.error)
    assert metrics(at)["Classes"] == "2"
    assert metrics(at)["Images"] == "12"
    sidebar = sidebar_text(at)
    assert "hoh.zip" in sidebar and "horses" in sidebar
    # The choice stays when another page is opened.
    at.switch_page("pages/model.py").run()
    assert "hoh.zip" in sidebar_text(at)


def test_an_upload_is_unpacked_once_and_not_kept(dirs, horses_or_humans):
    long_name = "p" * 300 + ".zip"  # a name no file system takes
    data = small_zip(horses_or_humans, 6)
    at = app()
    at.file_uploader[0].set_value((long_name, data, "application/zip")).run()
    assert not at.exception and not at.error, texts(at.error)
    assert metrics(at)["Images"] == "12"
    uploads = dirs.home / "uploads"
    assert not [p for p in uploads.rglob("*") if p.is_file()], "the upload is deleted once unpacked"
    again = app()
    again.file_uploader[0].set_value(("same.zip", data, "application/zip")).run()
    assert not again.exception and metrics(again)["Images"] == "12"
    assert len([p for p in (dirs.home / "datasets").iterdir()]) == 1, "the same zip is stored once"


def test_data_page_shows_a_bad_zip_as_a_message(dirs):
    at = app()
    at.file_uploader[0].set_value(("broken.zip", b"this is not a zip", "application/zip")).run()
    assert not at.exception
    assert at.error and "zip" in at.error[0].value.lower()


def test_data_page_reports_skipped_files(dirs, horses_or_humans):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for folder in ("horses", "humans"):
            for image in sorted((horses_or_humans / folder).iterdir())[:4]:
                archive.write(image, f"{folder}/{image.name}")
        archive.writestr("humans/notes.txt", "not an image")
        archive.writestr("horses/broken.png", b"\x89PNG not really")
    at = app()
    at.file_uploader[0].set_value(("mixed.zip", buffer.getvalue(), "application/zip")).run()
    assert not at.exception and not at.error
    labels = [expander.label for expander in at.expander]
    assert any("left out" in label for label in labels), labels


def test_data_page_shows_an_unavailable_sample_as_a_message(dirs, monkeypatch):
    import tlcore.samples

    def offline(name, work_dir=None):
        raise DatasetError("The sample could not be downloaded: there is no internet connection.")

    monkeypatch.setattr(tlcore.samples, "prepare_sample", offline)
    at = app()
    at.selectbox[0].set_value("cats_and_dogs")
    at.button[0].click().run()
    assert not at.exception
    assert "no internet" in at.error[0].value


# Model --------------------------------------------------------------------------------------


def summary_metrics(config: ModelConfig, classes: int = 2) -> dict[str, str]:
    summary = summarize(config, classes)
    return {
        "Cut layer output": " x ".join(str(v) for v in summary.cut_output_shape),
        "Features into the head": f"{summary.feature_count:,}",
        "Head parameters": f"{summary.head_params:,}",
        "Total parameters": f"{summary.total_params:,}",
        "Trainable": f"{summary.trainable_params:,}",
        "Non-trainable": f"{summary.non_trainable_params:,}",
    }


def test_model_page_defaults_match_the_library(dirs):
    at = app("model")
    assert at.selectbox(key="keep.backbone").value == "mobilenet_v2"
    assert at.number_input(key="keep.input_size").value == 224
    assert at.select_slider(key="keep.alpha").value == 0.35
    assert at.selectbox(key="keep.cut_layer").value == "out_relu"
    assert at.radio(key="keep.weights").value == "imagenet"
    assert at.radio(key="keep.pooling").value == "avg"
    assert at.text_input(key="keep.dense_units").value == "128"
    assert at.slider(key="keep.dropout").value == pytest.approx(0.2)
    shown = metrics(at)
    for label, value in summary_metrics(ModelConfig()).items():
        assert shown[label] == value, label
    assert all(widget.help for widget in (at.selectbox(key="keep.backbone"), at.slider(key="keep.dropout")))


def test_model_page_summary_follows_cut_head_and_dataset(dirs):
    at = app("model")
    at.selectbox(key="keep.cut_layer").set_value("block_12_add").run()
    at.radio(key="keep.pooling").set_value("flatten")
    at.text_input(key="keep.dense_units").set_value("2048, 64")
    at.slider(key="keep.dropout").set_value(0.5).run()
    assert not at.exception and not at.error
    config = ModelConfig(cut_layer="block_12_add", pooling="flatten", dense_units=(2048, 64), dropout=0.5)
    shown = metrics(at)
    for label, value in summary_metrics(config).items():
        assert shown[label] == value, label
    assert any("parameters" in text for text in texts(at.warning)), "a huge head is flagged"
    assert at.session_state["model_config"] == config.resolved()
    # The settings stay when the user goes elsewhere and comes back.
    at.switch_page("pages/train.py").run()
    at.switch_page("pages/model.py").run()
    assert at.selectbox(key="keep.cut_layer").value == "block_12_add"
    assert at.slider(key="keep.dropout").value == pytest.approx(0.5)


def test_model_page_switching_backbone_resets_its_choices(dirs):
    at = app("model")
    at.selectbox(key="keep.backbone").set_value("inception_v3").run()
    assert not at.exception and not at.error
    assert at.number_input(key="keep.input_size").value == 150
    assert at.selectbox(key="keep.cut_layer").value == "mixed7"
    assert "mixed5" in at.selectbox(key="keep.cut_layer").options[5]
    shown = metrics(at)
    for label, value in summary_metrics(ModelConfig(backbone="inception_v3")).items():
        assert shown[label] == value, label


def test_model_page_layer_browser_searches_and_filters(dirs):
    at = app("model")
    table = at.dataframe[0].value
    assert len(table) == 154 and {"name", "type", "output_shape", "params", "suggested_cut"} <= set(table.columns)
    at.text_input[0].set_value("block_13").run()
    names = at.dataframe[0].value["name"].tolist()
    assert names and all("block_13" in name for name in names)
    at.text_input[0].set_value("").run()
    at.checkbox[0].check().run()
    assert at.dataframe[0].value["suggested_cut"].all()


def test_model_page_shows_bad_input_as_messages(dirs):
    at = app("model")
    at.text_input(key="keep.dense_units").set_value("lots").run()
    assert not at.exception
    assert "whole numbers" in at.error[0].value and "lots" in at.error[0].value
    at.text_input(key="keep.dense_units").set_value("128")
    at.radio(key="keep.weights").set_value("none").run()
    assert any("not** transfer learning" in text for text in texts(at.warning))


def test_model_page_uses_an_uploaded_weights_file(dirs):
    at = app("model")
    at.radio(key="keep.weights").set_value("file").run()
    at.file_uploader[0].set_value(("weights.h5", b"not weights", "application/octet-stream")).run()
    assert not at.exception
    assert at.session_state["model_config"].weights.endswith("weights.h5")
    assert Path(at.session_state["model_config"].weights).read_bytes() == b"not weights"


# Train --------------------------------------------------------------------------------------


class FakeJob:
    def __init__(self, run_dir: Path, **state):
        self.run_dir = run_dir
        self.state = JobState(**state)
        self.data = run_dir.parent / "data.zip"
        self.model_config = ModelConfig(input_size=96).resolved()
        self.train_config = TrainConfig(epochs=state.get("epochs", 10)).resolved()
        self.run_folder = runs.Run(run_dir)

    @property
    def id(self):
        return str(self.run_dir)

    def snapshot(self):
        return self.state


class FakeManager:
    workers = 1

    def __init__(self, job=None, position=0):
        self.job, self.place, self.stopped, self.submitted = job, position, [], []

    def get(self, job_id):
        return self.job if self.job and job_id == self.job.id else None

    def active(self):
        return self.job if self.job and self.job.state.status == runs.RUNNING else None

    def jobs(self):
        return [self.job] if self.job else []

    def position(self, job_id):
        return self.place

    def estimated_start(self, job_id):
        return 90.0 if self.place else None

    def device(self):
        return None

    def stop(self, job_id):
        self.stopped.append(job_id)

    def submit(self, data, model_config=None, train_config=None, runs_dir=None, work_dir=None):
        self.submitted.append((data, model_config, train_config))
        self.job = FakeJob(Path(runs_dir) / "20260101-000000-fake", status=runs.QUEUED, epochs=train_config.epochs)
        return self.job


@pytest.fixture
def fake_manager(monkeypatch):
    fake = FakeManager()
    monkeypatch.setattr(tlcore.engines, "engine", lambda: fake)
    return fake


def with_sample(page: str) -> AppTest:
    at = app()
    at.button[0].click().run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception
    return at


def test_train_page_asks_for_a_dataset_first(dirs):
    at = app("train")
    assert "Choose a dataset first" in at.info[0].value
    assert at.button[0].label == "Start training" and at.button[0].disabled


def test_train_page_defaults_match_the_library(dirs, fake_manager):
    at = with_sample("train")
    defaults = TrainConfig()
    assert at.number_input(key="keep.epochs").value == defaults.epochs
    assert at.selectbox(key="keep.batch_size").value == defaults.batch_size
    assert at.selectbox(key="keep.optimizer").value == defaults.optimizer
    assert at.select_slider(key="keep.learning_rate").value == defaults.learning_rate
    assert at.checkbox(key="keep.augment").value is False
    assert at.checkbox(key="keep.early_stopping").value is False
    assert at.button[0].label == "Start training"
    assert at.selectbox(key="keep.augment_views").value == defaults.augment_views
    assert at.selectbox(key="keep.augment_views").disabled
    at.checkbox(key="keep.augment").check().run()
    assert any("costs time" in text for text in texts(at.caption))
    assert not at.selectbox(key="keep.augment_views").disabled


def test_train_page_offers_kept_augmented_copies(dirs, fake_manager):
    at = with_sample("train")
    at.checkbox(key="keep.augment").check().run()
    at.selectbox(key="keep.augment_views").set_value(3).run()
    assert any("runs once over 3 augmented copies" in text for text in texts(at.caption))
    at.button[0].click().run()
    assert not at.exception
    _, _, train_config = fake_manager.submitted[0]
    assert (train_config.augment, train_config.augment_views) == (True, 3)


def test_train_page_submits_the_chosen_settings(dirs, fake_manager):
    fake_manager.place = 1
    at = with_sample("train")
    at.number_input(key="keep.epochs").set_value(3)
    at.selectbox(key="keep.optimizer").set_value("rmsprop")
    at.button[0].click().run()
    assert not at.exception
    data, model_config, train_config = fake_manager.submitted[0]
    assert Path(data).name == "shapes" or "shapes" in str(data)
    assert model_config == ModelConfig().resolved()
    assert (train_config.epochs, train_config.optimizer) == (3, "rmsprop")
    assert at.session_state["job_id"] == "20260101-000000-fake"
    assert "waiting in line" in at.info[0].value


def test_train_page_shows_a_refused_start_as_a_message(dirs, fake_manager):
    def refuse(*args, **kwargs):
        raise DatasetError("The dataset folder `gone` does not exist.")

    fake_manager.submit = refuse
    at = with_sample("train")
    at.button[0].click().run()
    assert not at.exception
    assert "does not exist" in at.error[0].value


def running_job(tmp_path) -> FakeJob:
    history = {"loss": [0.6, 0.4], "accuracy": [0.7, 0.8], "val_loss": [0.5, 0.45], "val_accuracy": [0.75, 0.8]}
    return FakeJob(
        tmp_path / "runs" / "run-1", status=runs.RUNNING, phase="training", epoch=2, epochs=5, step=3, steps=10,
        eta_seconds=4.0, history=history,
    )


def test_train_page_reattaches_after_a_reload_and_stops_the_job(dirs, fake_manager, tmp_path):
    fake_manager.job = running_job(tmp_path)
    # A reload opens a new session; the address bar still names the tab's training.
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["job"] = "run-1"
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception
    assert at.session_state["job_id"] == "run-1"
    assert at.session_state["keep.input_size"] == 96, "the job's settings are shown again"
    assert at.button[0].label == "Start training" and at.button[0].disabled
    assert any("epoch 3 of 5" in text for text in texts(at.markdown))
    assert "epoch 3 of 5" in " ".join(texts(at.sidebar.caption))
    assert at.get("progress")
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    figure = json.loads(charts[0].proto.spec)
    assert [len(trace["x"]) for trace in figure["data"]] == [2, 2]
    at.button(key="stop").click().run()
    assert fake_manager.stopped == [fake_manager.job.id]
    # Opening another page keeps the training in the address bar, for the next reload.
    at.switch_page("pages/data.py").run()
    assert at.query_params["job"] == "run-1"


def test_a_queued_training_that_has_just_started_is_not_said_to_wait_at_place_0(dirs, fake_manager):
    # The worker took it between the page reading its status (queued) and asking for its place.
    at = with_sample("train")
    at.button[0].click().run()
    assert not at.exception
    shown = " ".join(texts(at.info) + texts(at.markdown))
    assert "place 0" not in shown and "Waiting in line: starting" in shown


def test_train_page_lets_a_second_user_queue_behind_a_running_job(dirs, fake_manager, tmp_path):
    fake_manager.job = running_job(tmp_path)
    at = with_sample("train")
    assert at.session_state["job_id"] == "run-1"
    assert any("started by someone else" in text for text in texts(at.caption))
    assert not [button for button in at.button if button.label == "Stop training"]
    start = at.button[0]
    assert start.label == "Start training" and not start.disabled
    fake_manager.place = 1
    start.click().run()
    assert fake_manager.submitted, "a second training is queued"
    assert at.session_state["job_id"] == "20260101-000000-fake"
    assert "waiting in line, place 1" in at.info[0].value
    assert "start in about 1 min 30 s" in at.info[0].value, "its estimated start"
    assert at.button[0].disabled


def test_train_page_shows_the_result_of_a_real_training(dirs, keras_home, monkeypatch, horses_or_humans):
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    at = app(**{"keep.input_size": 96})
    at.file_uploader[0].set_value(("hoh.zip", small_zip(horses_or_humans, 10), "application/zip")).run()
    at.switch_page("pages/model.py").run()
    assert at.number_input(key="keep.input_size").value == 96
    at.switch_page("pages/train.py").run()
    at.number_input(key="keep.epochs").set_value(2)
    at.selectbox(key="keep.batch_size").set_value(8)
    at.button[0].click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert tlcore.engines.engine().wait_idle(TIMEOUT)
    at.run()
    assert not at.exception
    assert "Training finished" in at.success[0].value, texts(at.error)
    assert metrics(at)["Epochs"] == "2"
    assert {button.label for button in at.get("download_button")} >= {"Download the model with its class names (.zip)"}
    assert Path(at.session_state["current_run"]).name == at.session_state["job_id"]


def test_train_page_shows_a_training_a_restart_interrupted(dirs, trained_run, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "runs" / "20260101-000000-interrupted"
    shutil.copytree(trained_run, run)
    (run / "model.keras").unlink()
    status = json.loads((run / "status.json").read_text())
    status.update(status="running", pid=2**22 + 7, token="the-server-before", process_start=1)
    (run / "status.json").write_text(json.dumps(status))
    monkeypatch.setenv("TLCORE_RUNS", str(run.parent))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["job"] = run.name
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception
    warning = " ".join(texts(at.warning))
    assert "interrupted" in warning and "after 2 epoch(s)" in warning and "No model was saved" in warning
    assert len(at.get("plotly_chart")) == 2, "the curves of the epochs it finished"
    for hostile in ("../../etc", "x/../../y", "%2e%2e"):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
        at.query_params["job"] = hostile
        at.run()
        at.switch_page("pages/train.py").run()
        assert not at.exception and not at.warning, "an address names nothing outside the runs folder"


# Evaluate, Predict, Runs --------------------------------------------------------------------


@pytest.mark.parametrize("page", ["evaluate", "predict"])
def test_pages_needing_a_model_say_so(dirs, page):
    at = app(page)
    assert "no trained model yet" in at.info[0].value


def test_evaluate_page_scores_a_run(dirs, trained_run, monkeypatch):
    monkeypatch.setenv("TLCORE_RUNS", str(trained_run.parent))
    at = app("evaluate")
    assert not at.error, texts(at.error)
    assert at.selectbox[0].value.path == trained_run
    assert metrics(at)["Images"] == "4"
    assert at.get("plotly_chart"), "confusion matrix"
    frame = at.dataframe[0].value
    assert list(frame.columns) == ["class", "precision", "recall", "f1", "support"]
    assert frame["class"].tolist() == ["horses", "humans"]


def test_evaluate_page_scores_a_test_split_first_when_the_run_has_one(dirs, trained_run, tmp_path, monkeypatch):
    import shutil

    run = tmp_path / "runs" / "with-test"
    shutil.copytree(trained_run, run)
    split = json.loads((run / "split.json").read_text())
    split["test"] = split["validation"][:2]
    (run / "split.json").write_text(json.dumps(split))
    monkeypatch.setenv("TLCORE_RUNS", str(run.parent))
    at = app("evaluate")
    assert not at.error, texts(at.error)
    control = at.get("button_group")[0]
    assert metrics(at)["Images"] == "2", "the test images are scored first"
    assert "Test" in str(control.proto) and "Validation" in str(control.proto)


def test_evaluate_page_shows_a_broken_run_as_a_message(dirs, trained_run, tmp_path, monkeypatch):
    import shutil

    broken = tmp_path / "runs" / "broken-run"
    shutil.copytree(trained_run, broken)
    (broken / "model.keras").write_bytes(b"garbage")
    monkeypatch.setenv("TLCORE_RUNS", str(broken.parent))
    at = app("evaluate")
    assert not at.exception
    assert "could not be loaded" in at.error[0].value


def png_bytes(color=(200, 120, 40), size=(300, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def test_predict_page_classifies_uploads_and_reports_bad_ones(dirs, trained_run, monkeypatch, horses_or_humans):
    monkeypatch.setenv("TLCORE_RUNS", str(trained_run.parent))
    at = app("predict")
    horse = sorted((horses_or_humans / "horses").iterdir())[-1]
    at.file_uploader[0].set_value(
        [("horse.png", horse.read_bytes(), "image/png"), ("flat.png", png_bytes(), "image/png"),
         ("broken.jpg", b"not an image", "image/jpeg")]
    ).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert sorted(figure["data"][0]["y"]) == ["horses", "humans"]
    assert len(at.error) == 1 and "broken.jpg" in texts(at.error)[0]


def test_runs_page_lists_compares_and_deletes(dirs, trained_run, tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "many"
    shutil.copytree(trained_run, folder / trained_run.name)
    shutil.copytree(trained_run, folder / "20000101-000000-copy")
    (folder / "not-a-run").mkdir()
    (folder / "corrupt").mkdir()
    (folder / "corrupt" / "config.json").write_text("{ not json")
    monkeypatch.setenv("TLCORE_RUNS", str(folder))
    at = app("runs")
    table = at.dataframe[0].value
    assert len(table) == 2
    assert set(table["status"]) == {"finished"}
    assert table["val_accuracy"].notna().all()
    at.session_state["runs_table"] = {"selection": {"rows": [0, 1], "columns": [], "cells": []}}
    at.run()
    assert not at.exception
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(figure["data"]) == 4, "train and validation of each run"
    at.session_state["runs_table"] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    at.run()
    at.button(key=None)
    labels = [button.label for button in at.button]
    assert "Use as current model" in labels
    next(b for b in at.button if b.label == "Use as current model").click().run()
    assert at.session_state["current_run"] == str(folder / "20000101-000000-copy")
    next(b for b in at.button if b.label == "Copy its settings").click().run()
    assert at.session_state["keep.epochs"] == 2 and at.session_state["keep.input_size"] == 96
    at.switch_page("pages/model.py").run()
    assert at.number_input(key="keep.input_size").value == 96
    at.switch_page("pages/runs.py").run()
    at.session_state["runs_table"] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    at.run()
    next(b for b in at.button if b.label == "Yes, delete").click().run()
    assert not at.exception
    assert not (folder / "20000101-000000-copy").exists()
    assert "current_run" not in at.session_state
    assert len(at.dataframe[0].value) == 1


def test_runs_page_exports_a_run_and_offers_its_code(dirs, trained_run, monkeypatch):
    monkeypatch.setenv("TLCORE_RUNS", str(trained_run.parent))
    at = app("runs")
    at.session_state["runs_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert not at.exception
    formats = at.multiselect[0]
    assert {"keras", "tflite"} <= set(formats.value)
    formats.set_value(["keras", "tflite"]).run()
    next(b for b in at.button if b.label == "Prepare the export").click().run()
    assert not at.exception and not at.error, texts(at.error)
    labels = {button.label for button in at.get("download_button")}
    assert {"Download the export (.zip)", "Download the code (train_again.py)"} <= labels
    table = at.dataframe[-1].value
    assert set(table["file"]) == {"model.keras", "model.tflite"}


def jpeg_of(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_predict_page_takes_a_camera_picture_and_shows_why(dirs, trained_run, monkeypatch, horses_or_humans):
    monkeypatch.setenv("TLCORE_RUNS", str(trained_run.parent))
    at = app("predict")
    at.camera_input[0].set_value(("shot.jpg", jpeg_of(sorted((horses_or_humans / "horses").iterdir())[-1]),
                                  "image/jpeg")).run()
    assert not at.exception and not at.error, texts(at.error)
    headings = [text for text in texts(at.markdown) if "% sure)" in text]
    assert len(headings) == 1 and ("horses" in headings[0] or "humans" in headings[0])
    def pictures():
        return len(at.get("imgs")) + len(at.get("image"))

    shown = pictures()
    assert shown >= 1
    at.toggle(key="keep.why").set_value(True).run()
    assert not at.exception
    assert pictures() == shown + 1, "the Grad-CAM overlay beside the picture"


def test_predict_page_answers_a_whole_zip_as_csv(dirs, trained_run, monkeypatch, horses_or_humans):
    monkeypatch.setenv("TLCORE_RUNS", str(trained_run.parent))
    at = app("predict")
    zipped = small_zip(horses_or_humans, 3)
    at.file_uploader(key="batch_zip").set_value(("pictures.zip", zipped, "application/zip")).run()
    assert not at.exception and not at.error, texts(at.error)
    assert "Download the answers (.csv)" in {button.label for button in at.get("download_button")}
    table = at.dataframe[0].value
    assert len(table) == 6 and set(table["class"]) <= {"horses", "humans"}
    assert not [p for p in (dirs.home / "uploads").rglob("*") if p.is_file()], "the zip is not kept"
