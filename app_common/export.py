"""A figure with everything needed to reuse it: its data (CSV, JSON), a standalone HTML file and the
command that reproduces it."""

from __future__ import annotations

from typing import Any

import streamlit as st

from twophase_core import figures as F

from .runs import RunView


def figure_block(fig: Any, table: F.Table, name: str, view: RunView, command: str, key: str,
                 show_command: bool = True) -> None:
    """The figure, then its data (CSV, JSON), an HTML export and the command that reproduces it."""
    st.plotly_chart(fig, key=f"fig_{key}", config={"displaylogo": False})
    cfg_d = view.result.config if view.result is not None else None
    stem = f"{view.run_id}_{name}"
    c = st.columns(3)
    c[0].download_button("CSV", F.to_csv(table), file_name=f"{stem}.csv", mime="text/csv", key=f"csv_{key}",
                         icon=":material/download:", on_click="ignore", width="stretch")
    c[1].download_button("JSON", F.to_json(table, figure=name, run=view.run_id, command=command, config=cfg_d),
                         file_name=f"{stem}.json", mime="application/json", key=f"json_{key}",
                         icon=":material/download:", on_click="ignore", width="stretch")
    c[2].download_button("HTML", lambda: F.to_html(fig, command), file_name=f"{stem}.html", mime="text/html",
                         key=f"html_{key}", icon=":material/download:", on_click="ignore", width="stretch")
    if show_command and command:
        st.code(command, language="bash", wrap_lines=True)
