"""What every figure shares: the look, table cells, the metrics' names, and export (CSV, JSON,
standalone HTML). A table is a dict of equal-length columns (name -> list)."""

from __future__ import annotations

import io
import json
import math
import warnings
from typing import TYPE_CHECKING, Any, SupportsFloat

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from twophase_core.experiments import registry

if TYPE_CHECKING:
    from twophase_core.experiments.result import Result
    from twophase_core.settings.config import ExperimentConfig

Table = dict[str, list[Any]]

METRICS = {
    "C": "parameter dissimilarity C (cosine distance)",
    "B": "loss barrier B",
    "D": "disagreement rate D",
}
PROJECTION_LABELS = {"pca": "PCA", "mds": "MDS"}
LINE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"]
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), height=420)


def apply_layout(fig: go.Figure, title: str, **kw: object) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.0, xanchor="left"), **{**LAYOUT, **kw})
    fig.update_yaxes(exponentformat="e")  # 1e-12, not plotly's SI "1p"
    return fig


def cell_value(v: SupportsFloat) -> float | None:
    """A float for a table cell; None for NaN (CSV: empty cell, JSON: null)."""
    f = float(v)
    return None if math.isnan(f) else f


def log_colour(z: np.ndarray) -> tuple[np.ndarray, list[float], list[str]]:
    """log10 of z for the colour, with exact zeros (e.g. the eps=0 control) drawn one decade below the
    smallest positive value and labelled "0" on the colour bar; NaN stays blank."""
    z = np.asarray(z, dtype=float)
    pos = z[np.isfinite(z) & (z > 0)]
    lo = math.floor(math.log10(pos.min())) if pos.size else -16
    hi = math.ceil(math.log10(pos.max())) if pos.size else lo + 1
    has_zero = bool(np.any(z == 0))
    floor = lo - 1
    with np.errstate(all="ignore"):
        colour = np.where(z > 0, np.log10(np.where(z > 0, z, 1.0)), np.where(z == 0, floor, np.nan))
    if not pos.size:  # nothing above zero: one tick, "0"
        return (colour, [float(floor)], ["0"]) if has_zero else (colour, [], [])
    if hi <= lo:
        hi = lo + 1
    step = max(1, (hi - lo) // 6)
    vals = list(range(lo, hi + 1, step))
    tv, tt = [float(v) for v in vals], [f"1e{v}" for v in vals]
    if has_zero:
        tv, tt = [float(floor)] + tv, ["0"] + tt
    return colour, tv, tt

def log_range(tv: list[float], colour: np.ndarray) -> tuple[float, float]:
    """Colour range of a log heatmap: from its lowest tick (or value) to the highest value, never empty,
    so an all-zero grid is drawn in the colour of 0, not in the middle of the scale."""
    finite = colour[np.isfinite(colour)]
    lo = min([*tv[:1], *finite.tolist()]) if tv or finite.size else 0.0
    hi = float(finite.max()) if finite.size else lo + 1
    return float(lo), float(hi if hi > lo else lo + 1)


def rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def seed_reduce(a: np.ndarray, seed: int | None = None) -> np.ndarray:
    """(seeds, ...) -> (...): one seed's slice, or the mean over seeds ignoring NaN (None)."""
    if seed is not None:
        return np.asarray(a[seed], dtype=float)
    if a.shape[0] == 1:
        return np.asarray(a[0], dtype=float)
    with warnings.catch_warnings():  # all-NaN cells (t1 <= t0) stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=0)


# ---------------------------------------------------------------------------------------------
# Export


def table_rows(table: Table) -> int:
    lens = {len(v) for v in table.values()}
    if len(lens) > 1:
        raise ValueError(f"columns differ in length: {lens}")
    return lens.pop() if lens else 0


def to_frame(table: Table) -> pd.DataFrame:
    """The table as a DataFrame (columns in order; None cells become NaN or None by column type)."""
    table_rows(table)
    return pd.DataFrame(table)


def to_csv(table: Table) -> str:
    """CSV with a header; floats at full precision (they read back exactly); missing cells empty."""
    return to_frame(table).to_csv(index=False, lineterminator="\n")


def _cell(v: object) -> object:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def from_csv(text: str) -> Table:
    """Inverse of `to_csv` for numeric tables (ints stay ints, empty cells become None)."""
    if not text.strip():
        return {}
    df = pd.read_csv(io.StringIO(text))
    return {str(c): [_cell(v) for v in df[c].tolist()] for c in df.columns}


def to_json(table: Table, **context: object) -> str:
    """{"columns": ..., "rows": [...], plus context (config, hash, command)}; NaN is null."""
    rows = [{c: _cell(v) for c, v in row.items()} for row in to_frame(table).to_dict(orient="records")]
    return json.dumps({**context, "columns": list(table), "rows": rows}, indent=1, default=_json_default)


def _json_default(o: object) -> object:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return cell_value(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def to_html(fig: go.Figure, command: str | None = None) -> str:
    """A standalone HTML page of the figure with plotly.js inside it (opens offline, no CDN), and the
    command that reproduces it."""
    html = fig.to_html(include_plotlyjs=True, full_html=True)
    if command:
        import html as _html

        html = html.replace("<body>", f"<body>\n<pre style='font-size:12px'>{_html.escape(command)}</pre>", 1)
    return html


# ---------------------------------------------------------------------------------------------
# Reproduction (the command itself: cli.command_for)


def config_from_result(result: Result) -> ExperimentConfig:
    """The typed config of a stored result."""
    return registry.config_from_dict(result.kind, result.config)
