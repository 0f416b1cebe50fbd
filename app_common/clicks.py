"""Clicks on charts: which point a user clicked since the last script run, among several charts.

A chart drawn with points selection keeps its selection in session state across reruns; only a change
is a click. An empty selection (the chart was redrawn, or the click undone) is remembered too, so
clicking the same cell again after a redraw counts.
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st


def selected_points(event: Any) -> list[dict[str, Any]]:
    """The points of a chart's selection state (a dict, or Streamlit's attribute dict); [] when none."""
    try:
        return list(event["selection"]["points"] or [])
    except (KeyError, TypeError):
        return []


def new_click(events: dict[str, Any], seen_key: str) -> dict[str, Any] | None:
    """The last point of a chart whose selection changed since the previous run, else None."""
    seen = st.session_state.get(seen_key, {})
    now, clicked = {}, None
    for name, event in events.items():
        points = selected_points(event)
        now[name] = json.dumps(points, sort_keys=True, default=str)
        if points and seen.get(name) != now[name]:
            clicked = points[-1]
    st.session_state[seen_key] = now
    return clicked
