"""Transition figures: each metric at the final t1 versus t0 over replicates, t* with its interval,
and cross-sections with their band."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go

from twophase_core.experiments.sweep import TransitionGroup
from twophase_core.interfaces.figures.base import (
    LINE_COLOURS,
    METRICS,
    Table,
    apply_layout,
    cell_value,
    rgba,
    seed_reduce,
)

# ---------------------------------------------------------------------------------------------
# The transition: each metric at the final t1 versus t0, over replicates (docs/transition.md)
#
# A group is one setting with its replicates (`TransitionGroup`), as a plain dict the sweep can build from its JSON:
#   {"label": "lr=0.1", "t0": (n,) iterations, "values": {"C": (R, n), ...}, "transitions": {"C": ..., ...}}

if TYPE_CHECKING:
    from twophase_core.science.transition import Transition

TRANSITION_METRICS = {**METRICS, "S": "kernel velocity S(theta_t, theta_t+dt)"}
_X_NOTE = "log scale, drawn at 1 + t so that t = 0 fits"


def _transition_of(group: TransitionGroup, metric: str, n_boot: int, seed: int) -> Transition | None:
    """The group's Transition for `metric`: given (object or dict), None (none found), or estimated."""
    from twophase_core.science.transition import Transition, estimate_transition

    given = group.get("transitions", {})
    if metric in given:
        tr = given[metric]
        return Transition.from_dict(tr) if isinstance(tr, dict) else tr
    return estimate_transition(group["t0"], group["values"][metric], n_boot=n_boot, seed=seed)


def _sorted_group(group: TransitionGroup, metric: str) -> tuple[np.ndarray, np.ndarray]:
    t0 = np.asarray(group["t0"], dtype=float)
    v = np.atleast_2d(np.asarray(group["values"][metric], dtype=float))
    order = np.argsort(t0)
    return t0[order], v[:, order]


def transition_curve_table(groups: list[TransitionGroup], metric: str, n_boot: int = 1000, seed: int = 0) -> Table:
    """What `transition_figure` draws, per group and t0: replicates with a value, the geometric mean over
    replicates with its 95% bootstrap band (exact zeros at the estimator's floor, as it fits them), and
    the fitted sigmoid there (empty where no fit was made)."""
    from twophase_core.science.transition import log_values, replicate_band, sigmoid_curve

    t: Table = {"group": [], "t0": [], "replicates": [], "mean": [], "band_low": [], "band_high": [], "fit": []}
    for g in groups:
        t0, v = _sorted_group(g, metric)
        _, floor, _ = log_values(v)
        mean, lo, hi = replicate_band(v, n_boot=n_boot, seed=seed, log=True, floor=floor)
        tr = _transition_of(g, metric, n_boot, seed)
        fit = sigmoid_curve(tr, t0) if tr is not None else np.full(t0.shape, np.nan)  # None: none found
        for i, x in enumerate(t0):
            t["group"].append(str(g["label"]))
            t["t0"].append(int(x))
            t["replicates"].append(int(np.isfinite(v[:, i]).sum()))
            for col, arr in (("mean", mean), ("band_low", lo), ("band_high", hi), ("fit", fit)):
                t[col].append(cell_value(arr[i]))
    return t


def transition_summary_table(groups: list[TransitionGroup], metrics: tuple[str, ...] | None = None,
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


def transition_figure(groups: list[TransitionGroup], metric: str, n_boot: int = 1000, seed: int = 0,
                      show_replicates: bool = True, title: str | None = None) -> go.Figure:
    """The metric at the final t1 versus t0, one colour per group: the geometric mean over replicates
    (the scale t* is defined on) with its 95% bootstrap band, the replicates as faint points, the fitted
    sigmoid dotted, and t* as a dashed vertical line over its shaded 95% interval. x is 1 + t0 on a log
    axis, labelled with t0; exact zeros sit at the estimator's floor (a tenth of the smallest positive
    value), the only place a log axis can show them. Groups: see the comment above."""
    from twophase_core.science.transition import log_values, replicate_band, sigmoid_curve

    fig = go.Figure()
    lows: list[float] = []
    highs: list[float] = []
    ticks: set[int] = set()
    drawn = []
    for k, g in enumerate(groups):
        colour = LINE_COLOURS[k % len(LINE_COLOURS)]
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
            fillcolor=rgba(colour, 0.18), line=dict(width=0), name=f"{label}: 95% band", legendgroup=label,
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
        if tr is None or not tr.found or tr.t_star is None or tr.ci_low is None or tr.ci_high is None:
            continue  # (found: t* and its interval are there)
        a, b, c = 1.0 + tr.ci_low, 1.0 + tr.ci_high, 1.0 + tr.t_star
        text = f"{label}: t* = {tr.t_star:.4g} [{tr.ci_low:.4g}, {tr.ci_high:.4g}]"
        fig.add_trace(go.Scatter(
            x=[a, b, b, a, a], y=[y0, y0, y1, y1, y0], fill="toself", fillcolor=rgba(colour, 0.12),
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
    return apply_layout(fig, title or default, legend_title_text="group")


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
    from twophase_core.science.transition import replicate_band

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
                    t[col].append(cell_value(arr[i, j]))
    return t


def chaos_sections_band(arrays: dict[str, np.ndarray], metric: str, log: bool = False, n_boot: int = 1000,
                        seed: int = 0, title: str | None = None) -> go.Figure:
    """The metric versus t1, one line per t0: the mean over replicates with its 95% bootstrap band.

    arrays: {"t0": (n0,), "t1": (n1,), metric: (replicates, n0, n1)}, NaN where t1 <= t0 (see
    `stack_replicates`). The band is the percentile bootstrap of the mean over replicates; a log axis
    cannot draw a band edge at 0, so there the band stops.
    """
    from twophase_core.science.transition import replicate_band

    v = np.asarray(arrays[metric], dtype=float)
    mean, lo, hi = replicate_band(v, n_boot=n_boot, seed=seed)
    t1 = np.asarray(arrays["t1"]).astype(int)
    fig = go.Figure()
    for i, t0 in enumerate(arrays["t0"]):
        ok = np.isfinite(mean[i])
        if not ok.any():
            continue
        colour = LINE_COLOURS[i % len(LINE_COLOURS)]
        name = f"t0={int(t0)}"
        fig.add_trace(go.Scatter(
            x=np.concatenate([t1[ok], t1[ok][::-1]]), y=np.concatenate([hi[i][ok], lo[i][ok][::-1]]), fill="toself",
            fillcolor=rgba(colour, 0.18), line=dict(width=0), name=f"{name}: 95% band", legendgroup=name,
            showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=t1[ok], y=mean[i][ok], mode="lines+markers", name=name, legendgroup=name, line=dict(color=colour),
            customdata=np.stack([lo[i][ok], hi[i][ok]], axis=1),
            hovertemplate=(f"{name}<br>t1=%{{x}}<br>{metric} (mean)=%{{y:.4g}}"
                           "<br>95% band [%{customdata[0]:.3g}, %{customdata[1]:.3g}]<extra></extra>")))
    fig.update_xaxes(title="t1 (iteration)")
    fig.update_yaxes(title=f"{metric} (mean over {v.shape[0]} replicates)", type="log" if log else "linear",
                     exponentformat="e")
    name = METRICS.get(metric, metric)
    return apply_layout(fig, title or f"{name} versus t1, one line per t0, 95% band over replicates",
                        legend_title_text="perturbed at")


def chaos_transition_group(arrays: dict[str, np.ndarray], label: str = "this run") -> TransitionGroup:
    """One chaos result as a transition group: each metric at its final t1, one row per perturbation seed
    (the only replicates a single run has; a sweep over data and init seeds gives the real ones)."""
    return {"label": label, "t0": np.asarray(arrays["t0"]),
            "values": {m: np.asarray(arrays[m], dtype=float)[:, :, -1] for m in METRICS}}
