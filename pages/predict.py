"""Predict page: classify new pictures (uploaded, from the camera, or a whole zip) and see why the model decided."""

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

one, many = st.tabs(["A few pictures", "A whole zip or folder"])


def a_few_pictures() -> None:
    uploads = st.file_uploader(
        "Upload one or more images",
        type=IMAGE_TYPES,
        accept_multiple_files=True,
        help="Any common format and any size: each picture is resized for the model automatically.",
    )
    with st.expander("…or take a picture with the camera", icon=":material/photo_camera:"):
        photo = st.camera_input("Take a picture", help="Your browser asks first whether this page may use the camera.")
    why = st.toggle("Why? Show where the model looks", key="keep.why",
                    help="Colours the parts of each picture that count most for the answer (Grad-CAM): red for the "
                    "strongest evidence.")
    pictures = [*(uploads or []), *([photo] if photo is not None else [])]
    if not pictures:
        st.info(f"The model knows these classes: {ui.plain(', '.join(info.classes))}. Upload a picture, or take one, "
                "to see what it thinks.", icon=":material/image:")
        return
    try:
        with st.spinner("Loading the model…"):
            predictor = get_predictor(info.path)
    except TransferLabError as error:
        ui.show_error(error)
        return
    for index, picture in enumerate(pictures):
        data = picture.getvalue()
        try:
            prediction = predictor.predict([data])[0]
        except TransferLabError as error:
            st.error(f"**{ui.plain(picture.name)}**: {ui.plain(error)}", icon=":material/error:")
            continue
        columns = st.columns([1, 1, 2] if why else [1, 2], gap="large", vertical_alignment="center")
        image = ui.thumbnail(data, 320)
        if image is not None:
            columns[0].image(image, caption=picture.name, width="stretch")
        if why:
            try:
                overlay = ui.explanation(info, data)
                columns[1].image(overlay, caption="Where the evidence is", width="stretch")
            except TransferLabError as error:
                columns[1].caption(ui.plain(error))
        chart = columns[-1]
        chart.markdown(f"### {ui.plain(prediction.top_class)} ({prediction.confidence:.0%} sure)")
        chart.plotly_chart(probabilities_figure(prediction.probabilities, title=picture.name),
                           key=f"probabilities-{index}-{picture.file_id}")
        st.divider()


with one:
    a_few_pictures()

with many:
    st.markdown("Classify every picture of a zip at once, and download the answers as a table (CSV).")
    batch = st.file_uploader("Drop a zip of pictures", type=["zip"], key="batch_zip",
                             help="Pictures in any folders inside; other files are ignored.")
    if batch is not None:
        try:
            bar = st.progress(0.0, text="Classifying…")
            rows, csv = ui.predict_zip(info, batch, lambda done, total: bar.progress(done / total,
                                                                                     text=f"{done} of {total} pictures"))
            bar.empty()
        except TransferLabError as error:
            ui.show_error(error)
        else:
            st.download_button("Download the answers (.csv)", data=csv, file_name=f"{info.name}-predictions.csv",
                               mime="text/csv", icon=":material/download:")
            st.dataframe(
                [{"image": row.image, "class": row.prediction.top_class if row.prediction else "",
                  "sure": row.prediction.confidence if row.prediction else None, "problem": row.problem} for row in rows],
                hide_index=True, column_config={"sure": st.column_config.ProgressColumn("Sure", format="percent",
                                                                                        min_value=0.0, max_value=1.0)},
            )

