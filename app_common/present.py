"""Presentation mode, for a projector: the toggle in the sidebar and `?present=1` in the link, kept across pages.

In it the sidebar starts collapsed, the page uses the whole width, figures are stacked full width (never side by
side) and restyled by `figures.present` (every label at least 16 CSS px at 1280x720 with 150 % zoom, heatmap
values only where they fit). The mode is a view setting like the others: it starts from the link, or from what
this user had on the last page (`query_state`), and is written back into the link, so a shared link presents too.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from twophase_core.interfaces import figures as F

from .query_state import from_query, kept, parse_bool, to_query

PARAM = "present"
KEY = "present_mode"  # the toggle's key (app.py draws it on every page, so its state lives across pages)

# the page's own room: less padding at the sides and top (the figures and the page's first button need it at
# 853x480 CSS px), and a smaller page title
CSS = """<style>
[data-testid="stMainBlockContainer"] {padding: 3.5rem 1.5rem 4rem 1.5rem; max-width: none;}
[data-testid="stMainBlockContainer"] h1 {font-size: 2rem; padding-top: 0.25rem;}
</style>"""


def presentation_toggle() -> bool:
    """The toggle (app.py, before the page runs): reads `?present=` or the kept value, writes the link, and in
    presentation mode collapses the sidebar and widens the page. Returns whether the mode is on."""
    from_query(KEY, PARAM, parse_bool, False)
    on = st.sidebar.toggle("Presentation mode", key=KEY,
                           help="For a projector: large figure text, figures one below the other, sidebar "
                                "collapsed. Kept in the link as ?present=1.")
    if on:
        to_query(PARAM, "1")
        st.set_page_config(initial_sidebar_state="collapsed")
        st.html(CSS)
    else:
        if PARAM in st.query_params:
            del st.query_params[PARAM]
        st.set_page_config(initial_sidebar_state="auto")
    return on


def presenting() -> bool:
    """Whether this page run is in presentation mode: the toggle's value (or the value it had, where app.py did not
    run before the page, as in AppTest after a switch of page), else the link's; when on, the link says so."""
    on = kept(KEY)
    if on is None:
        on = parse_bool(st.query_params.get(PARAM, "")) or False
    if on:
        to_query(PARAM, "1")
    return bool(on)


def for_screen(fig: Any) -> Any:
    """The figure as this page shows it: restyled for a projector in presentation mode, else as built."""
    return F.present(fig) if presenting() else fig


def show_figure(fig: Any, key: str) -> None:
    """A figure alone (no exports), as `figure_block` draws one."""
    st.plotly_chart(for_screen(fig), key=key, config={"displaylogo": False}, width="stretch")


def figure_columns(n: int, **kw: Any) -> list[Any]:
    """Where `n` figures go: side by side columns, or in presentation mode `n` containers one below the other,
    each the whole width (a third of a projector is too narrow to read)."""
    if presenting():
        return [st.container() for _ in range(n)]
    return list(st.columns(n, **kw))
