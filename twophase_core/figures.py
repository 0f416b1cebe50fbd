"""Plotly figures of stored results, and their data as tables (CSV / JSON) and standalone HTML.

Pure functions of a `Result` (or of its arrays): no Streamlit, no torch. Every view of the app has
a `*_figure` builder and a `*_table` that holds exactly the numbers the figure draws, so what a
user downloads is what they saw. A table is a dict of equal-length columns (name -> list).
"""

from __future__ import annotations

import io
import json
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import config as C

Table = dict[str, list[Any]]

METRICS = {
    "C": "parameter dissimilarity C (cosine distance)",
    "B": "loss barrier B",
    "D": "disagreement rate D",
}
PROJECTION_LABELS = {"pca": "PCA", "mds": "MDS"}
_LINE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"]
_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), height=420)


def _layout(fig: go.Figure, title: str, **kw: Any) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.0, xanchor="left"), **{**_LAYOUT, **kw})
    fig.update_yaxes(exponentformat="e")  # 1e-12, not plotly's SI "1p"
    return fig


# The shared helpers under public names, for the other figure modules (compare_figures.py)
LINE_COLOURS = _LINE_COLOURS
apply_layout = _layout


def _f(v: Any) -> float | None:
    """A float for a table cell; None for NaN (CSV: empty cell, JSON: null)."""
    v = float(v)
    return None if math.isnan(v) else v


# ---------------------------------------------------------------------------------------------
# Chaos: C, B, D over (t0, t1)


def seed_reduce(a: np.ndarray, seed: int | None = None) -> np.ndarray:
    """(seeds, ...) -> (...): one seed's slice, or the mean over seeds ignoring NaN (None)."""
    if seed is not None:
        return np.asarray(a[seed], dtype=float)
    if a.shape[0] == 1:
        return np.asarray(a[0], dtype=float)
    with warnings.catch_warnings():  # all-NaN cells (t1 <= t0) stay NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=0)


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
                t[k].append(_f(vals[k][i, j]))
    return t


def _log_colour(z: np.ndarray) -> tuple[np.ndarray, list[float], list[str]]:
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


def _log_range(tv: list[float], colour: np.ndarray) -> tuple[float, float]:
    """Colour range of a log heatmap: from its lowest tick (or value) to the highest value, never empty,
    so an all-zero grid is drawn in the colour of 0, not in the middle of the scale."""
    finite = colour[np.isfinite(colour)]
    lo = min([*tv[:1], *finite.tolist()]) if tv or finite.size else 0.0
    hi = float(finite.max()) if finite.size else lo + 1
    return float(lo), float(hi if hi > lo else lo + 1)


CELL_FONT_PX = 14  # cell values legible on a projector; smaller text is not drawn at all (hover keeps the value)
HEATMAP_PLOT_PX = (230, 265)  # plot area (w, h) of a chaos heatmap a third of a 1400 px page wide (Chromium)
CELL_PAD_PX = 8  # room left around a value inside its cell


def text_px(text: str) -> float:
    """Width of a cell value at CELL_FONT_PX in the app's font (measured in Chromium, Source Sans 14 px:
    digits and 'e' 7 px, '.' and '-' under 4 px; '3.7e-4' is 36 px)."""
    return sum(3.8 if ch in ".-" else 7.0 for ch in text)


def cell_text_size(n_rows: int, n_cols: int, labels: Any = ("3.7e-4",)) -> int | None:
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


log_colour = _log_colour
log_range = _log_range
cell_value = _f


def chaos_heatmap(arrays: dict[str, np.ndarray], metric: str, log: bool = False, seed: int | None = None,
                  title: str | None = None, clickable: bool = False, selected: tuple[int, int] | None = None
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
    colorbar: dict[str, Any] = dict(title=metric, exponentformat="e")
    zmin, zmax = 0.0, None  # C, B and D are >= 0
    if log:
        colour, tv, tt = _log_colour(z)
        colorbar.update(tickvals=tv, ticktext=tt, title=f"{metric} (log)")
        zmin, zmax = _log_range(tv, colour)
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
    return _layout(fig, title or METRICS[metric], margin=dict(l=52, r=8, t=50, b=100), height=460)


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
                t[metric].append(_f(z[i, j]))
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
            line=dict(color=_LINE_COLOURS[i % len(_LINE_COLOURS)]),
            hovertemplate=f"t0={int(t0)}<br>t1=%{{x}}<br>{metric}=%{{y:.4g}}<extra></extra>",
        ))
    fig.update_xaxes(title="t1 (iteration)")
    fig.update_yaxes(title=metric, type="log" if log else "linear", exponentformat="e")
    return _layout(fig, title or f"{METRICS[metric]} versus t1, one line per t0", legend_title_text="perturbed at")


def chaos_path_table(arrays: dict[str, np.ndarray], i: int, j: int) -> Table:
    t: Table = {"seed": [], "alpha": [], "loss": []}
    for s, seed in enumerate(arrays["seeds"]):
        for a, loss in zip(arrays["alphas"], arrays["path"][s, i, j], strict=True):
            t["seed"].append(int(seed))
            t["alpha"].append(float(a))
            t["loss"].append(_f(loss))
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
        colour = _LINE_COLOURS[s % len(_LINE_COLOURS)]
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
    return _layout(fig, title or f"Loss along the interpolation path, t0={t0}, t1={t1} (B={b:.4g})")


# ---------------------------------------------------------------------------------------------
# Cone: the empirical NTK along training


def cone_S_table(arrays: dict[str, np.ndarray]) -> Table:
    t: Table = {"t_i": [], "t_j": [], "S": []}
    its = arrays["iters"]
    for a, ti in enumerate(its):
        for b, tj in enumerate(its):
            t["t_i"].append(int(ti))
            t["t_j"].append(int(tj))
            t["S"].append(_f(arrays["S"][a, b]))
    return t


def cone_S_heatmap(arrays: dict[str, np.ndarray], log: bool = False, title: str | None = None) -> go.Figure:
    """S[i, j] = kernel distance between the checkpoints t_i and t_j (paper Fig. 4)."""
    S = np.asarray(arrays["S"], dtype=float)
    labels = [str(int(v)) for v in arrays["iters"]]
    colour = S
    colorbar: dict[str, Any] = dict(title="S", exponentformat="e")
    if log:
        colour, tv, tt = _log_colour(S)
        colorbar.update(tickvals=tv, ticktext=tt, title="S (log)")
    fig = go.Figure(go.Heatmap(
        z=colour, x=labels, y=labels, customdata=S, colorscale="Viridis", colorbar=colorbar,
        hovertemplate="t_i=%{y}<br>t_j=%{x}<br>S=%{customdata:.4g}<extra></extra>", hoverongaps=False,
    ))
    fig.update_xaxes(title="checkpoint t_j (iteration)", type="category")
    fig.update_yaxes(title="checkpoint t_i (iteration)", type="category", autorange="reversed")
    return _layout(fig, title or "Kernel distance S(H(theta_ti), H(theta_tj))", height=520)


def cone_ref_table(arrays: dict[str, np.ndarray]) -> Table:
    t: Table = {"reference": [], "t": [], "S": []}
    for r, tau in enumerate(arrays["references"]):
        for k, it in enumerate(arrays["iters"]):
            t["reference"].append(int(tau))
            t["t"].append(int(it))
            t["S"].append(_f(arrays["ref_curves"][r, k]))
    return t


def cone_ref_curves(arrays: dict[str, np.ndarray], log: bool = False, title: str | None = None) -> go.Figure:
    """S(H(theta_t), H(theta_tau)) versus t, one line per reference tau (paper Fig. 5a)."""
    fig = go.Figure()
    its = arrays["iters"].astype(int)
    for r, tau in enumerate(arrays["references"]):
        fig.add_trace(go.Scatter(x=its, y=arrays["ref_curves"][r], mode="lines+markers", name=f"tau={int(tau)}",
                                 line=dict(color=_LINE_COLOURS[r % len(_LINE_COLOURS)]),
                                 hovertemplate=f"tau={int(tau)}<br>t=%{{x}}<br>S=%{{y:.4g}}<extra></extra>"))
    fig.update_xaxes(title="t (iteration)")
    fig.update_yaxes(title="S(H(theta_t), H(theta_tau))", type="log" if log else "linear")
    return _layout(fig, title or "Kernel distance to a reference checkpoint tau", legend_title_text="reference")


def cone_neigh_table(arrays: dict[str, np.ndarray]) -> Table:
    t: Table = {"dt": [], "t": [], "S": []}
    for dt in arrays["dts"]:
        for it, s in zip(arrays[f"neigh_t_{int(dt)}"], arrays[f"neigh_s_{int(dt)}"], strict=True):
            t["dt"].append(int(dt))
            t["t"].append(int(it))
            t["S"].append(_f(s))
    return t


def cone_neighbours(arrays: dict[str, np.ndarray], log: bool = False, title: str | None = None) -> go.Figure:
    """S(H(theta_t), H(theta_t+dt)) versus t, one line per dt: the kernel velocity (paper Fig. 5b)."""
    fig = go.Figure()
    for k, dt in enumerate(arrays["dts"]):
        dt = int(dt)
        fig.add_trace(go.Scatter(x=arrays[f"neigh_t_{dt}"].astype(int), y=arrays[f"neigh_s_{dt}"],
                                 mode="lines+markers", name=f"dt={dt}",
                                 line=dict(color=_LINE_COLOURS[k % len(_LINE_COLOURS)]),
                                 hovertemplate=f"dt={dt}<br>t=%{{x}}<br>S=%{{y:.4g}}<extra></extra>"))
    fig.update_xaxes(title="t (iteration)")
    fig.update_yaxes(title="S(H(theta_t), H(theta_t+dt))", type="log" if log else "linear")
    return _layout(fig, title or "Kernel velocity: distance between neighbouring checkpoints",
                   legend_title_text="step")


def cone_projection_table(arrays: dict[str, np.ndarray], method: str, dim: int) -> Table:
    xyz = np.asarray(arrays[f"{method}{dim}"], dtype=float)
    t: Table = {"t": [int(v) for v in arrays["iters"]]}
    for d in range(dim):
        t[f"{method}{d + 1}"] = [float(v) for v in xyz[:, d]]
    return t


def _iteration_colorbar(its: np.ndarray) -> dict[str, Any]:
    """Colour by checkpoint index (checkpoints are dense early), labelled with iterations."""
    m = len(its)
    idx = sorted({0, m - 1, *np.linspace(0, m - 1, min(m, 6)).round().astype(int).tolist()})
    return dict(title="iteration", tickvals=idx, ticktext=[str(int(its[i])) for i in idx])


def cone_ray_ends(arrays: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """Indices of the first and last checkpoints (after 0) of the cone window, the ends of the drawn rays."""
    its = np.asarray(arrays["iters"]).astype(int)
    win = arrays.get("cone_window")
    if win is None or len(its) < 3:
        return None
    inside = [k for k, t in enumerate(its) if int(win[0]) <= t <= int(win[1]) and k != 0]
    return (inside[0], inside[-1]) if len(inside) >= 2 else None


def ray_angle_kernel(arrays: dict[str, np.ndarray], a: int, b: int) -> float:
    """Angle (degrees) seen from H(theta_0) between the increments u_a - u_0 and u_b - u_0 of the unit-normalised
    kernels, in kernel space, from the Gram matrix G alone: <u_a - u_0, u_b - u_0> = G_ab - G_a0 - G_0b + 1."""
    g = np.asarray(arrays["G"], dtype=float)
    ip = lambda i, j: g[i, j] - g[i, 0] - g[0, j] + 1.0  # noqa: E731
    den = math.sqrt(max(ip(a, a), 0.0) * max(ip(b, b), 0.0))
    return float(np.degrees(np.arccos(np.clip(ip(a, b) / den, -1.0, 1.0)))) if den > 0 else 0.0


def ray_angle_drawn(arrays: dict[str, np.ndarray], method: str, dim: int, a: int, b: int) -> float:
    """The same angle as it appears in a projection (what the eye reads off the picture)."""
    xyz = np.asarray(arrays[f"{method}{dim}"], dtype=float)
    u, v = xyz[a] - xyz[0], xyz[b] - xyz[0]
    den = float(np.linalg.norm(u) * np.linalg.norm(v))
    return float(np.degrees(np.arccos(np.clip(u @ v / den, -1.0, 1.0)))) if den > 0 else 0.0


def honest_view(arrays: dict[str, np.ndarray]) -> tuple[str, int]:
    """The projection to open on: the flat (2-D) one whose rays' angle is closest to the true angle in
    kernel space (PCA on a tie). A 3-D view adds the camera's own projection, and from its default
    camera H(theta_0) can sit beside the late kernels, hiding the cone; it stays one click away."""
    ends = cone_ray_ends(arrays)
    if ends is None:
        return "pca", 2
    true = ray_angle_kernel(arrays, *ends)
    return min(PROJECTION_LABELS, key=lambda m: abs(ray_angle_drawn(arrays, m, 2, *ends) - true)), 2


def cone_projection(arrays: dict[str, np.ndarray], method: str = "pca", dim: int = 3,
                    title: str | None = None, rays: bool = False) -> go.Figure:
    """The kernels along training as points (PCA or MDS of the normalised Gram matrix), joined in
    the order of training and coloured by iteration; H(theta_0) is the red diamond (paper Fig. 5c).

    rays=True draws the cone: a ray from H(theta_0) to the first and to the last kernel of the cone
    window, labelled with the angle between them measured in kernel space (the drawn angle of a
    projection can differ; the hover says by how much)."""
    if dim not in (2, 3) or method not in PROJECTION_LABELS:
        raise ValueError(f"no projection {method}{dim}")
    xyz = np.asarray(arrays[f"{method}{dim}"], dtype=float)
    its = arrays["iters"].astype(int)
    idx = np.arange(len(its))
    marker = dict(color=idx, colorscale="Viridis", colorbar=_iteration_colorbar(its), size=6 if dim == 3 else 9,
                  line=dict(width=0))
    hover = "t=%{customdata}<extra></extra>"
    lab = PROJECTION_LABELS[method]
    if dim == 3:
        fig = go.Figure(go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="lines+markers", marker=marker,
                                     line=dict(color="rgba(120,120,120,0.6)", width=3), customdata=its,
                                     hovertemplate=hover, name="H(theta_t)"))
        fig.add_trace(go.Scatter3d(x=[xyz[0, 0]], y=[xyz[0, 1]], z=[xyz[0, 2]], mode="markers+text",
                                   marker=dict(color="#d62728", size=7, symbol="diamond", opacity=0.9), text=["H(θ₀)"],
                                   textposition="top center", name="H(theta_0)", customdata=[its[0]],
                                   hovertemplate="H(θ₀), t=%{customdata}<extra></extra>"))
        fig.update_layout(scene=dict(xaxis_title=f"{lab} 1", yaxis_title=f"{lab} 2", zaxis_title=f"{lab} 3",
                                     aspectmode="cube", camera=dict(eye=dict(x=1.7, y=1.7, z=1.1))),
                          margin=dict(l=0, r=0, t=50, b=0))
    else:
        fig = go.Figure(go.Scatter(x=xyz[:, 0], y=xyz[:, 1], mode="lines+markers", marker=marker,
                                   line=dict(color="rgba(120,120,120,0.6)", width=1.5), customdata=its,
                                   hovertemplate=hover, name="H(theta_t)"))
        fig.add_trace(go.Scatter(x=[xyz[0, 0]], y=[xyz[0, 1]], mode="markers+text",
                                 marker=dict(color="#d62728", size=14, symbol="diamond"), text=["H(θ₀)"],
                                 textposition="top center", name="H(theta_0)", customdata=[its[0]],
                                 hovertemplate="H(θ₀), t=%{customdata}<extra></extra>"))
        fig.update_xaxes(title=f"{lab} 1")
        fig.update_yaxes(title=f"{lab} 2", scaleanchor="x", scaleratio=1)
    ends = cone_ray_ends(arrays) if rays else None
    if ends is not None:
        _draw_rays(fig, arrays, xyz, its, method, dim, ends)
    return _layout(fig, title or f"Kernels along training, {lab} {dim}-D", height=560, showlegend=False)


RAY_COLOUR = "#d62728"


def _draw_rays(fig: go.Figure, arrays: dict[str, np.ndarray], xyz: np.ndarray, its: np.ndarray, method: str, dim: int,
               ends: tuple[int, int]) -> None:
    """Two rays from H(theta_0) to the ends of the cone window, and the angle between them as a label."""
    a, b = ends
    true, drawn = ray_angle_kernel(arrays, a, b), ray_angle_drawn(arrays, method, dim, a, b)
    label = f"{true:.0f}° (t={int(its[a])} to {int(its[b])})"
    hover = (f"ray from H(θ₀) to H(θ_t), t=%{{customdata}}<br>angle between the rays: {true:.1f}° in kernel space,"
             f" {drawn:.1f}° as drawn<extra></extra>")
    for k in (a, b):
        pts = xyz[[0, k]]
        common = dict(mode="lines", line=dict(color=RAY_COLOUR, width=3, dash="dash"), customdata=[its[k], its[k]],
                      hovertemplate=hover, name=f"ray to t={int(its[k])}")
        if dim == 3:
            fig.add_trace(go.Scatter3d(x=pts[:, 0], y=pts[:, 1], z=pts[:, 2], **common))
        else:
            fig.add_trace(go.Scatter(x=pts[:, 0], y=pts[:, 1], **common))
    u, v = xyz[a] - xyz[0], xyz[b] - xyz[0]
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    if nu == 0 or nv == 0:
        return
    bisector = u / nu + v / nv
    nb = float(np.linalg.norm(bisector))
    at = xyz[0] + (0.6 * min(nu, nv) * bisector / nb if nb > 0 else 0.5 * u)  # inside the wedge, off both rays
    note = dict(text=label, showarrow=False, font=dict(size=16, color=RAY_COLOUR), bgcolor="rgba(255,255,255,0.85)",
                name="cone angle")
    if dim == 3:
        fig.update_layout(scene_annotations=[dict(x=at[0], y=at[1], z=at[2], **note)])
    else:
        fig.add_annotation(x=at[0], y=at[1], **note)


def cone_acc_table(arrays: dict[str, np.ndarray]) -> Table:
    return {"t": [int(v) for v in arrays["iters"]], "test_acc": [_f(v) for v in arrays["test_acc"]]}


def cone_test_acc(arrays: dict[str, np.ndarray], title: str | None = None) -> go.Figure:
    fig = go.Figure(go.Scatter(x=arrays["iters"].astype(int), y=arrays["test_acc"], mode="lines+markers",
                               name="test accuracy", hovertemplate="t=%{x}<br>acc=%{y:.4f}<extra></extra>"))
    fig.update_xaxes(title="t (iteration)")
    fig.update_yaxes(title="test accuracy", rangemode="tozero")
    return _layout(fig, title or "Test accuracy along training", height=320)


def cone_angles(result: Any) -> dict[str, Any]:
    """The cone angles (degrees) and their windows, for showing as numbers."""
    a, m = result.arrays, result.meta
    cw = [int(v) for v in a["cone_window"]] if "cone_window" in a else None
    ew = [int(v) for v in a["early_window"]] if "early_window" in a else None
    return {"cone_angle_deg": m.get("cone_angle_deg"), "cone_window": cw,
            "early_angle_deg": m.get("early_angle_deg"), "early_window": ew}


# ---------------------------------------------------------------------------------------------
# Linearised training


def linear_table(arrays: dict[str, np.ndarray]) -> Table:
    full = float(np.asarray(arrays["acc_full"]))
    return {"switch": [int(v) for v in arrays["switch"]], "acc_linear": [_f(v) for v in arrays["acc_linear"]],
            "acc_at_switch": [_f(v) for v in arrays["acc_at_switch"]],
            "acc_full": [full] * len(arrays["switch"])}


def linear_figure(arrays: dict[str, np.ndarray], iterations: int | None = None, title: str | None = None) -> go.Figure:
    """Test accuracy at T of the model linearised at t, versus t; beside it the accuracy of the
    network at t itself, and full (non-linearised) training to T as a horizontal line."""
    sw = arrays["switch"].astype(int)
    full = float(np.asarray(arrays["acc_full"]))
    end = f" (T={iterations})" if iterations else ""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=sw, y=arrays["acc_linear"], mode="lines+markers",
                             name=f"linearised at t, trained to T{end}",
                             line=dict(color=_LINE_COLOURS[0], width=3),
                             hovertemplate="switch t=%{x}<br>acc at T=%{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=sw, y=arrays["acc_at_switch"], mode="lines+markers",
                             name="network at t (no more training)",
                             line=dict(color=_LINE_COLOURS[1], dash="dash"),
                             hovertemplate="t=%{x}<br>acc=%{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[int(sw.min()), int(sw.max())] if len(sw) else [], y=[full, full], mode="lines",
                             name=f"full training to T: {full:.3f}", line=dict(color="#444", dash="dot"),
                             hovertemplate=f"full training: {full:.4f}<extra></extra>"))
    fig.update_xaxes(title="switch time t (iteration)")
    fig.update_yaxes(title="test accuracy", rangemode="tozero")
    return _layout(fig, title or "Linearised training from theta_t versus full training",
                   legend=dict(orientation="h", y=-0.25))


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


def _cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


def from_csv(text: str) -> Table:
    """Inverse of `to_csv` for numeric tables (ints stay ints, empty cells become None)."""
    if not text.strip():
        return {}
    df = pd.read_csv(io.StringIO(text))
    return {str(c): [_cell(v) for v in df[c].tolist()] for c in df.columns}


def to_json(table: Table, **context: Any) -> str:
    """{"columns": ..., "rows": [...], plus context (config, hash, command)}; NaN is null."""
    rows = [{c: _cell(v) for c, v in row.items()} for row in to_frame(table).to_dict(orient="records")]
    return json.dumps({**context, "columns": list(table), "rows": rows}, indent=1, default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return _f(o)
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


def config_from_result(result: Any) -> Any:
    """The typed config of a stored result."""
    return C.from_dict(C.KINDS[result.kind], result.config)


# ---------------------------------------------------------------------------------------------
# The transition: each metric at the final t1 versus t0, over replicates (docs/transition.md)
#
# A group is one setting with its replicates, as a plain dict the sweep can build from its JSON:
#   {"label": "lr=0.1",                      # legend and table name
#    "t0": (n,) iterations,                 # the grid, any order
#    "values": {"C": (R, n), "B": ..., ...},  # the metric at the final t1, one row per replicate, NaN: none
#    "transitions": {"C": Transition | its to_dict() | None, ...}}  # optional; a missing key is estimated
#                                            # here, None means "none found" (the sweep JSON's null)

TRANSITION_METRICS = {**METRICS, "S": "kernel velocity S(theta_t, theta_t+dt)"}
_X_NOTE = "log scale, drawn at 1 + t so that t = 0 fits"


def _transition_of(group: dict[str, Any], metric: str, n_boot: int, seed: int) -> Any:
    """The group's Transition for `metric`: given (object or dict), None (none found), or estimated."""
    from .transition import Transition, estimate_transition

    given = group.get("transitions", {})
    if metric in given:
        tr = given[metric]
        return Transition.from_dict(tr) if isinstance(tr, dict) else tr
    return estimate_transition(group["t0"], group["values"][metric], n_boot=n_boot, seed=seed)


def _sorted_group(group: dict[str, Any], metric: str) -> tuple[np.ndarray, np.ndarray]:
    t0 = np.asarray(group["t0"], dtype=float)
    v = np.atleast_2d(np.asarray(group["values"][metric], dtype=float))
    order = np.argsort(t0)
    return t0[order], v[:, order]


def transition_curve_table(groups: list[dict[str, Any]], metric: str, n_boot: int = 1000, seed: int = 0) -> Table:
    """What `transition_figure` draws, per group and t0: replicates with a value, the geometric mean over
    replicates with its 95% bootstrap band (exact zeros at the estimator's floor, as it fits them), and
    the fitted sigmoid there (empty where no fit was made)."""
    from .transition import log_values, replicate_band, sigmoid_curve

    t: Table = {"group": [], "t0": [], "replicates": [], "mean": [], "band_low": [], "band_high": [], "fit": []}
    for g in groups:
        t0, v = _sorted_group(g, metric)
        _, floor, _ = log_values(v)
        mean, lo, hi = replicate_band(v, n_boot=n_boot, seed=seed, log=True, floor=floor)
        fit = sigmoid_curve(_transition_of(g, metric, n_boot, seed), t0)
        for i, x in enumerate(t0):
            t["group"].append(str(g["label"]))
            t["t0"].append(int(x))
            t["replicates"].append(int(np.isfinite(v[:, i]).sum()))
            for col, arr in (("mean", mean), ("band_low", lo), ("band_high", hi), ("fit", fit)):
                t[col].append(_f(arr[i]))
    return t


def transition_summary_table(groups: list[dict[str, Any]], metrics: tuple[str, ...] | None = None,
                             n_boot: int = 1000, seed: int = 0) -> Table:
    """t* and its 95% interval per group and metric, or why none was found."""
    t: Table = {"group": [], "metric": [], "found": [], "t_star": [], "ci_low": [], "ci_high": [], "replicates": [],
                "points": [], "method": [], "reason": []}
    for g in groups:
        for metric in metrics or tuple(g["values"]):
            tr = _transition_of(g, metric, n_boot, seed)
            t["group"].append(str(g["label"]))
            t["metric"].append(metric)
            t["found"].append(bool(tr is not None and tr.found))
            for col in ("t_star", "ci_low", "ci_high"):
                t[col].append(None if tr is None or getattr(tr, col) is None else float(getattr(tr, col)))
            t["replicates"].append(None if tr is None else int(tr.replicates))
            t["points"].append(None if tr is None else int(tr.points))
            t["method"].append(None if tr is None else tr.method)
            t["reason"].append("not found" if tr is None else tr.reason)
    return t


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def _spread_ticks(ts: list[int], most: int = 10) -> list[int]:
    """At most about `most` of the grid's t as tick labels, kept a tenth of the log span apart (a dense
    grid otherwise prints its labels on top of each other); the first and last always stay."""
    if len(ts) <= most:
        return ts
    u = np.log1p(np.asarray(ts, dtype=float))
    gap = (u[-1] - u[0]) / most
    keep = [0]
    for i in range(1, len(ts) - 1):
        if u[i] - u[keep[-1]] >= gap and u[-1] - u[i] >= gap / 2:
            keep.append(i)
    return [ts[i] for i in keep] + [ts[-1]]


def transition_figure(groups: list[dict[str, Any]], metric: str, n_boot: int = 1000, seed: int = 0,
                      show_replicates: bool = True, title: str | None = None) -> go.Figure:
    """The metric at the final t1 versus t0, one colour per group: the geometric mean over replicates
    (the scale t* is defined on) with its 95% bootstrap band, the replicates as faint points, the fitted
    sigmoid dotted, and t* as a dashed vertical line over its shaded 95% interval. x is 1 + t0 on a log
    axis, labelled with t0; exact zeros sit at the estimator's floor (a tenth of the smallest positive
    value), the only place a log axis can show them. Groups: see the comment above."""
    from .transition import log_values, replicate_band, sigmoid_curve

    fig = go.Figure()
    lows, highs, ticks = [], [], set()
    drawn = []
    for k, g in enumerate(groups):
        colour = _LINE_COLOURS[k % len(_LINE_COLOURS)]
        label = str(g["label"])
        t0, v = _sorted_group(g, metric)
        _, floor, _ = log_values(v)
        shown = np.where(v == 0, floor if floor is not None else np.nan, v)
        mean, lo, hi = replicate_band(v, n_boot=n_boot, seed=seed, log=True, floor=floor)
        ok = np.isfinite(mean)
        x = 1.0 + t0
        ticks.update(int(a) for a in t0[ok])
        lows.append(np.nanmin(shown) if np.isfinite(shown).any() else np.nan)
        highs.append(np.nanmax(shown) if np.isfinite(shown).any() else np.nan)
        fig.add_trace(go.Scatter(
            x=np.concatenate([x[ok], x[ok][::-1]]), y=np.concatenate([hi[ok], lo[ok][::-1]]), fill="toself",
            fillcolor=_rgba(colour, 0.18), line=dict(width=0), name=f"{label}: 95% band", legendgroup=label,
            showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=x[ok], y=mean[ok], mode="lines+markers", name=label, legendgroup=label,
            line=dict(color=colour, width=2.5),
            customdata=np.stack([t0[ok], lo[ok], hi[ok]], axis=1),
            hovertemplate=(f"{label}<br>t0=%{{customdata[0]:.0f}}<br>{metric} (geometric mean)=%{{y:.3g}}"
                           "<br>95% band [%{customdata[1]:.3g}, %{customdata[2]:.3g}]<extra></extra>")))
        if show_replicates:
            rx, ry = np.broadcast_to(x, shown.shape).ravel(), shown.ravel()
            keep = np.isfinite(ry)
            fig.add_trace(go.Scatter(
                x=rx[keep], y=ry[keep], mode="markers", name=f"{label}: replicates", legendgroup=label,
                showlegend=False, marker=dict(color=colour, size=5, opacity=0.35),
                customdata=(rx[keep] - 1.0), hovertemplate=f"{label}, one replicate<br>t0=%{{customdata:.0f}}"
                                                           f"<br>{metric}=%{{y:.3g}}<extra></extra>"))
        tr = _transition_of(g, metric, n_boot, seed)
        if tr is not None and tr.early is not None and ok.sum() >= 2:
            xs = np.geomspace(x[ok][0], x[ok][-1], 120)
            fig.add_trace(go.Scatter(
                x=xs, y=sigmoid_curve(tr, xs - 1.0), mode="lines", name=f"{label}: fit", legendgroup=label,
                showlegend=False, line=dict(color=colour, dash="dot", width=1.5), hoverinfo="skip"))
        drawn.append((label, colour, tr))
    finite_lo = [a for a in lows if np.isfinite(a) and a > 0]
    finite_hi = [a for a in highs if np.isfinite(a) and a > 0]
    y0 = min(finite_lo) / 2 if finite_lo else 1e-12
    y1 = max(finite_hi) * 2 if finite_hi else 1.0
    for label, colour, tr in drawn:  # after the data, so the y extent of the lines is known
        if tr is None or not tr.found:
            continue
        a, b, c = 1.0 + tr.ci_low, 1.0 + tr.ci_high, 1.0 + tr.t_star
        text = f"{label}: t* = {tr.t_star:.4g} [{tr.ci_low:.4g}, {tr.ci_high:.4g}]"
        fig.add_trace(go.Scatter(
            x=[a, b, b, a, a], y=[y0, y0, y1, y1, y0], fill="toself", fillcolor=_rgba(colour, 0.12),
            line=dict(width=0), mode="lines", name=f"{label}: 95% interval of t*", legendgroup=label,
            showlegend=False, hoverinfo="text", text=text))
        fig.add_trace(go.Scatter(
            x=[c, c], y=[y0, y1], mode="lines", name=text, legendgroup=label,
            line=dict(color=colour, dash="dash", width=2), hoverinfo="text", text=text))
    tick = _spread_ticks(sorted(ticks))
    what = "t (iteration of the pair's first checkpoint" if metric == "S" else "t0 (iteration of the perturbation"
    fig.update_xaxes(type="log", title=f"{what}; {_X_NOTE})",
                     tickvals=[1 + v for v in tick], ticktext=[str(v) for v in tick])
    y_what = "S between neighbouring checkpoints" if metric == "S" else f"{metric} at the final t1"
    fig.update_yaxes(type="log", range=[math.log10(y0), math.log10(y1)], exponentformat="e",
                     title=f"{y_what} (geometric mean over replicates)")
    name = TRANSITION_METRICS.get(metric, metric)
    default = (f"Where the kernel settles: {name} versus t" if metric == "S"
               else f"Where the chaos ends: {name} versus t0")
    return _layout(fig, title or default, legend_title_text="group")


def stack_replicates(results: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Chaos result arrays of the replicates of one setting -> {"t0", "t1", "C", "B", "D"} with the
    metrics of shape (replicates, t0, t1), each replicate averaged over its perturbation seeds (as the
    single-run figures do). The grids must agree."""
    if not results:
        raise ValueError("no replicates to stack")
    t0, t1 = np.asarray(results[0]["t0"]), np.asarray(results[0]["t1"])
    for a in results[1:]:
        if not (np.array_equal(a["t0"], t0) and np.array_equal(a["t1"], t1)):
            raise ValueError("replicates must share the (t0, t1) grid")
    return {"t0": t0, "t1": t1, **{k: np.stack([seed_reduce(a[k]) for a in results]) for k in METRICS}}


def chaos_sections_band_table(arrays: dict[str, np.ndarray], metric: str, n_boot: int = 1000, seed: int = 0) -> Table:
    """Every computed (t0, t1) cell: replicates with a value, their mean and its 95% bootstrap band."""
    from .transition import replicate_band

    v = np.asarray(arrays[metric], dtype=float)
    mean, lo, hi = replicate_band(v, n_boot=n_boot, seed=seed)
    t: Table = {"t0": [], "t1": [], "replicates": [], "mean": [], "band_low": [], "band_high": []}
    for i, t0 in enumerate(arrays["t0"]):
        for j, t1 in enumerate(arrays["t1"]):
            if np.isfinite(mean[i, j]):
                t["t0"].append(int(t0))
                t["t1"].append(int(t1))
                t["replicates"].append(int(np.isfinite(v[:, i, j]).sum()))
                for col, arr in (("mean", mean), ("band_low", lo), ("band_high", hi)):
                    t[col].append(_f(arr[i, j]))
    return t


def chaos_sections_band(arrays: dict[str, np.ndarray], metric: str, log: bool = False, n_boot: int = 1000,
                        seed: int = 0, title: str | None = None) -> go.Figure:
    """The metric versus t1, one line per t0: the mean over replicates with its 95% bootstrap band.

    arrays: {"t0": (n0,), "t1": (n1,), metric: (replicates, n0, n1)}, NaN where t1 <= t0 (see
    `stack_replicates`). The band is the percentile bootstrap of the mean over replicates; a log axis
    cannot draw a band edge at 0, so there the band stops.
    """
    from .transition import replicate_band

    v = np.asarray(arrays[metric], dtype=float)
    mean, lo, hi = replicate_band(v, n_boot=n_boot, seed=seed)
    t1 = np.asarray(arrays["t1"]).astype(int)
    fig = go.Figure()
    for i, t0 in enumerate(arrays["t0"]):
        ok = np.isfinite(mean[i])
        if not ok.any():
            continue
        colour = _LINE_COLOURS[i % len(_LINE_COLOURS)]
        name = f"t0={int(t0)}"
        fig.add_trace(go.Scatter(
            x=np.concatenate([t1[ok], t1[ok][::-1]]), y=np.concatenate([hi[i][ok], lo[i][ok][::-1]]), fill="toself",
            fillcolor=_rgba(colour, 0.18), line=dict(width=0), name=f"{name}: 95% band", legendgroup=name,
            showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=t1[ok], y=mean[i][ok], mode="lines+markers", name=name, legendgroup=name, line=dict(color=colour),
            customdata=np.stack([lo[i][ok], hi[i][ok]], axis=1),
            hovertemplate=(f"{name}<br>t1=%{{x}}<br>{metric} (mean)=%{{y:.4g}}"
                           "<br>95% band [%{customdata[0]:.3g}, %{customdata[1]:.3g}]<extra></extra>")))
    fig.update_xaxes(title="t1 (iteration)")
    fig.update_yaxes(title=f"{metric} (mean over {v.shape[0]} replicates)", type="log" if log else "linear",
                     exponentformat="e")
    return _layout(fig, title or f"{METRICS.get(metric, metric)} versus t1, one line per t0, 95% band over replicates",
                   legend_title_text="perturbed at")


def chaos_transition_group(arrays: dict[str, np.ndarray], label: str = "this run") -> dict[str, Any]:
    """One chaos result as a transition group: each metric at its final t1, one row per perturbation seed
    (the only replicates a single run has; a sweep over data and init seeds gives the real ones)."""
    return {"label": label, "t0": np.asarray(arrays["t0"]),
            "values": {m: np.asarray(arrays[m], dtype=float)[:, :, -1] for m in METRICS}}
