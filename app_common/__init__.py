"""Streamlit helpers shared by the pages, one module per concern.

- `runs`: which run a page shows (the shareable `?run=` id, this user's last run), the job manager;
- `form`: the settings form, generated from the config specs (the same ones as the CLI's flags);
- `job_panel`: progress, ETA, cancel and resubmit of a running or failed job;
- `export`: a figure with its data (CSV, JSON), HTML and the command that reproduces it;
- `page`: the shared top of a result page (title, form, run header, waiting text).

Pages stay short: they read state, call the engine through these helpers, and draw. Nothing here
computes science or imports torch: figures come from `twophase_core.figures`, jobs from
`twophase_core.jobs`, and results are read through the torch-free `twophase_core.results`.
"""

from . import pages_mode  # noqa: F401  (first: a shared link may reach a page before app.py ran)
from .export import figure_block
from .page import page_run
from .runs import KIND_TITLES, KINDS, PAGE_FILES, POLL_S, RunView, fmt_time, job_manager, open_run

__all__ = ["KIND_TITLES", "KINDS", "PAGE_FILES", "POLL_S", "RunView", "figure_block", "fmt_time", "job_manager",
           "open_run", "page_run"]
