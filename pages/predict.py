"""Predict page: classify new pictures with the current model or any earlier one."""

import streamlit as st

import dashboard as ui
from tlcore.charts import probabilities_figure
from tlcore.errors import TransferLabError
from tlcore.predict import get_predictor

IMAGE_TYPES = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"]

ui.page_setup()
st.title("Predict")

info = ui.run_picker()
if info is None:
    ui.no_runs_yet()
    st.stop()

uploads = st.file_uploader(
    "Upload one or more images",
    type=IMAGE_TYPES,
    accept_multiple_files=True,
    help="Any common format and any size: each picture is resized for the model automatically.",
)
if not uploads:
    st.info(f"The model knows these classes: {ui.plain(', '.join(info.classes))}. Upload a picture to see what it thinks.",
            icon=":material/image:")
    st.stop()

try:
    with st.spinner("Loading the model…"):
        predictor = get_predictor(info.path)
except TransferLabError as error:
    ui.show_error(error)
    st.stop()

for upload in uploads:
    try:
        prediction = predictor.predict([upload.getvalue()])[0]
    except TransferLabError as error:
        st.error(f"**{ui.plain(upload.name)}**: {ui.plain(error)}", icon=":material/error:")
        continue
    picture, chart = st.columns([1, 2], gap="large", vertical_alignment="center")
    image = ui.thumbnail(upload.getvalue(), 320)
    if image is not None:
        picture.image(image, caption=ui.plain(upload.name), width="stretch")
    chart.markdown(f"### {ui.plain(prediction.top_class)} ({prediction.confidence:.0%} sure)")
    chart.plotly_chart(probabilities_figure(prediction.probabilities, title=upload.name), key=f"probabilities-{upload.file_id}")
    st.divider()
