"""A view's state in the link: widgets start from the URL's query parameters and write their value back,
so a shared link (or a reload) opens the same view: the log toggle, the selected cell, the projection.

The widget's value is put in session state before the widget is drawn (and the widget is drawn without a
default of its own), so a value from the link and a value the user chose never fight. A copy is kept under a
key of its own too: Streamlit drops a widget's state on a page where it is not drawn, and the navigation drops
the query string, so without the copy every switch of page would reset the view.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st


def parse_bool(text: str) -> bool | None:
    t = text.strip().lower()
    return True if t in ("1", "true", "on", "yes") else False if t in ("0", "false", "off", "no") else None


def _kept(key: str) -> str:
    return f"_kept_{key}"  # not a widget's key: it outlives the page


def _auto(key: str) -> str:
    return f"_auto_{key}"  # the default `from_query(follow=True)` last gave the widget


def _from_link(param: str, parse: Callable[[str], Any]) -> Any:
    raw = st.query_params.get(param)
    if raw is None:
        return None
    try:
        return parse(raw)
    except (TypeError, ValueError):
        return None


def from_query(key: str, param: str, parse: Callable[[str], Any], default: Any,
               allowed: list[Any] | None = None, follow: bool = False) -> None:
    """Before drawing widget `key`: on its first draw on this page its value comes from the link's `param` (a value
    `parse` rejects with None, or outside `allowed`, is not taken), else from the value it had when this user last
    left the page, else `default`; a value outside `allowed` (another run opened) goes back to the default.

    follow=True: while the value is the default this function gave (not the link's, nor the user's: see `chosen`),
    it follows `default` as that changes, e.g. the largest barrier of a partial result that grows."""
    def ok(v: Any) -> bool:
        return v is not None and (allowed is None or v in allowed)

    if key in st.session_state:
        value = st.session_state[key]
    else:
        value = _from_link(param, parse)
        if ok(value):
            st.session_state.pop(_auto(key), None)  # the link chose it
        else:
            value = st.session_state.get(_kept(key))
    if not ok(value) or (follow and _auto(key) in st.session_state and value == st.session_state[_auto(key)]):
        value = default
        if follow:
            st.session_state[_auto(key)] = default
    if key not in st.session_state or st.session_state[key] != value:
        st.session_state[key] = value
    st.session_state[_kept(key)] = value


def kept(key: str) -> Any:
    """The value widget `key` has, or had when this user last drew it (None if never): for a page that reads a
    widget another page, or app.py, draws."""
    return st.session_state[key] if key in st.session_state else st.session_state.get(_kept(key))


def chosen(key: str) -> None:
    """The user picked the value of widget `key` (a click, or the widget's on_change): it stops following its
    default (`from_query(follow=True)`)."""
    st.session_state.pop(_auto(key), None)


def to_query(param: str, text: str) -> None:
    """Write a widget's value into the link (only when it changed: each write updates the browser's URL)."""
    if st.query_params.get(param) != text:
        st.query_params[param] = text
