"""The layer browser's table: every layer, its shape and connections, and what each cut costs."""

import pytest

from tlcore.errors import ModelConfigError
from tlcore.layers import COLUMNS, cut_options, layer_table
from tlcore.model import ModelConfig, random_backbone, summarize


def test_inception_table_describes_every_layer_like_model_summary():
    table = layer_table("inception_v3", input_size=150)
    model = random_backbone("inception_v3", None, 150)
    assert list(table["name"]) == [layer.name for layer in model.layers]
    assert set(COLUMNS) <= set(table.columns)
    assert table["params"].sum() == model.count_params()
    mixed7 = table.set_index("name").loc["mixed7"]
    assert mixed7["output_shape"] == "7 x 7 x 768"
    assert mixed7["type"] == "Concatenate"
    assert mixed7["suggested_cut"]
    assert len(mixed7["connected_to"].split(", ")) == 4
    # Flatten after mixed7 feeding Dense(1024): the classic lab's 38.5 million head.
    assert mixed7["flatten_head_params"] == 38_537_217
    assert mixed7["pooled_features"] == 768


def test_suggested_cuts_are_in_network_order():
    cuts = cut_options("inception_v3")
    assert list(cuts["name"]) == [f"mixed{i}" for i in range(11)]


def test_head_columns_agree_with_summarize():
    table = layer_table("mobilenet_v2", alpha=0.35, input_size=96, dense_units=64, num_classes=4).set_index("name")
    for pooling, column in [("flatten", "flatten_head_params"), ("avg", "pooled_head_params")]:
        config = ModelConfig(backbone="mobilenet_v2", alpha=0.35, input_size=96, cut_layer="block_13_expand_relu", pooling=pooling, dense_units=(64,), weights="none")
        assert table.loc["block_13_expand_relu", column] == summarize(config, 4).head_params


def test_architecture_is_built_once_and_tables_are_copies():
    layer_table("resnet50_v2", input_size=64)
    assert random_backbone("resnet50_v2", None, 64) is random_backbone("resnet50_v2", None, 64)
    again = layer_table("resnet50_v2", input_size=64)
    again.loc[0, "name"] = "changed"
    assert layer_table("resnet50_v2", input_size=64).loc[0, "name"] != "changed"


def test_unknown_backbone():
    with pytest.raises(ModelConfigError, match="Unknown backbone"):
        layer_table("alexnet")
