"""Class page, for the teacher: every workspace's runs as a leaderboard, their curves, and datasets for the class."""

import streamlit as st

import dashboard as ui
from tlcore import workspaces
from tlcore.charts import compare_runs_figure
from tlcore.runs import default_runs_dir

ui.page_setup()
st.title("Class")

if not workspaces.teacher_key_set():
    st.info(
        "Teacher mode is off on this server. To turn it on, start the server with the environment variable "
        "`TLCORE_TEACHER_KEY` set to a secret of your choice, then enter that secret here.",
        icon=":material/school:",
    )
    st.stop()

if not st.session_state.get(ui.TEACHER):
    st.markdown("Teachers see every student's runs here and can give the class a dataset to use.")
    with st.form("teacher_key"):
        key = st.text_input("Teacher key", type="password", max_chars=256)
        if st.form_submit_button("Enter", icon=":material/key:"):
            if workspaces.is_teacher_key(key):
                st.session_state[ui.TEACHER] = True
                st.rerun()
            st.error("That is not the teacher key.", icon=":material/error:")
    st.stop()

everyone = workspaces.all_workspaces(default_runs_dir())
labels = {key: f"workspace {key[:6]}" for key in everyone}
entries = [(labels[key], info) for key, infos in everyone.items() for info in infos]
st.markdown(f"**{len(everyone)}** workspaces, **{len(entries)}** runs.")

st.subheader("Leaderboard")
if not entries:
    st.caption("No student has trained yet.")
else:
    ranked = sorted(entries, key=lambda entry: (entry[1].val_accuracy is None, -(entry[1].val_accuracy or 0)))
    st.dataframe(
        [{"place": place, "workspace": label, **ui.run_row(info)} for place, (label, info) in enumerate(ranked, 1)],
        hide_index=True,
        column_config={"place": st.column_config.NumberColumn("Place"), "workspace": "Workspace", **ui.run_columns()},
    )
    names = {f"{label} · {info.name}": info for label, info in ranked}
    chosen = st.multiselect("Overlay the curves of", list(names), default=list(names)[:3], max_selections=12)
    if chosen:
        st.plotly_chart(compare_runs_figure({name: names[name].history for name in chosen}, "accuracy"))
        st.caption("Solid lines: validation (images not trained on). Dashed lines: training.")

st.subheader("Datasets for the class")
st.markdown("A published dataset is offered on every student's Data page, so nobody has to upload it, "
            "and its features are computed once for everyone.")
source, name = st.session_state.get(ui.DATA_SOURCE), st.session_state.get(ui.DATA_NAME)
if source:
    st.text(f"Your current dataset: {name}")
    if st.button("Publish it to the class", icon=":material/publish:"):
        workspaces.publish(ui.work_dir(), name or "dataset", source)
        st.toast("Published.")
else:
    st.caption("Choose a dataset on the Data page first (upload one or pick a sample), then publish it here.")
for index, entry in enumerate(workspaces.published(ui.work_dir())):
    left, right = st.columns([4, 1])
    left.text(entry.name)
    if right.button("Withdraw", key=f"withdraw.{index}", icon=":material/unpublished:"):
        workspaces.unpublish(ui.work_dir(), entry.source)
        st.rerun()
