"""Figures that put 2 to 6 runs of one kind side by side, each with its data table (a `run` column first).

Pure functions of the runs' result arrays and their labels, like interfaces/figures/, whose helpers they reuse
(colours, layout, log colour, cell text, the single-run tables): no Streamlit, no torch. Heatmaps of
several runs share one colour axis per metric, so the same colour means the same value in every run;
curves of several runs are overlaid, one colour per run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from twophase_core.interfaces import catalog as K
from twophase_core.interfaces import figures as F

if TYPE_CHECKING:
    from twophase_core.experiments.result import Result
    from twophase_core.settings.config import ExperimentConfig

Table = F.Table
Arrays = dict[str, np.ndarray]
Lines = Callable[[Arrays], Iterator[tuple[str, np.ndarray, np.ndarray]]]  # a run's (line name, x, y) per line
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
PER_ROW = 3  # heatmaps per row: a third of a wide page each, as on a single run's page


def colour(k: int) -> str:
    return F.LINE_COLOURS[k % len(F.LINE_COLOURS)]


def _with_run(tables: list[Table], labels: list[str]) -> Table:
    """Tables of the same columns, one per run, stacked under a leading `run` column."""
    out: Table = {"run": []}
    for t, label in zip(tables, labels, strict=True):
        n = F.table_rows(t)
        out["run"] += [label] * n
        for col, vals in t.items():
            out.setdefault(col, []).extend(vals)
    return out


def settings_table(labels: list[str], ids: list[str], configs: list[ExperimentConfig | None]) -> Table:
    """One row per run: its label, its id and the settings that differ between these runs (blank for a run
    whose config is of an older schema: None)."""
    names = K.differing_settings([c for c in configs if c is not None])
    t: Table = {"run": list(labels), "id": list(ids), **{n: [] for n in names}}
    for cfg in configs:
        for n, v in (K.settings_text(cfg, names) if cfg is not None else dict.fromkeys(names, "")).items():
            t[n].append(v)
    return t


# ---------------------------------------------------------------------------------------------
# Heatmaps on one colour scale


def _shared_colour(zs: list[np.ndarray], log: bool) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The colour arrays of several heatmaps and the one colour axis they share (log: one set of decades,
    zeros one decade below the smallest positive value of all of them, as figures.chaos_heatmap draws one)."""
    flat = np.concatenate([np.asarray(z, dtype=float).ravel() for z in zs])
    if log:
        colour_all, tv, tt = F.log_colour(flat)
        lo, hi = F.log_range(tv, colour_all)
        colours, start = [], 0
        for z in zs:
            colours.append(colour_all[start:start + z.size].reshape(z.shape))
            start += z.size
        return colours, dict(cmin=lo, cmax=hi, colorbar=dict(tickvals=tv, ticktext=tt))
    finite = flat[np.isfinite(flat)]
    hi = float(finite.max()) if finite.size else 1.0
    return [np.asarray(z, dtype=float) for z in zs], dict(cmin=0.0, cmax=hi if hi > 0 else 1.0,
                                                             colorbar=dict(exponentformat="e"))


def _heatmap_grid(zs: list[np.ndarray], xs: list[list[str]], ys: list[list[str]], labels: list[str], name: str,
                  log: bool, hover: str, text: bool, reverse_y: bool = False, per_row: int = PER_ROW
                  ) -> tuple[go.Figure, int]:
    """Heatmaps in rows of `per_row` sharing one colour axis; returns the figure and its number of rows. Cell values
    are written where they fit a third of a page; the text stays on every heatmap (hover does not show it), so that
    presentation mode (`figures.present`), one per row, can write them where they fit there."""
    n = len(zs)
    cols = min(n, max(per_row, 1))
    rows = math.ceil(n / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=labels, horizontal_spacing=0.06,
                        vertical_spacing=0.14 if rows > 1 else 0.1)
    colours, axis = _shared_colour(zs, log)
    axis["colorbar"]["title"] = f"{name} (log)" if log else name
    for k, (z, c, x, y) in enumerate(zip(zs, colours, xs, ys, strict=True)):
        cell_text = [[F.cell_label(v) for v in row] for row in z]
        size = F.cell_text_size(len(y), len(x), [t for row in cell_text for t in row]) if text else None
        fig.add_trace(go.Heatmap(
            z=c, x=x, y=y, customdata=z, coloraxis="coloraxis", xgap=1, ygap=1, hoverongaps=False, name=labels[k],
            text=cell_text if text else None,
            texttemplate="%{text}" if size else None, textfont=dict(size=size) if size else None,
            hovertemplate=f"{labels[k]}<br>{hover}<extra></extra>"), row=k // cols + 1, col=k % cols + 1)
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed" if reverse_y else None)
    fig.update_layout(coloraxis=dict(colorscale="Viridis", **axis))
    return fig, rows


def chaos_heatmaps(runs: list[Arrays], labels: list[str], metric: str, log: bool = False,
                   title: str | None = None, per_row: int = PER_ROW) -> go.Figure:
    """C, B or D over (t0, t1) for each run (mean over its perturbation seeds), on one colour scale."""
    zs = [F.seed_reduce(a[metric]) for a in runs]
    xs = [[str(int(v)) for v in a["t1"]] for a in runs]
    ys = [[str(int(v)) for v in a["t0"]] for a in runs]
    hover = f"t0=%{{y}}<br>t1=%{{x}}<br>{metric}=%{{customdata:.4g}}"
    fig, rows = _heatmap_grid(zs, xs, ys, labels, metric, log, hover, text=True, per_row=per_row)
    fig.update_xaxes(title="t1")
    fig.update_yaxes(title="t0", col=1)
    return F.apply_layout(fig, title or f"{F.METRICS[metric]} over (t0, t1), one colour scale",
                          height=150 + 330 * rows, margin=dict(l=60, r=20, t=80, b=50))  # (t: the title over a run's)


def chaos_heatmaps_table(runs: list[Arrays], labels: list[str], metric: str) -> Table:
    return _with_run([F.chaos_heatmap_table(a, metric) for a in runs], labels)


def cone_S_heatmaps(runs: list[Arrays], labels: list[str], log: bool = False, title: str | None = None,
                    per_row: int = PER_ROW) -> go.Figure:
    """The kernel distance S between checkpoints for each run, on one colour scale."""
    zs = [np.asarray(a["S"], dtype=float) for a in runs]
    ticks = [[str(int(v)) for v in a["iters"]] for a in runs]
    fig, rows = _heatmap_grid(zs, ticks, ticks, labels, "S", log, "t_i=%{y}<br>t_j=%{x}<br>S=%{customdata:.4g}",
                              text=False, reverse_y=True, per_row=per_row)
    fig.update_xaxes(title="t_j")
    fig.update_yaxes(title="t_i", col=1)
    return F.apply_layout(fig, title or "Kernel distance S(H(theta_ti), H(theta_tj)), one colour scale",
                          height=150 + 380 * rows, margin=dict(l=60, r=20, t=80, b=50))


def cone_S_heatmaps_table(runs: list[Arrays], labels: list[str]) -> Table:
    return _with_run([F.cone_S_table(a) for a in runs], labels)


# ---------------------------------------------------------------------------------------------
# Overlaid curves: one colour per run, one dash per line within a run


def _overlay(runs: list[Arrays], labels: list[str], lines: Lines, x_title: str, y_title: str, log: bool,
             title: str, legend: str) -> go.Figure:
    """`lines(arrays)` yields (line name, x, y) per line of one run; each run gets a colour, each line a dash. The
    legend (long: a run's name per line) goes under the plot and the title breaks after its first clause: beside
    the legend, in half a page, the plot was a sliver and the title was cut."""
    fig = go.Figure()
    for k, (a, label) in enumerate(zip(runs, labels, strict=True)):
        for d, (name, x, y) in enumerate(lines(a)):
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines+markers", name=f"{label} · {name}", legendgroup=label,
                line=dict(color=colour(k), dash=DASHES[d % len(DASHES)]),
                hovertemplate=f"{label}<br>{name}<br>x=%{{x}}<br>y=%{{y:.4g}}<extra></extra>"))
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title, type="log" if log else "linear", exponentformat="e")
    if log:
        F.zeros_to_row(fig, x_title.split(" ")[0])
    return F.apply_layout(fig, title.replace(": ", ":<br>", 1), height=500, margin=dict(l=60, r=20, t=80, b=50),
                          legend=dict(title_text=legend, orientation="h", xref="container", x=0.0, yref="container",
                                      y=0.0, yanchor="bottom"))


def _section_lines(metric: str) -> Lines:
    def lines(a: Arrays) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        z = F.seed_reduce(a[metric])
        for i, t0 in enumerate(a["t0"]):
            ok = ~np.isnan(z[i])
            if ok.any():
                yield f"t0={int(t0)}", a["t1"][ok].astype(int), z[i][ok]
    return lines


def chaos_sections(runs: list[Arrays], labels: list[str], metric: str, log: bool = False,
                   title: str | None = None) -> go.Figure:
    """The metric versus t1, one line per (run, t0): colour is the run, dash the t0."""
    return _overlay(runs, labels, _section_lines(metric), "t1 (iteration)", metric, log,
                    title or f"{F.METRICS[metric]} versus t1: colour is the run, dash the t0", "run · perturbed at")


def chaos_sections_table(runs: list[Arrays], labels: list[str], metric: str) -> Table:
    return _with_run([F.chaos_sections_table(a, metric) for a in runs], labels)


def cone_ref_curves(runs: list[Arrays], labels: list[str], log: bool = False, title: str | None = None) -> go.Figure:
    """S(H(theta_t), H(theta_tau)) versus t per run and reference tau."""
    def lines(a: Arrays) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for r, tau in enumerate(a["references"]):
            yield f"tau={int(tau)}", a["iters"].astype(int), a["ref_curves"][r]
    return _overlay(runs, labels, lines, "t (iteration)", "S(H(theta_t), H(theta_tau))", log,
                    title or "Kernel distance to a reference checkpoint: colour is the run, dash the reference",
                    "run · reference")


def cone_ref_table(runs: list[Arrays], labels: list[str]) -> Table:
    return _with_run([F.cone_ref_table(a) for a in runs], labels)


def cone_neighbours(runs: list[Arrays], labels: list[str], log: bool = False, title: str | None = None) -> go.Figure:
    """The kernel velocity S(H(theta_t), H(theta_t+dt)) versus t per run and step dt."""
    def lines(a: Arrays) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for dt in a["dts"]:
            dt = int(dt)
            yield f"dt={dt}", a[f"neigh_t_{dt}"].astype(int), a[f"neigh_s_{dt}"]
    return _overlay(runs, labels, lines, "t (iteration)", "S(H(theta_t), H(theta_t+dt))", log,
                    title or "Kernel velocity: colour is the run, dash the step", "run · step")


def cone_neigh_table(runs: list[Arrays], labels: list[str]) -> Table:
    return _with_run([F.cone_neigh_table(a) for a in runs], labels)


def cone_angles_table(results: list[Result], labels: list[str]) -> Table:
    """The cone angle and the early angle of each run, with their windows (iterations)."""
    t: Table = {"run": [], "cone_window": [], "cone_angle_deg": [], "early_window": [], "early_angle_deg": []}
    for r, label in zip(results, labels, strict=True):
        ang = F.cone_angles(r)
        t["run"].append(label)
        for w, v in (("cone_window", "cone_angle_deg"), ("early_window", "early_angle_deg")):
            t[w].append("" if ang[w] is None else f"{ang[w][0]}-{ang[w][1]}")
            t[v].append(None if ang[v] is None else float(ang[v]))
    return t


def cone_angles(results: list[Result], labels: list[str], title: str | None = None) -> go.Figure:
    """Early angle and cone angle of each run as bars side by side: wide early, narrow once in the cone."""
    t = cone_angles_table(results, labels)
    fig = go.Figure()
    for k, (col, name) in enumerate((("early_angle_deg", "early angle"), ("cone_angle_deg", "cone angle"))):
        win = "early_window" if col.startswith("early") else "cone_window"
        fig.add_trace(go.Bar(
            x=t["run"], y=[v if v is not None else 0.0 for v in t[col]], name=name, marker_color=colour(k + 3),
            text=[F.fmt_angle(v) for v in t[col]], textposition="outside",
            textfont=dict(size=F.CELL_FONT_PX), customdata=t[win],
            hovertemplate=f"%{{x}}<br>{name}, t in [%{{customdata}}]: %{{text}}<extra></extra>"))
    fig.update_yaxes(title="degrees, seen from H(theta_0)", rangemode="tozero")
    return F.apply_layout(fig, title or "Cone angles side by side", barmode="group", height=420)


# ---------------------------------------------------------------------------------------------
# Linearised training


def linear_curves(runs: list[Arrays], labels: list[str], title: str | None = None) -> go.Figure:
    """Per run: accuracy of the model linearised at t (solid), the network at t (dashed), full training
    (dotted line); one colour per run."""
    fig = go.Figure()
    for k, (a, label) in enumerate(zip(runs, labels, strict=True)):
        sw = a["switch"].astype(int)
        full = float(np.asarray(a["acc_full"]))
        fig.add_trace(go.Scatter(x=sw, y=a["acc_linear"], mode="lines+markers", name=f"{label} · linearised at t",
                                 legendgroup=label, line=dict(color=colour(k), width=3),
                                 hovertemplate=f"{label}<br>switch t=%{{x}}<br>acc at T=%{{y:.4f}}<extra></extra>"))
        fig.add_trace(go.Scatter(x=sw, y=a["acc_at_switch"], mode="lines+markers", name=f"{label} · network at t",
                                 legendgroup=label, line=dict(color=colour(k), dash="dash"),
                                 hovertemplate=f"{label}<br>t=%{{x}}<br>acc=%{{y:.4f}}<extra></extra>"))
        fig.add_trace(go.Scatter(x=[int(sw.min()), int(sw.max())] if len(sw) else [], y=[full, full], mode="lines",
                                 name=f"{label} · full training: {full:.3f}", legendgroup=label,
                                 line=dict(color=colour(k), dash="dot"),
                                 hovertemplate=f"{label}<br>full training: {full:.4f}<extra></extra>"))
    fig.update_xaxes(title="switch time t (iteration)")
    fig.update_yaxes(title="test accuracy", rangemode="tozero")
    return F.apply_layout(fig, title or "Linearised training versus full training: colour is the run",
                          legend=dict(orientation="h", y=-0.25), height=480)


def linear_table(runs: list[Arrays], labels: list[str]) -> Table:
    return _with_run([F.linear_table(a) for a in runs], labels)
