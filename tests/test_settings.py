"""Settings: typed configs in and out of JSON, and every field present in the CLI and on its dashboard page."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tlcore.cli import build_parser
from tlcore.config import ModelConfig, Phase, Status, TrainConfig, config_fields, parse_dense_units
from tlcore.errors import ModelConfigError

ROOT = Path(__file__).resolve().parents[1]
WIDGETS = ("number_input", "selectbox", "checkbox", "select_slider", "slider", "text_input", "radio", "toggle")


def default(item: dataclasses.Field):
    return item.default if item.default is not dataclasses.MISSING else item.default_factory()


def test_the_train_command_has_a_flag_for_every_setting_with_the_same_default():
    train = build_parser().parse_args(["train", "data"])
    for config_class in (ModelConfig, TrainConfig):
        for item in config_fields(config_class):
            assert hasattr(train, item.name), f"no flag for {config_class.__name__}.{item.name}"
            value = getattr(train, item.name)
            assert (tuple(value) if isinstance(value, list) else value) == default(item), item.name
    parsed = build_parser().parse_args(
        ["train", "d", "--cut", "mixed7", "--dense", "1024", "--class-weights", "balanced", "--patience", "5", "--augment"]
    )
    assert (parsed.cut_layer, parsed.dense_units, parsed.class_weights, parsed.patience, parsed.augment) == (
        "mixed7", [1024], "balanced", 5, True)


def widget_keys(at: AppTest) -> set[str]:
    return {widget.key for kind in WIDGETS for widget in getattr(at, kind) if widget.key}


@pytest.mark.parametrize(("page", "config_class"), [("model", ModelConfig), ("train", TrainConfig)])
def test_every_setting_has_a_widget_on_its_page(page, config_class, tmp_path, monkeypatch):
    monkeypatch.setenv("TLCORE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TLCORE_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception
    missing = {f"keep.{item.name}" for item in config_fields(config_class)} - widget_keys(at)
    assert not missing, f"the {page} page has no widget for {sorted(missing)}"


def test_configs_round_trip_through_json_and_ignore_unknown_keys():
    model = ModelConfig(backbone="inception_v3", cut_layer="mixed7", pooling="flatten", dense_units=(1024,)).resolved()
    assert ModelConfig.from_json(model.to_json()) == model
    train = TrainConfig(epochs=3, class_weights="balanced").resolved()
    assert TrainConfig.from_dict({**train.to_dict(), "from_a_later_version": 1}) == train
    assert TrainConfig.from_dict({"epochs": 4}) == TrainConfig(epochs=4)


def test_settings_out_of_range_are_plain_errors():
    for bad in ({"epochs": 0}, {"optimizer": "adagrad"}, {"learning_rate": -1}, {"class_weights": "heavy"},
                {"augment_views": 99}, {"val_split": 1.5}, {"epochs": 2.5}):
        with pytest.raises(ModelConfigError):
            TrainConfig(**bad).resolved()
    with pytest.raises(ModelConfigError, match="dropout"):
        ModelConfig(dropout=1.0).resolved()


@pytest.mark.parametrize(("text", "units"), [("1024", (1024,)), ("256, 64", (256, 64)), ("", ()), ("none", ()),
                                             ("0", ()), ("512 128", (512, 128)), ((64, 0), (64,))])
def test_hidden_layer_sizes_are_read_as_typed(text, units):
    assert parse_dense_units(text) == units


def test_hidden_layer_sizes_that_are_not_numbers_are_a_plain_error():
    with pytest.raises(ModelConfigError, match="whole numbers"):
        parse_dense_units("lots")


def test_kept_views_never_exceed_the_epochs_that_read_them():
    assert TrainConfig(augment=True, augment_views=5, epochs=2).resolved().kept_views == 2
    assert TrainConfig(augment=False, augment_views=5).resolved().kept_views == 0


def test_phases_and_statuses_read_as_words():
    assert str(Phase.EXTRACTING) == "extracting features" and Status("finished").done and not Status.RUNNING.done
