"""Runs page: every training so far; open one, delete one, or compare their curves."""

import streamlit as st

import dashboard as ui
from tlcore.charts import compare_runs_figure
from tlcore.config import ModelConfig, TrainConfig
from tlcore.exports.formats import FORMATS as EXPORT_FORMATS
from tlcore.exports.formats import agreement_note
from tlcore.errors import TransferLabError
from tlcore.predict import forget_predictors
from tlcore.runs import list_runs

METRICS = {"accuracy": "Accuracy", "loss": "Loss"}
EXPORT_TITLES = {name: fmt.title for name, fmt in EXPORT_FORMATS.items()}


def short_name(info) -> str:
    model = info.config.get("model", {})
    started = info.name[9:15]
    started = f"{started[:2]}:{started[2:4]}:{started[4:]}" if started.isdigit() else info.name
    return f"{model.get('cut_layer')} · dropout {model.get('dropout', 0):g} · {started}"


ui.page_setup()
st.title("Runs")
st.markdown("Every training is kept as a **run**. Select rows to compare their curves, open one, or delete it.")

infos = list_runs(ui.runs_dir())
if not infos:
    ui.no_runs_yet()
    st.stop()

event = st.dataframe(
    [ui.run_row(info) for info in infos],
    hide_index=True,
    on_select="rerun",
    selection_mode="multi-row",
    key="runs_table",
    column_config=ui.run_columns(),
)
selected = [infos[index] for index in event.selection.rows]
if not selected:
    st.caption("Tick the box at the start of one or more rows.")
    st.stop()

actions = st.columns([2, 2, 2, 3])
if len(selected) == 1 and selected[0].has_model:
    if actions[0].button("Use as current model", icon=":material/check:"):
        st.session_state[ui.CURRENT_RUN] = str(selected[0].path)
        st.toast(f"Evaluate and Predict now use {ui.plain(selected[0].name)}.")
if len(selected) == 1:
    if actions[1].button("Copy its settings", icon=":material/content_copy:",
                         help="Puts this run's model and training settings on the Model and Train pages."):
        try:
            ui.show_settings(
                ModelConfig.from_dict(selected[0].config.get("model", {})).resolved(),
                TrainConfig.from_dict(selected[0].config.get("train", {})).resolved(),
            )
        except TransferLabError as error:
            ui.show_error(error)
        else:
            st.toast("The Model and Train pages now hold this run's settings.")
with actions[2].popover(f"Delete {len(selected)} run(s)", icon=":material/delete:"):
    st.markdown("The run folders, with their models, are removed for good.")
    if st.button("Yes, delete", type="primary"):
        for info in selected:
            try:
                info.run.delete()
            except TransferLabError as error:
                ui.show_error(error)
                continue
            if st.session_state.get(ui.CURRENT_RUN) == str(info.path):
                st.session_state.pop(ui.CURRENT_RUN)
        forget_predictors()
        st.session_state.pop("runs_table", None)
        st.rerun()

if len(selected) == 1 and selected[0].has_model:
    st.subheader("Take it elsewhere")
    info = selected[0]
    left, right = st.columns([3, 2], gap="large")
    with left:
        chosen = st.multiselect(
            "Export formats", list(EXPORT_FORMATS), default=ui.exportable_formats(), format_func=EXPORT_TITLES.get,
            help="Every format comes with labels.txt, metadata.json, a README and predict.py, a script that "
            "classifies pictures with numpy, Pillow and one runtime: no Transfer Lab needed.",
        )
        if st.button("Prepare the export", icon=":material/package_2:", disabled=not chosen):
            try:
                with st.spinner("Writing the model files and checking the small one…"):
                    st.session_state["export"] = (info.name, ui.export_bundle(info, tuple(chosen)))
            except TransferLabError as error:
                ui.show_error(error)
        prepared = st.session_state.get("export")
        if prepared and prepared[0] == info.name:
            name, (data, report) = prepared
            st.download_button("Download the export (.zip)", data=data, file_name=f"{name}-export.zip",
                               mime="application/zip", icon=":material/download:")
            if note := agreement_note(report):
                st.warning(note, icon=":material/warning:")
            st.dataframe(
                [{"format": EXPORT_TITLES[f], "file": r["file"], "MB": round(r["bytes"] / 1e6, 2),
                  "top-1 agreement": r.get("top1_agreement")} for f, r in report["formats"].items()],
                hide_index=True,
                column_config={"top-1 agreement": st.column_config.NumberColumn(format="percent")},
            )
    with right:
        st.download_button(
            "Download the code (train_again.py)", data=ui.training_code(info), file_name="train_again.py",
            mime="text/x-python", icon=":material/code:",
            help="A plain Keras script that trains this model again without Transfer Lab: the same backbone, "
            "cut, head and settings. Run it with `python train_again.py [DATA_FOLDER]`.",
        )
        st.caption("The bridge from no code to code: read it, change it, run it anywhere TensorFlow runs.")

st.subheader("Compare")
metric = st.segmented_control("Curve", list(METRICS), format_func=METRICS.get, default="accuracy", required=True)
histories = {short_name(info): info.history for info in selected}
st.plotly_chart(compare_runs_figure(histories, metric))
st.caption("Solid lines: validation (images not trained on). Dashed lines: training.")
