"""twophase: the Streamlit app. `streamlit run app.py` (or `make run`).

This file only builds the navigation (a page per experiment kind, from the registry); each page in pages/ reads
state, asks the engine and draws.
A link may name its page by path (/chaos?run=<job id>) or by parameter (?page=chaos&run=<job id>).
"""

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # app_common, when started from elsewhere

st.set_page_config(page_title="twophase: two-phase learning dynamics", page_icon=":material/science:",
                   layout="wide")

from twophase_core.experiments import registry  # noqa: E402  (after the path above)

KINDS = [registry.get(k) for k in registry.names()]  # every experiment kind, plugins included
PAGES = {"home": st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
         "lesson": st.Page("pages/lesson.py", title="Lesson", icon=":material/school:", url_path="lesson")}
PAGES.update({e.name: st.Page(e.page, title=e.title, icon=e.icon, url_path=e.name) for e in KINDS if e.page})
if any(not e.page for e in KINDS):  # kinds without a page of their own share the generic one
    PAGES["result"] = st.Page("pages/result.py", title="Other results", icon=":material/science:", url_path="result")
PAGES.update({
    "sweeps": st.Page("pages/sweeps.py", title="Sweeps", icon=":material/stacked_line_chart:", url_path="sweeps"),
    "runs": st.Page("pages/runs.py", title="Runs", icon=":material/list:", url_path="runs"),
    "compare": st.Page("pages/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
})

page = st.navigation(list(PAGES.values()))
st.session_state["_app_navigation_ran"] = True  # the page runs through here: see app_common/pages_mode.py

wanted = st.query_params.get("page")
if wanted in PAGES and PAGES[wanted].url_path != page.url_path:
    st.switch_page(PAGES[wanted], query_params={k: v for k, v in st.query_params.items() if k != "page"})
elif "page" in st.query_params:
    del st.query_params["page"]  # the path names the page now; a stale ?page= must not pull users back

from app_common.runs import start_jobs  # noqa: E402  (only now: see app_common/pages_mode.py)

start_jobs()  # the warm worker starts loading torch while the first page draws
from app_common.present import presentation_toggle  # noqa: E402  (after st.navigation, as above)

presentation_toggle()  # ?present=1: the sidebar's toggle, on every page, before the page draws
page.run()
