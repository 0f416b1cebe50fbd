"""A run of an experiment kind that has no page of its own (a plugin's): what the kind draws, and its numbers."""

import streamlit as st

import app_common as ui
from app_common.runs import split_run_id
from twophase_core.experiments import registry

parsed = split_run_id(st.query_params.get("run", ""))
if parsed is None or registry.get(parsed[0]).page:
    st.title("Other results")
    st.info("This page shows a run of an experiment kind that has no page of its own. Open one from the Runs page.")
    st.page_link(ui.PAGE_FILES["runs"], label="Runs", icon=":material/list:")
    st.stop()

experiment = registry.get(parsed[0])
view, cmd = ui.page_run(experiment.name, experiment.title, experiment.help)
for title, fig in experiment.figures(view.result):
    st.subheader(title)
    ui.show_figure(fig, key=f"result_{title}")
st.dataframe(view.result.to_dataframe(), hide_index=True)

with st.expander("Details: config and timings"):
    st.write(view.result.meta)
    st.json(view.result.config, expanded=False)
