"""Streamlit helpers shared by the pages, one module per concern.

- `runs`: which run a page shows (the shareable `?run=` id, this user's last run), the job manager;
- `form`: the settings form, generated from the config specs (the same ones as the CLI's flags);
- `job_panel`: progress, ETA, cancel and resubmit of a running or failed job;
- `export`: a figure with its data (CSV, JSON), HTML and the command that reproduces it (with how
  `twophase` gets on PATH);
- `page`: the shared top of a result page (title, form, run header, waiting text);
- `compare`: the runs a `compare?runs=...` link names, checked, with their labels and commands;
- `clicks`: the point a user clicked on a chart since the last run;
- `present`: presentation mode (`?present=1`): the toggle, figures restyled and stacked for a projector;
- `query_state`: widgets that start from the link's query parameters (or the view this user left) and
  write their value back.

Pages stay short: they read state, call the engine through these helpers, and draw. Nothing here
computes science or imports torch: figures come from `twophase_core.figures`, jobs from
`twophase_core.jobs`, and results are read through the torch-free `twophase_core.results`.
"""

from . import pages_mode  # noqa: F401  (first: a shared link may reach a page before app.py ran)
from .clicks import new_click
from .compare import compare_views, labels_and_commands
from .export import chart_state, command_block, figure_block
from .page import page_run
from .present import figure_columns, for_screen, presenting, show_figure
from .query_state import chosen, from_query, parse_bool, to_query
from .runs import (
    KIND_TITLES,
    KINDS,
    PAGE_FILES,
    POLL_S,
    RunView,
    config_of,
    fmt_time,
    job_manager,
    open_run,
    run_entries,
    run_name,
    sweep_groups,
)

__all__ = ["KIND_TITLES", "KINDS", "PAGE_FILES", "POLL_S", "RunView", "chart_state", "chosen", "command_block",
           "compare_views", "config_of", "figure_block", "fmt_time", "from_query", "job_manager", "labels_and_commands",
           "new_click", "open_run", "page_run", "parse_bool", "run_entries", "run_name", "to_query", "sweep_groups"]
__all__ += ["figure_columns", "for_screen", "presenting", "show_figure"]  # presentation mode
