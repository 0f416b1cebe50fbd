"""Leave Streamlit's old pages-directory mode when a shared link is the server's first request.

Why this exists: the project's page files live in `pages/` (kept for its name), and Streamlit treats a
`pages/` folder beside the main script as an old-style multipage app until `st.navigation` runs. A
link such as /chaos?run=... that reaches a fresh server runs pages/chaos.py directly, without
app.py's navigation. Switching that mode off and rerunning lets app.py build the app; the page keeps
its url_path, hence its hash, so the same page and query string come back. Tested by
tests/test_browser.py (a shared link opened on a fresh server).
"""

import streamlit as st


def leave_pages_directory_mode() -> None:
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without it has no such mode
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


leave_pages_directory_mode()
