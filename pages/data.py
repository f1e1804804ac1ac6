"""Data page: upload a zip or pick a sample, then see whether the dataset is fit to train on."""

import streamlit as st

import dashboard as ui
from tlcore import workspaces
from tlcore.charts import counts_figure
from tlcore.errors import TransferLabError
from tlcore.samples import SAMPLES, prepare_sample

THUMBNAILS_PER_CLASS = 8

ui.page_setup()
st.title("Data")
st.markdown(
    "Give Transfer Lab some labelled pictures: **one folder per class**, for example `cats/` and "
    "`dogs/`, zipped together. A few dozen images per class are enough to start."
)

upload_column, sample_column = st.columns(2, gap="large")
with upload_column:
    uploaded = st.file_uploader(
        "Drop a zip of your images here, or click Upload",
        type=["zip"],
        help="Drag a .zip here or click to browse. Inside: one folder per class (or `train/` and "
        "`validation/` folders that each hold the class folders).",
    )
with sample_column:
    sample = st.selectbox(
        "…or use a built-in sample",
        list(SAMPLES),
        format_func=lambda name: SAMPLES[name].display_name,
        help="Ready-made datasets for trying Transfer Lab without your own pictures.",
    )
    st.caption(SAMPLES[sample].description + (" Needs the internet." if SAMPLES[sample].needs_download else ""))
    use_sample = st.button("Use this sample", icon=":material/download:")
    offered = {entry.source: entry.name for entry in workspaces.published(ui.work_dir())}
    use_published = None
    if offered:
        picked = st.selectbox("…or a dataset from your teacher", list(offered), format_func=offered.get)
        if st.button("Use the teacher's dataset", icon=":material/school:"):
            use_published = picked

try:
    if uploaded is not None and st.session_state.get("uploaded_id") != uploaded.file_id:
        st.session_state["uploaded_id"] = uploaded.file_id
        with st.spinner("Unpacking and checking every image…"):
            root = ui.load_upload(uploaded)
        ui.choose_dataset(root, uploaded.name)
        st.rerun()
    if use_sample:
        with st.spinner(f"Preparing the {SAMPLES[sample].display_name} sample…"):
            path = prepare_sample(sample, work_dir=ui.work_dir())
            ui.dataset(str(path))
        ui.choose_dataset(path, f"{SAMPLES[sample].display_name} (sample)")
        st.rerun()
    if use_published:
        ui.choose_dataset(use_published, offered[use_published])
        st.rerun()
except TransferLabError as error:
    ui.show_error(error)

source = st.session_state.get(ui.DATA_SOURCE)
if not source:
    st.info("No dataset chosen yet. Upload a zip or pick a sample above.", icon=":material/info:")
    st.stop()

try:
    with st.spinner("Checking the images…"):
        data = ui.dataset(source)
        report = ui.health(source)
except TransferLabError as error:
    ui.show_error(error)
    st.stop()

st.header(ui.plain(st.session_state.get(ui.DATA_NAME, "Dataset")), divider="gray")
totals = {split: sum(per.values()) for split, per in report.counts.items()}
metrics = st.columns(2 + len(totals))
metrics[0].metric("Classes", len(report.classes))
metrics[1].metric("Images", sum(totals.values()))
for column, (split, count) in zip(metrics[2:], totals.items()):
    column.metric(f"{split.capitalize()} images", count)
if not data.presplit:
    st.caption("The zip was not split, so 20 % of each class is held out to measure the model (validation).")

for message in report.errors:
    st.error(ui.plain(message), icon=":material/error:")
for message in report.warnings:
    st.warning(ui.plain(message), icon=":material/warning:")
if report.ok and not report.warnings:
    st.success("No problems found: this dataset is ready to train on.", icon=":material/check_circle:")

st.plotly_chart(counts_figure(report.counts, title="Images per class and split"))

if report.skipped:
    with st.expander(f"{len(report.skipped)} file(s) left out, and why"):
        st.dataframe(
            [{"file": item.path, "reason": item.reason} for item in report.skipped],
            hide_index=True,
        )
for groups, title in ((report.duplicates, "identical images"), (report.near_duplicates, "pictures that look alike")):
    if groups:
        with st.expander(f"{len(groups)} group(s) of {title}"):
            st.dataframe(
                [
                    {"kind": group.kind, "files": ", ".join(group.paths), "classes": ", ".join(group.classes),
                     "splits": ", ".join(group.splits)}
                    for group in groups
                ],
                hide_index=True,
            )

st.subheader("A few images of each class")
items = data.train + data.validation
for label, name in enumerate(data.classes):
    shown = [item for item in items if item.label == label][:THUMBNAILS_PER_CLASS]
    st.text(name)
    columns = st.columns(THUMBNAILS_PER_CLASS)
    for column, item in zip(columns, shown):
        image = ui.thumbnail(str(item.path))
        if image is not None:
            column.image(image, caption=item.name.rsplit("/", 1)[-1], width="stretch")

st.page_link("pages/model.py", label="Next: choose the model", icon=":material/arrow_forward:")
