"""Chaos Effect figures: C, B, D over (t0, t1), cross-sections, the loss along one interpolation path."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from twophase_core.interfaces.figures.base import (
    LINE_COLOURS,
    METRICS,
    Table,
    apply_layout,
    cell_value,
    log_colour,
    log_range,
    seed_reduce,
    zeros_to_row,
)

# ---------------------------------------------------------------------------------------------
# Chaos: C, B, D over (t0, t1)




def chaos_cells(arrays: dict[str, np.ndarray]) -> list[tuple[int, int, int, int]]:
    """(i, j, t0, t1) of every computed cell (t1 > t0 with a value), in row order."""
    C_ = seed_reduce(arrays["C"])
    out = []
    for i, t0 in enumerate(arrays["t0"]):
        for j, t1 in enumerate(arrays["t1"]):
            if not math.isnan(C_[i, j]):
                out.append((i, j, int(t0), int(t1)))
    return out


def chaos_heatmap_table(arrays: dict[str, np.ndarray], metric: str | None = None, seed: int | None = None) -> Table:
    """Every (t0, t1) cell (empty where t1 <= t0) with one metric, or all three when metric is None."""
    ms = [metric] if metric else list(METRICS)
    t: Table = {"t0": [], "t1": [], **{k: [] for k in ms}}
    vals = {k: seed_reduce(arrays[k], seed) for k in ms}
    for i, t0 in enumerate(arrays["t0"]):
        for j, t1 in enumerate(arrays["t1"]):
            t["t0"].append(int(t0))
            t["t1"].append(int(t1))
            for k in ms:
                t[k].append(cell_value(vals[k][i, j]))
    return t






CELL_FONT_PX = 14  # cell values legible on a projector; smaller text is not drawn at all (hover keeps the value)
HEATMAP_PLOT_PX = (230, 265)  # plot area (w, h) of a chaos heatmap a third of a 1400 px page wide (Chromium)
CELL_PAD_PX = 8  # room left around a value inside its cell


def text_px(text: str) -> float:
    """Width of a cell value at CELL_FONT_PX in the app's font (measured in Chromium, Source Sans 14 px:
    digits and 'e' 7 px, '.' and '-' under 4 px; '3.7e-4' is 36 px)."""
    return sum(3.8 if ch in ".-" else 7.0 for ch in text)


def cell_text_size(n_rows: int, n_cols: int, labels: Iterable[str] = ("3.7e-4",)) -> int | None:
    """Font size (px) for the values `labels` written in heatmap cells, or None when the widest does not fit
    its cell at CELL_FONT_PX: the demo's 5 columns hold '3.7e-4', 7 columns hold only '0.31'."""
    w, h = HEATMAP_PLOT_PX
    widest = max((text_px(t) for t in labels), default=0.0)
    fits = w / max(n_cols, 1) >= widest + CELL_PAD_PX and h / max(n_rows, 1) >= CELL_FONT_PX + CELL_PAD_PX
    return CELL_FONT_PX if fits else None


def cell_label(v: float) -> str:
    """A short cell value: 0.056, 3, 5.6e-5 (two significant digits, unpadded exponent); '' for NaN."""
    if math.isnan(v):
        return ""
    if v == 0:
        return "0"
    if 1e-2 <= abs(v) < 100:
        return f"{v:.2g}"
    mant, exp = f"{v:.1e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"




def chaos_heatmap(arrays: dict[str, np.ndarray], metric: str, log: bool = False, seed: int | None = None,
                  title: str | None = None, clickable: bool = False, selected: Sequence[int] | None = None
                  ) -> go.Figure:
    """Heatmap of C, B or D: rows t0 (perturbation time), columns t1 (comparison time).

    Axes are categorical (the iterations are rarely evenly spaced); empty cells have t1 <= t0.
    With log=True the colour is log10 of the value (zeros, which cannot be shown on a log scale,
    stay blank); hover always gives the value itself. Values are written in the cells when they fit
    at CELL_FONT_PX (`cell_text_size`), else only hover shows them.

    clickable=True lays an invisible marker on every computed cell, which carries the hover: plotly
    cannot select a heatmap cell, but a click selects the marker, so a chart with points selection
    reports the (t1, t0) clicked (`chaos_cell_at`). `selected` (t0, t1) frames that cell.
    """
    z = seed_reduce(arrays[metric], seed)
    x = [str(int(v)) for v in arrays["t1"]]
    y = [str(int(v)) for v in arrays["t0"]]
    colour = z
    colorbar: dict[str, object] = dict(title=metric, exponentformat="e")
    zmin, zmax = 0.0, None  # C, B and D are >= 0
    if log:
        colour, tv, tt = log_colour(z)
        colorbar.update(tickvals=tv, ticktext=tt, title=f"{metric} (log)")
        zmin, zmax = log_range(tv, colour)
    text = [[cell_label(v) for v in row] for row in z]
    size = cell_text_size(len(y), len(x), [t for row in text for t in row])
    hover = f"t0=%{{y}}<br>t1=%{{x}}<br>{metric}=%{{customdata:.4g}}<extra></extra>"
    colorbar.update(orientation="h", thickness=12, y=-0.24, yanchor="top", title_side="right")  # width to the cells
    fig = go.Figure(go.Heatmap(
        z=colour, x=x, y=y, customdata=z, text=text, colorscale="Viridis", colorbar=colorbar, xgap=1, ygap=1,
        zmin=zmin, zmax=zmax, hovertemplate=hover, hoverinfo="skip" if clickable else None,
        texttemplate="%{text}" if size else None, textfont=dict(size=size) if size else None, hoverongaps=False,
    ))
    if clickable:
        cells = [(x[j], y[i], z[i, j]) for i in range(len(y)) for j in range(len(x)) if not math.isnan(z[i, j])]
        fig.add_trace(go.Scatter(
            x=[c[0] for c in cells], y=[c[1] for c in cells], customdata=[c[2] for c in cells], mode="markers",
            marker=dict(symbol="square", size=14, color="rgba(0,0,0,0)"), hovertemplate=hover, name="cells",
            showlegend=False, unselected=dict(marker=dict(opacity=1)), selected=dict(marker=dict(opacity=1))))
        fig.update_layout(hovermode="closest", hoverdistance=-1, clickmode="event+select")
    if selected is not None and str(selected[0]) in y and str(selected[1]) in x:  # category k spans k +- 0.5
        i, j = y.index(str(selected[0])), x.index(str(selected[1]))
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, line=dict(color="#d62728", width=3),
                      name="selected cell")
    fig.update_xaxes(title="t1 (iteration of the comparison)", type="category")
    fig.update_yaxes(title="t0 (iteration of the perturbation)", type="category")
    return apply_layout(fig, title or METRICS[metric], margin=dict(l=52, r=8, t=50, b=100), height=460)


def chaos_cell_at(arrays: dict[str, np.ndarray], point: dict[str, Any]) -> tuple[int, int] | None:
    """(i, j) of the computed cell under a clicked heatmap point (its x is t1, its y is t0, as drawn by
    `chaos_heatmap`), or None for an empty cell or a point of another figure."""
    try:
        t0, t1 = int(float(point["y"])), int(float(point["x"]))
    except (KeyError, TypeError, ValueError):
        return None
    for i, j, a, b in chaos_cells(arrays):
        if (a, b) == (t0, t1):
            return i, j
    return None


def chaos_sections_table(arrays: dict[str, np.ndarray], metric: str, seed: int | None = None) -> Table:
    z = seed_reduce(arrays[metric], seed)
    t: Table = {"t0": [], "t1": [], metric: []}
    for i, t0 in enumerate(arrays["t0"]):
        for j, t1 in enumerate(arrays["t1"]):
            if not math.isnan(z[i, j]):
                t["t0"].append(int(t0))
                t["t1"].append(int(t1))
                t[metric].append(cell_value(z[i, j]))
    return t


def chaos_sections(arrays: dict[str, np.ndarray], metric: str, log: bool = False, seed: int | None = None,
                   title: str | None = None) -> go.Figure:
    """The metric versus t1, one line per t0 (the heatmap's rows as curves)."""
    z = seed_reduce(arrays[metric], seed)
    fig = go.Figure()
    for i, t0 in enumerate(arrays["t0"]):
        ok = ~np.isnan(z[i])
        if not ok.any():
            continue
        fig.add_trace(go.Scatter(
            x=arrays["t1"][ok].astype(int), y=z[i][ok], mode="lines+markers", name=f"t0={int(t0)}",
            line=dict(color=LINE_COLOURS[i % len(LINE_COLOURS)]),
            hovertemplate=f"t0={int(t0)}<br>t1=%{{x}}<br>{metric}=%{{y:.4g}}<extra></extra>",
        ))
    fig.update_xaxes(title="t1 (iteration)")
    fig.update_yaxes(title=metric, type="log" if log else "linear", exponentformat="e")
    if log:
        zeros_to_row(fig, "t1")  # B and D are often exactly 0 late
    return apply_layout(fig, title or f"{METRICS[metric]} versus t1, one line per t0", legend_title_text="perturbed at")


def chaos_path_table(arrays: dict[str, np.ndarray], i: int, j: int) -> Table:
    t: Table = {"seed": [], "alpha": [], "loss": []}
    for s, seed in enumerate(arrays["seeds"]):
        for a, loss in zip(arrays["alphas"], arrays["path"][s, i, j], strict=True):
            t["seed"].append(int(seed))
            t["alpha"].append(float(a))
            t["loss"].append(cell_value(loss))
    return t


def chaos_path(arrays: dict[str, np.ndarray], i: int, j: int, title: str | None = None) -> go.Figure:
    """Test loss along the straight line between the control theta (alpha=1) and the perturbed copy
    theta' (alpha=0) at t1, for the cell (t0[i], t1[j]); dotted: the chord between the end points,
    whose largest gap to the path is the barrier B."""
    alphas = arrays["alphas"]
    t0, t1 = int(arrays["t0"][i]), int(arrays["t1"][j])
    fig = go.Figure()
    for s, seed in enumerate(arrays["seeds"]):
        path = arrays["path"][s, i, j]
        colour = LINE_COLOURS[s % len(LINE_COLOURS)]
        fig.add_trace(go.Scatter(x=alphas, y=path, mode="lines+markers", name=f"path, seed {int(seed)}",
                                 line=dict(color=colour),
                                 hovertemplate="alpha=%{x:.3f}<br>loss=%{y:.4f}<extra></extra>"))
        if not np.isnan(path).any():
            chord = path[0] + alphas * (path[-1] - path[0])
            fig.add_trace(go.Scatter(x=alphas, y=chord, mode="lines", name=f"chord, seed {int(seed)}",
                                     line=dict(color=colour, dash="dot"), hoverinfo="skip"))
    b = seed_reduce(arrays["B"])[i, j]
    fig.update_xaxes(title="alpha  (0: perturbed copy theta', 1: control theta)", range=[-0.02, 1.02])
    fig.update_yaxes(title="test loss")
    return apply_layout(fig, title or f"Loss along the interpolation path, t0={t0}, t1={t1} (B={b:.4g})")
