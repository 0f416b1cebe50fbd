"""A view's state in the link: widgets start from the URL's query parameters and write their value back,
so a shared link (or a reload) opens the same view: the log toggle, the selected cell, the projection.

The widget's value is put in session state before the widget is drawn (and the widget is drawn without a
default of its own), so a value from the link and a value the user chose never fight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st


def parse_bool(text: str) -> bool | None:
    t = text.strip().lower()
    return True if t in ("1", "true", "on", "yes") else False if t in ("0", "false", "off", "no") else None


def from_query(key: str, param: str, parse: Callable[[str], Any], default: Any,
               allowed: list[Any] | None = None) -> None:
    """Before drawing widget `key`: on its first draw its value comes from the link's `param` (a value
    `parse` rejects with None, or outside `allowed`, falls back to `default`); a kept value outside
    `allowed` (another run opened) goes back to the default."""
    if key in st.session_state:
        if allowed is not None and st.session_state[key] not in allowed:
            st.session_state[key] = default
        return
    raw = st.query_params.get(param)
    value = None
    if raw is not None:
        try:
            value = parse(raw)
        except (TypeError, ValueError):
            value = None
    if value is None or (allowed is not None and value not in allowed):
        value = default
    st.session_state[key] = value


def to_query(param: str, text: str) -> None:
    """Write a widget's value into the link (only when it changed: each write updates the browser's URL)."""
    if st.query_params.get(param) != text:
        st.query_params[param] = text
