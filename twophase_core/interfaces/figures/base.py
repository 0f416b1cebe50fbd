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
# beside every reproduce command (the app, the HTML export): a plain shell has no `twophase` until it is put on PATH
COMMAND_NOTE = ("`twophase` is installed in the checkout's .venv, not on your PATH: run it as `.venv/bin/twophase ...` "
                "from the checkout, or `source .venv/bin/activate` once per shell first; in the Docker image "
                "`twophase` is on PATH.")


def apply_layout(fig: go.Figure, title: str, **kw: object) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.0, xanchor="left"), **{**LAYOUT, **kw})
    fig.update_yaxes(exponentformat="e")  # 1e-12, not plotly's SI "1p"
    return fig


def cell_value(v: SupportsFloat) -> float | None:
    """A float for a table cell; None for NaN (CSV: empty cell, JSON: null)."""
    f = float(v)
    return None if math.isnan(f) else f


def round_sig(v: float | None, digits: int = 3) -> str:
    """`v` to `digits` significant digits, written out in full from 1e-3 to 1e6 (816.5 -> '817', 1337.6 -> '1340',
    0.012345 -> '0.0123') and with an unpadded exponent outside (2.5e-7): short enough for any column, and no
    leading digit is ever cut; '' for None or NaN."""
    if v is None or math.isnan(v):
        return ""
    if v == 0 or math.isinf(v):
        return f"{v:g}"
    mant, exp = f"{v:.{digits - 1}e}".split("e")
    e = int(exp)
    if -3 <= e < 6:
        text = f"{float(f'{mant}e{e}'):.{max(digits - 1 - e, 0)}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{mant.rstrip('0').rstrip('.')}e{e}"


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


ZERO_AXIS = "y2"  # the row under a log y axis where exact zeros are drawn (`add_zero_row`)


def zero_marks(x: object, colour: str, name: str, hover: str, legendgroup: str | None = None,
               customdata: object = None, opacity: float = 1.0, size: int = 9, lane: float = 0.0) -> go.Scatter:
    """Markers for exact zeros, on the zero row: `hover` is their hovertemplate (it should say "exactly 0"); `lane`
    (within +-0.8) lifts them off the row's middle, so the zeros of several lines at one x stay apart."""
    n = len(np.atleast_1d(np.asarray(x)))
    return go.Scatter(x=x, y=np.full(n, lane), yaxis=ZERO_AXIS, mode="markers", name=name, legendgroup=legendgroup,
                      showlegend=False, customdata=customdata, hovertemplate=hover,
                      marker=dict(color=colour, size=size, opacity=opacity, symbol="circle-open", line=dict(width=2)))


def add_zero_row(fig: go.Figure, marks: list[go.Scatter]) -> go.Figure:
    """Exact zeros under a log y axis: a log axis cannot place 0 (plotly drops the point, and a floor would draw it
    as a small value, a B that seems to rise), so `marks` (from `zero_marks`) go on a narrow row of their own under
    the plot, on the same x axis, its only tick "0". Call it after the figure's own y-axis updates (they would
    reach this axis too); nothing changes without marks."""
    if not marks:
        return fig
    fig.add_traces(marks)
    fig.update_layout(yaxis=dict(domain=[0.17, 1.0]),
                      yaxis2=dict(domain=[0.0, 0.09], anchor="x", type="linear", range=[-1, 1], tickvals=[0],
                                  ticktext=["0"], showgrid=True, zeroline=False, fixedrange=True,
                                  title=dict(text="exactly 0", font=dict(size=11))))
    fig.update_xaxes(anchor=ZERO_AXIS)  # the x axis (ticks, title) under the zero row
    return fig


def zeros_to_row(fig: go.Figure, x_name: str = "x") -> go.Figure:
    """Move the exact zeros of a log figure's lines (scatter traces with a line, not bands) to the zero row
    (`add_zero_row`), in the colour of their line, one lane per line; the line breaks there instead of plotly
    dropping them unsaid."""
    lines = [tr for tr in fig.data if tr.type == "scatter" and not tr.fill and tr.y is not None
             and tr.yaxis in (None, "y") and np.any(np.asarray(tr.y, dtype=float) == 0)]
    lanes = np.linspace(-0.6, 0.6, len(lines)) if len(lines) > 1 else [0.0]
    marks = []
    for tr, lane in zip(lines, lanes, strict=False):
        y = np.asarray(tr.y, dtype=float)
        zero = y == 0
        tr.y = np.where(zero, np.nan, y)
        colour = tr.line.color or tr.marker.color or LINE_COLOURS[0]
        marks.append(zero_marks(np.asarray(tr.x)[zero], colour, f"{tr.name}: exactly 0",
                                f"{tr.name}<br>{x_name}=%{{x}}<br>exactly 0<extra></extra>", tr.legendgroup,
                                lane=float(lane)))
    return add_zero_row(fig, marks)


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
    command that reproduces it with how `twophase` gets on PATH (COMMAND_NOTE)."""
    html = fig.to_html(include_plotlyjs=True, full_html=True)
    if command:
        import html as _html

        note = _html.escape(COMMAND_NOTE.replace("`", ""))
        html = html.replace("<body>", f"<body>\n<pre style='font-size:12px'>{_html.escape(command)}</pre>\n"
                                      f"<p style='font-size:12px'>{note}</p>", 1)
    return html


# ---------------------------------------------------------------------------------------------
# Reproduction (the command itself: cli.command_for)


def config_from_result(result: Result) -> ExperimentConfig:
    """The typed config of a stored result."""
    return registry.config_from_dict(result.kind, result.config)
