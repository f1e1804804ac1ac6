"""Plotly figures for training curves, dataset counts, confusion matrices and predictions."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import plotly.colors
import plotly.graph_objects as go

METRICS = {"accuracy": "Accuracy", "loss": "Loss"}
TEMPLATE = "plotly_white"
PALETTE = plotly.colors.qualitative.Plotly
TRAIN_COLOR = PALETTE[0]
VALIDATION_COLOR = PALETTE[1]


def label(text) -> str:
    """A name from the user's files as Plotly shows it: its `<a href=...>` and the like are only text."""
    return html.escape(str(text), quote=False)


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"Unknown metric `{metric}`. Choose one of: {', '.join(METRICS)}.")
    return metric


def _epochs(values: Sequence) -> list[int]:
    # Keras counts epochs from 1 in its logs; the chart should agree with them.
    return list(range(1, len(values) + 1))


def _style(figure: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    figure.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.02, "xanchor": "left"},
        xaxis_title=x_title,
        yaxis_title=y_title,
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1},
        margin={"l": 60, "r": 20, "t": 80, "b": 50},
        hovermode="x unified",
    )
    return figure


def _metric_axes(figure: go.Figure, metric: str) -> None:
    epochs = max((len(trace.x) for trace in figure.data), default=0)
    if epochs <= 15:
        # Plotly would otherwise put ticks at half epochs on a short run.
        figure.update_xaxes(tickmode="linear", tick0=1, dtick=1)
    if metric == "accuracy":
        figure.update_yaxes(tickformat=".0%", range=[0, 1.05])
    else:
        figure.update_yaxes(rangemode="tozero")


def history_figure(
    history: Mapping[str, Sequence], metric: str = "accuracy", title: str | None = None, best_epoch: int | None = None,
    stage_starts: Mapping[str, int] | None = None,
) -> go.Figure:
    """Training and validation curves of one run, one point per epoch.

    Args:
        history: The run's history, with `metric` and `val_<metric>` lists (either may be
            missing or shorter while a run is still going).
        metric: `"accuracy"` or `"loss"`.
        title: Figure title; defaults to the metric's name.
        best_epoch: The epoch (from 1) early stopping restored, marked with a line; None for none.
        stage_starts: A later stage's name and its first epoch, each marked with a line
            (for example `{"fine-tuning": 11}`).

    Returns:
        A figure with one trace per curve present in `history`.

    Raises:
        ValueError: `metric` is not one of the supported metrics.
    """
    metric = _check_metric(metric)
    figure = go.Figure()
    curves = (("Train", metric, TRAIN_COLOR), ("Validation", f"val_{metric}", VALIDATION_COLOR))
    for name, key, color in curves:
        values = list(history.get(key) or [])
        if not values:
            continue
        figure.add_trace(
            go.Scatter(
                x=_epochs(values),
                y=values,
                name=name,
                mode="lines+markers",
                line={"color": color, "width": 2},
                marker={"size": 7},
            )
        )
    _style(figure, label(title) if title else METRICS[metric], "Epoch", METRICS[metric])
    _metric_axes(figure, metric)
    for name, epoch in (stage_starts or {}).items():
        # Between the stage's first epoch and the one before: the boundary of the two stages.
        figure.add_vline(
            x=epoch - 0.5, line={"color": "#9333ea", "dash": "dot", "width": 1.5},
            annotation={"text": label(name), "font": {"size": 12, "color": "#6b21a8"}},
            annotation_position="bottom right",
        )
    if best_epoch:
        figure.add_vline(
            x=best_epoch, line={"color": "#6b7280", "dash": "dash", "width": 1.5},
            annotation={"text": f"kept: epoch {best_epoch}", "font": {"size": 12, "color": "#374151"}},
            annotation_position="top left",
        )
    return figure


def stage_starts(stages: Sequence[str]) -> dict[str, int]:
    """The first epoch (from 1) of each stage after the first, from a history's per-epoch stage names."""
    starts: dict[str, int] = {}
    for epoch, stage in enumerate(stages, start=1):
        if epoch > 1 and stage != stages[epoch - 2] and stage not in starts:
            starts[stage] = epoch
    return starts


def compare_runs_figure(runs: Mapping[str, Mapping[str, Sequence]], metric: str = "accuracy", title: str | None = None) -> go.Figure:
    """Several runs' curves on one chart: validation solid, train dashed, one colour per run.

    Args:
        runs: Run name to that run's history.
        metric: `"accuracy"` or `"loss"`.
        title: Figure title; defaults to "Validation <metric> by run".

    Returns:
        A figure with up to two traces per run, grouped in the legend by run.

    Raises:
        ValueError: `metric` is not one of the supported metrics.
    """
    metric = _check_metric(metric)
    figure = go.Figure()
    for index, (run_name, history) in enumerate(runs.items()):
        color = PALETTE[index % len(PALETTE)]
        curves = (("validation", f"val_{metric}", "solid"), ("train", metric, "dash"))
        for part, key, dash in curves:
            values = list(history.get(key) or [])
            if not values:
                continue
            figure.add_trace(
                go.Scatter(
                    x=_epochs(values),
                    y=values,
                    name=f"{label(run_name)} ({part})",
                    legendgroup=label(run_name),
                    mode="lines+markers",
                    line={"color": color, "width": 2, "dash": dash},
                    marker={"size": 6},
                )
            )
    _style(figure, title or f"Validation {METRICS[metric].lower()} by run", "Epoch", METRICS[metric])
    _metric_axes(figure, metric)
    return figure


def counts_figure(counts: Mapping[str, Mapping[str, int]], title: str = "Images per class") -> go.Figure:
    """Grouped bars: for each class, one bar per split.

    Args:
        counts: Split name to class name to image count, as `Dataset.counts()` gives.
        title: Figure title.

    Returns:
        A figure with one bar trace per split.
    """
    classes: list[str] = []
    for per_class in counts.values():
        classes += [name for name in per_class if name not in classes]
    figure = go.Figure()
    for index, (split, per_class) in enumerate(counts.items()):
        values = [int(per_class.get(name, 0)) for name in classes]
        figure.add_trace(
            go.Bar(
                x=[label(name) for name in classes],
                y=values,
                name=split.capitalize(),
                text=values,
                textposition="outside",
                marker_color=PALETTE[index % len(PALETTE)],
            )
        )
    _style(figure, title, "Class", "Images")
    figure.update_layout(barmode="group", hovermode="closest")
    figure.update_yaxes(rangemode="tozero")
    figure.update_xaxes(type="category")
    return figure


def confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str = "Confusion matrix") -> go.Figure:
    """An annotated heatmap of a confusion matrix.

    Args:
        matrix: Counts, rows the true class and columns the predicted class.
        classes: Class names in the matrix's order.
        title: Figure title.

    Returns:
        A figure with one heatmap trace; each cell shows its count, and hovering shows the
        share of that true class it holds.

    Raises:
        ValueError: the matrix is not square with one row per class.
    """
    rows = [[int(value) for value in row] for row in matrix]
    classes = [label(name) for name in classes]
    if len(rows) != len(classes) or any(len(row) != len(classes) for row in rows):
        raise ValueError(
            f"The confusion matrix must be {len(classes)}x{len(classes)} for {len(classes)} classes."
        )
    shares = [[value / sum(row) if sum(row) else 0.0 for value in row] for row in rows]
    figure = go.Figure(
        go.Heatmap(
            z=rows,
            x=classes,
            y=classes,
            customdata=shares,
            colorscale="Blues",
            texttemplate="%{z}",
            hovertemplate="True %{y}<br>Predicted %{x}<br>%{z} images (%{customdata:.0%} of %{y})<extra></extra>",
            colorbar={"title": {"text": "Images"}},
        )
    )
    _style(figure, title, "Predicted class", "True class")
    figure.update_layout(hovermode="closest")
    # Reading order: the first class at the top left, like the printed matrix.
    figure.update_yaxes(autorange="reversed", type="category")
    figure.update_xaxes(type="category", side="bottom")
    return figure


def probabilities_figure(probabilities: Mapping[str, float], title: str = "Prediction") -> go.Figure:
    """Horizontal bars of class probabilities, the most likely class at the top.

    Args:
        probabilities: Class name to probability (0-1).
        title: Figure title.

    Returns:
        A figure with one bar trace whose bars are labelled in percent.
    """
    ranked = sorted(probabilities.items(), key=lambda item: item[1], reverse=True)
    # Plotly draws the first bar at the bottom, so the list goes in lowest first.
    names = [label(name) for name, _ in reversed(ranked)]
    values = [float(value) for _, value in reversed(ranked)]
    colors = [PALETTE[0] if index == len(values) - 1 else "#9db4d6" for index in range(len(values))]
    figure = go.Figure(
        go.Bar(
            x=values,
            y=names,
            orientation="h",
            text=[f"{value:.1%}" for value in values],
            textposition="auto",
            marker_color=colors,
            hovertemplate="%{y}: %{x:.1%}<extra></extra>",
        )
    )
    _style(figure, label(title), "Probability", "Class")
    figure.update_layout(hovermode="closest", showlegend=False, height=max(220, 60 + 40 * len(values)))
    figure.update_xaxes(tickformat=".0%", range=[0, 1])
    figure.update_yaxes(type="category")
    return figure
