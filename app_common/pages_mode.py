"""Hand a fresh server's first page run to app.py when Streamlit's old `pages/` directory mode ran it.

Why this exists (Streamlit 1.67.0; checked against its runtime/pages_manager.py and scriptrunner):
the project's page files live in `pages/` beside app.py, and a `pages/` folder next to the entry
script is Streamlit's legacy multipage mode. A server starts in that mode and leaves it for good (in
every session) the first time any session calls `st.navigation` ("As soon as any session of your app
executes the st.navigation command, your app will ignore the pages/ directory", st.navigation's
reference). A request for `/` runs app.py, whose `st.navigation` ends the mode at once. But when the
first request of the server's life is a shared link such as `/cone?run=<id>`, the legacy mode runs
`pages/cone.py` by itself, without app.py: no page config, a sidebar listing the files (`app`,
`chaos`, ... `sweeps`) instead of the navigation, no `?page=` redirect, and as no one calls
`st.navigation`, the whole server stays in that mode until someone opens `/`.

What it does, with public calls only: every page imports app_common first, so the first import of
it in a process happens in a page run. If that run did not come through app.py (app.py marks its
session right after its `st.navigation`), this module calls `st.navigation` with the pages the legacy
mode made (app.py at `/`, each `pages/<name>.py` at `/<name>`), which ends the mode and keeps the
current page, then reruns: app.py now runs and draws the same page with the same query string.
No configuration option serves instead (`client.showSidebarNavigation = false` hides
st.navigation's menu too and still runs the page without app.py), nor does another arrangement of
the files (page files in a subfolder of `pages/` make the legacy mode answer "Page not found").

When to remove it: when Streamlit no longer starts in the legacy mode for an entry script that calls
`st.navigation`, or when the page files leave `pages/`. To check, empty this module and open a
deep link as the first request of a fresh server: tests/test_browser.py
(test_a_shared_link_as_the_first_request_gets_the_whole_app) fails while the module is needed.
"""

from pathlib import Path

import streamlit as st
from streamlit import runtime

ROOT = Path(__file__).resolve().parent.parent
NAVIGATION_RAN = "_app_navigation_ran"  # app.py sets this session-state key right after st.navigation


def leave_pages_directory_mode() -> None:
    if not runtime.exists() or st.session_state.get(NAVIGATION_RAN):
        return  # a plain `import app_common` outside a server, or a page that app.py's navigation chose
    legacy = [st.Page(ROOT / "app.py", default=True)]  # the legacy mode's pages: the entry script at /, and
    legacy += [st.Page(p, url_path=p.stem) for p in sorted((ROOT / "pages").glob("*.py"))]  # pages/<name>.py at /<name>
    st.navigation(legacy, position="hidden")
    st.rerun()


leave_pages_directory_mode()
