"""Evaluate page: how well a trained model does on the validation images, and where it goes wrong."""

import streamlit as st

import dashboard as ui
from tlcore.charts import confusion_figure
from tlcore.config import SPLIT_LABELS
from tlcore.errors import TransferLabError

GALLERY_COLUMNS = 6
GALLERY_SIZE = 24

ui.page_setup()
st.title("Evaluate")
st.markdown("The model is scored on pictures it never trained on: its **validation** images, or a **test** "
            "folder when the dataset has one.")

info = ui.run_picker()
if info is None:
    ui.no_runs_yet()
    st.stop()

split = info.run.split()
subsets = ["test", "validation"] if split is not None and split.test else ["validation"]
subset = st.segmented_control(
    "Images to score", subsets, format_func=SPLIT_LABELS.get, default=subsets[0], required=True,
    help="Test images (a `test/` folder in the dataset) were used neither to train nor to pick the model; "
    "they give the fairest figure.",
)
try:
    with st.spinner(f"Classifying every {SPLIT_LABELS[subset].lower()} image…"):
        result = ui.evaluation(info, subset)
except TransferLabError as error:
    ui.show_error(error)
    st.stop()

for note in result.notes:
    st.info(note, icon=":material/info:")
numbers = st.columns(3)
numbers[0].metric("Accuracy", f"{result.accuracy:.1%}", help=f"Share of {subset} images classified correctly.")
numbers[1].metric("Images", result.total)
numbers[2].metric("Mistakes", len(result.misclassified))

left, right = st.columns([3, 2], gap="large")
with left:
    st.plotly_chart(confusion_figure(result.confusion_matrix, result.classes))
    st.caption("Each row is the true class, each column what the model said. The diagonal holds the correct answers.")
with right:
    st.markdown("**Per class**")
    st.dataframe(
        result.per_class_frame(),
        hide_index=True,
        column_config={
            "class": st.column_config.TextColumn("Class"),
            "precision": st.column_config.NumberColumn("Precision", format="percent",
                help="Of the images the model called this class, the share that really are."),
            "recall": st.column_config.NumberColumn("Recall", format="percent",
                help="Of the images of this class, the share the model found."),
            "f1": st.column_config.NumberColumn("F1", format="percent", help="Precision and recall in one number."),
            "support": st.column_config.NumberColumn("Images", help="Images of this class scored here."),
        },
    )

st.subheader("Images the model got wrong")
if not result.misclassified:
    st.success(f"None: every {subset} image was classified correctly.", icon=":material/check_circle:")
else:
    shown = result.misclassified[:GALLERY_SIZE]
    st.caption(f"The {len(shown)} most confident mistakes of {len(result.misclassified)}. "
               "Look for wrong labels, odd pictures, or a class that needs more examples.")
    why = st.toggle("Why? Show where the model looked", key="keep.why_mistakes",
                    help="Colours the parts of each picture that counted most for the wrong answer (Grad-CAM).")
    columns = st.columns(GALLERY_COLUMNS)
    for index, mistake in enumerate(shown):
        with columns[index % GALLERY_COLUMNS]:
            image = ui.thumbnail(mistake.path)
            if why:
                try:
                    with open(mistake.path, "rb") as handle:
                        image = ui.explanation(info, handle.read())
                except (OSError, TransferLabError):
                    pass
            if image is not None:
                st.image(image, width="stretch")
            st.text(f"{mistake.name}\nTrue: {mistake.true_class}\nPredicted: {mistake.predicted_class} "
                    f"({mistake.confidence:.0%} sure)")
