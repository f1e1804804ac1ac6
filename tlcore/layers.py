"""The layer browser's data: every layer of a backbone as a table, and what each cut would cost."""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import pandas as pd

from tlcore.backbones import get_backbone, suggested_cuts
from tlcore.model import random_backbone

COLUMNS = [
    "position",
    "name",
    "type",
    "output_shape",
    "params",
    "trainable",
    "connected_to",
    "suggested_cut",
    "flatten_features",
    "pooled_features",
]
_LOCK = threading.Lock()


def _shape_text(shape) -> str:
    return " x ".join("?" if v is None else str(v) for v in tuple(shape)[1:])


def _inbound_names(layer) -> list[str]:
    names = []
    for node in getattr(layer, "_inbound_nodes", []):
        for tensor in getattr(node, "input_tensors", []):
            history = getattr(tensor, "_keras_history", None)
            if history is not None and history.operation.name not in names:
                names.append(history.operation.name)
    return names


@lru_cache(maxsize=16)
def _table(name: str, alpha: float | None, size: int) -> pd.DataFrame:
    base = random_backbone(name, alpha, size)
    spec = get_backbone(name)
    cuts = set(suggested_cuts(spec, [layer.name for layer in base.layers]))
    rows = []
    for position, layer in enumerate(base.layers):
        shape = tuple(layer.output.shape)
        image_shaped = len(shape) == 4 and all(v is not None for v in shape[1:])
        rows.append(
            {
                "position": position,
                "name": layer.name,
                "type": type(layer).__name__,
                "output_shape": _shape_text(shape),
                "params": int(layer.count_params()),
                # The backbone is always frozen: none of its layers is trained.
                "trainable": False,
                "connected_to": ", ".join(_inbound_names(layer)),
                "suggested_cut": layer.name in cuts,
                "flatten_features": math.prod(shape[1:]) if image_shaped else None,
                "pooled_features": shape[-1] if image_shaped else None,
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("flatten_features", "pooled_features"):
        table[column] = table[column].astype("Int64")
    return table


def layer_table(
    backbone: str,
    alpha: float | None = None,
    input_size: int | None = None,
    dense_units: int = 1024,
    num_classes: int = 2,
) -> pd.DataFrame:
    """Every layer of a backbone, as `model.summary()` shows them, plus cut costs.

    The architecture is built once per (backbone, alpha, input size) and cached, so later
    requests only copy a table.

    Args:
        backbone: Backbone key, for example `inception_v3`.
        alpha: Width multiplier (MobileNetV2 only).
        input_size: Side of the square input; the backbone's default when `None`.
        dense_units: Units of the first Dense layer used for the head-size columns
            (0 for none).
        num_classes: Classes used for the head-size columns.

    Returns:
        A DataFrame with columns `position`, `name`, `type`, `output_shape`, `params`,
        `trainable`, `connected_to`, `suggested_cut`, `flatten_features`, `pooled_features`,
        `flatten_head_params` and `pooled_head_params` (the parameters a head would have
        when cutting at that layer).

    Raises:
        ModelConfigError: unknown backbone, alpha or input size.
    """
    spec = get_backbone(backbone)
    alpha = spec.resolve_alpha(alpha)
    size = spec.resolve_input_size(input_size)
    with _LOCK:
        table = _table(spec.name, alpha, size).copy()
    outputs = 1 if num_classes == 2 else num_classes

    def head(features):
        if pd.isna(features):
            return pd.NA
        features = int(features)
        if dense_units:
            return features * dense_units + dense_units + dense_units * outputs + outputs
        return features * outputs + outputs

    table["flatten_head_params"] = table["flatten_features"].map(head).astype("Int64")
    table["pooled_head_params"] = table["pooled_features"].map(head).astype("Int64")
    return table


def cut_options(backbone: str, alpha: float | None = None, input_size: int | None = None, **kwargs) -> pd.DataFrame:
    """Only the suggested cut layers of `layer_table`, in network order."""
    table = layer_table(backbone, alpha, input_size, **kwargs)
    return table[table["suggested_cut"]].reset_index(drop=True)
