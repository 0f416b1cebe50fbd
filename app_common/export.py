"""A figure with everything needed to reuse it: its data (CSV, JSON), a standalone HTML file and the
command that reproduces it: one command for a run's figure, each run's command for a comparison."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from twophase_core.interfaces import figures as F

from .present import for_screen
from .runs import RunView

HTML_HELP = "a standalone page with plotly.js inside: it opens offline, with no internet"


def chart_state(key: str) -> Any:
    """The selection state of the chart `figure_block(..., key=key, on_select=True)` draws, as the browser left
    it: readable before the chart is drawn again, so a click can change what the figures show in the same run."""
    return st.session_state.get(f"fig_{key}")


def figure_block(fig: Any, table: F.Table, name: str, view: RunView | Sequence[RunView], command: str | Sequence[str],
                 key: str, show_command: bool = True, on_select: bool = False) -> Any:
    """The figure, then its data (CSV, JSON), an HTML export and the command that reproduces it.

    `view` and `command` are one run's, or (a comparison) lists with one entry per run: the files are
    named after every run and the JSON and HTML carry every run's config and command. With on_select the
    chart reports clicked points (plotly's points selection) and its selection state is returned.
    """
    views = [view] if isinstance(view, RunView) else list(view)
    commands = [command] if isinstance(command, str) else list(command)
    selection = None
    shown = for_screen(fig)  # (presentation mode: restyled for a projector; the exports keep the figure as built)
    if on_select:
        selection = st.plotly_chart(shown, key=f"fig_{key}", config={"displaylogo": False}, on_select="rerun",
                                    selection_mode="points")
    else:
        st.plotly_chart(shown, key=f"fig_{key}", config={"displaylogo": False})
    if len(views) == 1:
        stem = f"{views[0].run_id}_{name}"
        context: dict[str, Any] = {"run": views[0].run_id, "command": commands[0] if commands else "",
                                   "config": views[0].result.config if views[0].result is not None else None}
    else:
        stem = "compare_" + "_".join(v.run_id.split("-")[0] + "-" + v.run_id.split("-")[-1][:8] for v in views) + \
            f"_{name}"
        context = {"runs": [v.run_id for v in views], "commands": commands,
                   "configs": [v.result.config if v.result is not None else None for v in views]}
    text = "\n".join(c for c in commands if c)
    c = st.columns(3)
    c[0].download_button("CSV", F.to_csv(table), file_name=f"{stem}.csv", mime="text/csv", key=f"csv_{key}",
                         icon=":material/download:", on_click="ignore", width="stretch")
    c[1].download_button("JSON", F.to_json(table, figure=name, **context), file_name=f"{stem}.json",
                         mime="application/json", key=f"json_{key}", icon=":material/download:", on_click="ignore",
                         width="stretch")
    c[2].download_button("HTML", lambda: F.to_html(fig, text), file_name=f"{stem}.html", mime="text/html",
                         key=f"html_{key}", icon=":material/download:", on_click="ignore", width="stretch",
                         help=HTML_HELP)
    if show_command and text:
        command_block(text)
    return selection


def command_block(command: str) -> None:
    """A reproduce command, and how `twophase` gets on PATH: pasted into a plain shell it is not found otherwise."""
    st.code(command, language="bash", wrap_lines=True)
    st.caption(F.COMMAND_NOTE)
