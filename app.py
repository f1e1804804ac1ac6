"""Transfer Lab: build an image classifier by transfer learning, from a zip to a prediction."""

import streamlit as st

import dashboard

st.set_page_config(page_title="Transfer Lab", page_icon=":material/model_training:", layout="wide")

with dashboard.app_navigation():  # pages that Streamlit starts without this file come back through it
    st.navigation(
        [
            st.Page("pages/data.py", title="Data", icon=":material/folder_zip:", default=True),
            st.Page("pages/model.py", title="Model", icon=":material/account_tree:"),
            st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
            st.Page("pages/evaluate.py", title="Evaluate", icon=":material/grid_on:"),
            st.Page("pages/predict.py", title="Predict", icon=":material/image_search:"),
            st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
            st.Page("pages/class.py", title="Class", icon=":material/school:"),
        ]
    ).run()
