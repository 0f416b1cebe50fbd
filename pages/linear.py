"""Linearised training: accuracy of the Taylor model from theta_t versus the switch time t."""

import streamlit as st

import app_common as ui
from twophase_core.interfaces import figures as F

KIND = "linear"
view, cmd = ui.page_run(
    KIND, "Linearised training",
    "Train normally to t, then train the first-order Taylor model around theta_t until T. "
    "In the paper, switching during the chaotic phase costs much accuracy; switching later comes close to "
    "full training (Fig. 6).",
)

a = view.result.arrays
if view.partial:
    st.info("Partial result: switch times still to do show no point yet.", icon=":material/hourglass_top:")
T = view.result.config["train"]["iterations"]
ui.figure_block(F.linear_figure(a, iterations=T), F.linear_table(a), "linear", view, cmd, "linear")
st.dataframe(F.linear_table(a), hide_index=True)

with st.expander("Details: config and timings"):
    st.write(view.result.meta)
    st.json(view.result.config, expanded=False)
