"""Tests of `tlcore.charts`: each figure holds the right traces, values and axis formats."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from tlcore import charts

HISTORY = {
    "loss": [0.9, 0.6, 0.4],
    "accuracy": [0.5, 0.7, 0.85],
    "val_loss": [0.8, 0.65, 0.5],
    "val_accuracy": [0.55, 0.68, 0.8],
}


def test_history_accuracy_has_train_and_validation_curves_in_percent():
    figure = charts.history_figure(HISTORY, "accuracy")
    assert isinstance(figure, go.Figure)
    assert [trace.name for trace in figure.data] == ["Train", "Validation"]
    train, validation = figure.data
    assert list(train.x) == [1, 2, 3]
    assert list(train.y) == HISTORY["accuracy"]
    assert list(validation.y) == HISTORY["val_accuracy"]
    assert "markers" in train.mode
    assert figure.layout.yaxis.tickformat == ".0%"
    assert figure.layout.yaxis.range == (0, 1.05)
    assert figure.layout.xaxis.title.text == "Epoch"
    assert figure.layout.title.text == "Accuracy"


def test_the_epoch_early_stopping_kept_is_marked():
    figure = charts.history_figure(HISTORY, "loss", best_epoch=2)
    (line,) = figure.layout.shapes
    assert (line.x0, line.x1) == (2, 2)
    assert "epoch 2" in figure.layout.annotations[0].text
    assert len(figure.data) == 2, "the mark is no curve"
    assert not charts.history_figure(HISTORY, "loss").layout.shapes


def test_history_loss_is_not_a_percentage_and_takes_a_title():
    figure = charts.history_figure(HISTORY, "loss", title="Run 7")
    assert list(figure.data[1].y) == HISTORY["val_loss"]
    assert figure.layout.yaxis.tickformat is None
    assert figure.layout.yaxis.title.text == "Loss"
    assert figure.layout.title.text == "Run 7"


def test_history_with_one_epoch_or_missing_curves():
    figure = charts.history_figure({"accuracy": [0.4]}, "accuracy")
    assert len(figure.data) == 1
    assert list(figure.data[0].x) == [1]
    assert "markers" in figure.data[0].mode
    assert charts.history_figure({}, "loss").data == ()


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="`f1`"):
        charts.history_figure(HISTORY, "f1")


def test_compare_runs_overlays_validation_solid_and_train_dashed():
    runs = {"small": HISTORY, "big": {"accuracy": [0.6, 0.9], "val_accuracy": [0.7, 0.75]}, "empty": {}}
    figure = charts.compare_runs_figure(runs, "accuracy")
    assert len(figure.data) == 4
    by_name = {trace.name: trace for trace in figure.data}
    assert by_name["small (validation)"].line.dash == "solid"
    assert by_name["small (train)"].line.dash == "dash"
    assert list(by_name["big (validation)"].y) == [0.7, 0.75]
    assert list(by_name["big (train)"].x) == [1, 2]
    # One colour per run, shared by its two curves.
    assert by_name["small (train)"].line.color == by_name["small (validation)"].line.color
    assert by_name["small (train)"].line.color != by_name["big (train)"].line.color
    assert figure.layout.yaxis.tickformat == ".0%"


def test_counts_are_grouped_bars_per_split_and_class():
    counts = {"train": {"cat": 8, "dog": 10}, "validation": {"cat": 2, "dog": 3, "fox": 1}}
    figure = charts.counts_figure(counts)
    assert figure.layout.barmode == "group"
    assert [trace.name for trace in figure.data] == ["Train", "Validation"]
    assert list(figure.data[0].x) == ["cat", "dog", "fox"]
    assert list(figure.data[0].y) == [8, 10, 0]
    assert list(figure.data[1].y) == [2, 3, 1]
    assert all(isinstance(trace, go.Bar) for trace in figure.data)


def test_confusion_heatmap_has_true_rows_and_predicted_columns():
    matrix = [[5, 1, 0], [2, 3, 0], [0, 0, 0]]
    figure = charts.confusion_figure(matrix, ["a", "b", "c"])
    (heatmap,) = figure.data
    assert isinstance(heatmap, go.Heatmap)
    assert [list(row) for row in heatmap.z] == matrix
    assert list(heatmap.x) == ["a", "b", "c"] and list(heatmap.y) == ["a", "b", "c"]
    assert heatmap.texttemplate == "%{z}"
    assert heatmap.customdata[0][0] == pytest.approx(5 / 6)
    assert list(heatmap.customdata[2]) == [0.0, 0.0, 0.0]
    assert figure.layout.xaxis.title.text == "Predicted class"
    assert figure.layout.yaxis.title.text == "True class"
    assert figure.layout.yaxis.autorange == "reversed"


def test_confusion_needs_one_row_and_column_per_class():
    with pytest.raises(ValueError, match="3x3"):
        charts.confusion_figure([[1, 2], [3, 4]], ["a", "b", "c"])


def test_probabilities_are_sorted_bars_with_percent_labels():
    figure = charts.probabilities_figure({"cat": 0.2, "dog": 0.7, "fox": 0.1})
    (bars,) = figure.data
    assert bars.orientation == "h"
    # Plotly draws the last bar at the top, so the most likely class is last.
    assert list(bars.y) == ["fox", "cat", "dog"]
    assert list(bars.x) == [0.1, 0.2, 0.7]
    assert list(bars.text) == ["10.0%", "20.0%", "70.0%"]
    assert figure.layout.xaxis.tickformat == ".0%"
    assert figure.layout.xaxis.range == (0, 1)
