"""Model page: choose the pretrained backbone, where to cut it, and the new head on top."""

import re

import streamlit as st

import dashboard as ui
from tlcore.backbones import BACKBONES, DEFAULT_BACKBONE, find_cached_weights, get_backbone
from tlcore.config import POOLING_LABELS, WEIGHT_LABELS, ModelConfig, parse_dense_units
from tlcore.errors import ModelConfigError, TransferLabError
from tlcore.layers import layer_table
from tlcore.model import summarize

DEFAULTS = ModelConfig()


def forget_backbone_choices() -> None:
    # Sizes and layer names differ between backbones: start from the new backbone's defaults.
    for key in ("keep.alpha", "keep.input_size", "keep.cut_layer"):
        st.session_state.pop(key, None)


ui.page_setup()
st.title("Model")
st.markdown(
    "Transfer learning reuses a network that already learned to see on 1.4 million photos "
    "(ImageNet). You keep its early layers, **cut** it somewhere, and train a small new **head** "
    "on your own classes."
)

st.subheader("1. Backbone")
left, right = st.columns([3, 2], gap="large")
with left:
    st.session_state.setdefault("keep.backbone", DEFAULT_BACKBONE)
    backbone = st.selectbox(
        "Pretrained network (backbone)",
        list(BACKBONES),
        format_func=lambda name: BACKBONES[name].display_name,
        key="keep.backbone",
        on_change=forget_backbone_choices,
        help="The network whose knowledge you reuse. Smaller ones train faster; bigger ones are often more accurate.",
    )
    spec = get_backbone(backbone)
    alpha = None
    if spec.alphas:
        st.session_state.setdefault("keep.alpha", spec.default_alpha)
        alpha = st.select_slider(
            "Width (alpha)",
            options=list(spec.alphas),
            key="keep.alpha",
            help="How many filters each layer has, as a fraction of the full network. Smaller is faster and less accurate.",
        )
    st.session_state.setdefault("keep.input_size", spec.default_input_size)
    input_size = st.number_input(
        "Input size (pixels per side)",
        min_value=spec.min_input_size,
        max_value=1024,
        step=8,
        key="keep.input_size",
        help="Every image is resized to this square before the network sees it. Bigger keeps more detail "
        f"but is slower; {spec.display_name} was trained at {spec.default_input_size}.",
    )
with right:
    st.markdown(f"**{spec.display_name}**: {spec.description}")
    stats = st.columns(2)
    stats[0].metric("ImageNet accuracy", f"{spec.top1(alpha):.1%}", help="Top-1 accuracy of the full network on ImageNet's 1,000 classes.")
    stats[1].metric("Parameters", f"{spec.parameter_count(alpha) / 1e6:.1f} M", help="Size of the full network, classifier included, in millions of parameters.")

weights_choice = st.radio(
    "Starting weights",
    list(WEIGHT_LABELS),
    format_func=WEIGHT_LABELS.get,
    horizontal=True,
    key="keep.weights",
    help="ImageNet weights are what make this transfer learning. A weights file is how the classic lab "
    "loads them from disk. Random weights start from nothing.",
)
weights = weights_choice
if weights_choice == "imagenet" and find_cached_weights(spec, alpha, int(input_size)) is None:
    st.info(
        f"The ImageNet weights of {spec.display_name} are not on this server yet; they are downloaded "
        "when training starts, which needs the internet.",
        icon=":material/cloud_download:",
    )
elif weights_choice == "file":
    weights_file = st.file_uploader(
        "Weights file (.h5)",
        type=["h5"],
        help=f"The `notop` weights of {spec.display_name}, for example `{spec.weights_file(alpha, int(input_size))[0]}`.",
    )
    weights = str(ui.save_upload(weights_file, "weights")) if weights_file is not None else "imagenet"
    if weights_file is None:
        st.caption("Until you upload a file, the ImageNet weights are used.")
elif weights_choice == "none":
    st.warning(
        "With random weights the backbone knows nothing yet: this is **not** transfer learning, and on a "
        "small dataset accuracy will be low. Use it to see how much the pretrained weights help.",
        icon=":material/warning:",
    )

try:
    with st.spinner(f"Reading the layers of {spec.display_name}…"):
        layers = layer_table(backbone, alpha, int(input_size))
except TransferLabError as error:
    ui.show_error(error)
    st.stop()

st.subheader("2. Where to cut")
st.markdown(
    "Early layers see edges and textures, late layers see whole objects. Cutting late usually works best; "
    "cutting earlier keeps more general features, which can help when your images look nothing like photos."
)
cuttable = layers[layers["flatten_features"].notna()]
remembered = st.session_state.get("keep.cut_layer")
if remembered in set(cuttable["name"]) - set(cuttable[cuttable["suggested_cut"]]["name"]):
    st.session_state["keep.any_layer"] = True  # a run cut at an unusual layer was opened
any_layer = st.toggle(
    "Let me cut at any layer",
    key="keep.any_layer",
    help="Off: only the layers where a cut makes sense (block outputs) are offered.",
)
choices = cuttable[any_layer | cuttable["suggested_cut"]]
shapes = dict(zip(choices["name"], choices["output_shape"]))
names = list(shapes)
if st.session_state.get("keep.cut_layer") not in names:
    st.session_state["keep.cut_layer"] = spec.default_cut if spec.default_cut in names else names[-1]
cut_layer = st.selectbox(
    "Cut layer",
    names,
    key="keep.cut_layer",
    help="The backbone is kept up to and including this layer; everything after it is thrown away.",
)
st.caption(f"`{cut_layer}` gives a grid of {shapes[cut_layer]} features (height x width x channels).")

with st.expander("Layer browser: every layer of the backbone", icon=":material/table_rows:"):
    filters = st.columns([2, 2, 1])
    search = filters[0].text_input("Search layer names", placeholder="for example mixed or block_13")
    types = filters[1].multiselect("Layer types", sorted(layers["type"].unique()), placeholder="All types")
    only_cuts = filters[2].checkbox("Suggested cuts only")
    shown = layers
    if search:
        shown = shown[shown["name"].str.contains(re.escape(search), case=False)]
    if types:
        shown = shown[shown["type"].isin(types)]
    if only_cuts:
        shown = shown[shown["suggested_cut"]]
    st.caption(f"{len(shown)} of {len(layers)} layers. Ticked rows are suggested cut layers.")
    st.dataframe(
        shown,
        hide_index=True,
        column_order=["position", "suggested_cut", "name", "type", "output_shape", "params", "connected_to"],
        column_config={
            "position": st.column_config.NumberColumn("#", width="small"),
            "suggested_cut": st.column_config.CheckboxColumn("Cut", width="small", help="A suggested cut layer"),
            "name": st.column_config.TextColumn("Name"),
            "type": st.column_config.TextColumn("Type"),
            "output_shape": st.column_config.TextColumn("Output shape", help="Height x width x channels"),
            "params": st.column_config.NumberColumn("Parameters", format="localized"),
            "connected_to": st.column_config.TextColumn("Input from"),
        },
    )

st.subheader("3. The new head")
for key, value in (
    ("keep.pooling", DEFAULTS.pooling),
    ("keep.dense_units", ", ".join(str(units) for units in DEFAULTS.dense_units)),
    ("keep.dropout", DEFAULTS.dropout),
):
    st.session_state.setdefault(key, value)
head = st.columns(3, gap="large")
pooling = head[0].radio(
    "Pooling",
    list(POOLING_LABELS),
    format_func=POOLING_LABELS.get,
    key="keep.pooling",
    help="How the cut layer's grid of features becomes one list of numbers. Average or maximum keep one "
    "number per channel (small head); Flatten keeps every position (much bigger head).",
)
dense_text = head[1].text_input(
    "Hidden layer sizes",
    key="keep.dense_units",
    help="Neurons in each hidden Dense layer of the head, separated by commas, for example `128` or "
    "`1024, 256`. Leave empty (or 0) for no hidden layer.",
)
dropout = head[2].slider(
    "Dropout rate",
    min_value=0.0,
    max_value=0.9,
    step=0.05,
    key="keep.dropout",
    help="During training, this share of the head's neurons is switched off at random each step, "
    "which stops the head from memorising the training images. 0.2 to 0.5 is typical.",
)

try:
    config = ModelConfig(
        backbone=backbone,
        alpha=alpha,
        input_size=int(input_size),
        cut_layer=cut_layer,
        pooling=pooling,
        dense_units=parse_dense_units(dense_text),
        dropout=dropout,
        weights=weights,
    ).resolved()
    summary = summarize(config, ui.class_count())
except ModelConfigError as error:
    ui.show_error(error)
    st.stop()
if st.session_state.get(ui.MODEL_CONFIG) != config:
    ui.remember_model(config)
    st.rerun()  # so the sidebar, drawn first, shows the new settings

st.subheader("Summary")
if st.session_state.get(ui.DATA_SOURCE) is None:
    st.caption("Counted for 2 classes until you choose a dataset on the Data page.")
numbers = st.columns(3)
numbers[0].metric("Cut layer output", " x ".join(str(v) for v in summary.cut_output_shape), help="Height x width x channels of the features the head receives.")
numbers[1].metric("Features into the head", f"{summary.feature_count:,}")
numbers[2].metric("Head parameters", f"{summary.head_params:,}", help="Numbers the training will adjust.")
numbers = st.columns(3)
numbers[0].metric("Total parameters", f"{summary.total_params:,}")
numbers[1].metric("Trainable", f"{summary.trainable_params:,}", help="Only the head trains; the backbone stays frozen.")
numbers[2].metric("Non-trainable", f"{summary.non_trainable_params:,}", help="The frozen backbone up to the cut.")
for message in summary.warnings:
    st.warning(message, icon=":material/warning:")

st.page_link("pages/train.py", label="Next: train it", icon=":material/arrow_forward:")
