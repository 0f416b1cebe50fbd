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
    add_zero_row,
    apply_layout,
    cell_value,
    rgba,
    round_sig,
    seed_reduce,
    zero_marks,
    zeros_to_row,
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


def _geometric_band(v: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per t: the geometric mean over replicates with its 95% bootstrap band, and how many replicates are exactly 0.
    Where any is 0 the geometric mean is 0 (no band): a zero is shown as a zero, never at the estimator's floor."""
    from twophase_core.science.transition import log_values, replicate_band

    _, floor, _ = log_values(v)
    mean, lo, hi = replicate_band(v, n_boot=n_boot, seed=seed, log=True, floor=floor)
    zeros = np.sum(np.isfinite(v) & (v == 0), axis=0)
    hit = zeros > 0
    return np.where(hit, 0.0, mean), np.where(hit, np.nan, lo), np.where(hit, np.nan, hi), zeros


def transition_curve_table(groups: list[TransitionGroup], metric: str, n_boot: int = 1000, seed: int = 0) -> Table:
    """What `transition_figure` draws, per group and t0: replicates with a value, how many are exactly 0, the
    geometric mean over replicates with its 95% bootstrap band (mean 0 and no band where a replicate is 0), and
    the fitted sigmoid there (empty where no fit was made)."""
    from twophase_core.science.transition import sigmoid_curve

    t: Table = {"group": [], "t0": [], "replicates": [], "zeros": [], "mean": [], "band_low": [], "band_high": [],
                "fit": []}
    for g in groups:
        t0, v = _sorted_group(g, metric)
        mean, lo, hi, zeros = _geometric_band(v, n_boot, seed)
        tr = _transition_of(g, metric, n_boot, seed)
        fit = sigmoid_curve(tr, t0) if tr is not None else np.full(t0.shape, np.nan)  # None: none found
        for i, x in enumerate(t0):
            t["group"].append(str(g["label"]))
            t["t0"].append(int(x))
            t["replicates"].append(int(np.isfinite(v[:, i]).sum()))
            t["zeros"].append(int(zeros[i]))
            for col, arr in (("mean", mean), ("band_low", lo), ("band_high", hi), ("fit", fit)):
                t[col].append(cell_value(arr[i]))
    return t


def transition_summary_table(groups: list[TransitionGroup], metrics: tuple[str, ...] | None = None,
                             n_boot: int = 1000, seed: int = 0) -> Table:
    """t* and its 95% interval per group and metric, or why none was found (full precision: the export)."""
    t: Table = {"group": [], "metric": [], "found": [], "outcome": [], "t_star": [], "ci_low": [], "ci_high": [],
                "replicates": [], "points": [], "method": [], "reason": []}
    for g in groups:
        for metric in metrics or tuple(g["values"]):
            tr = _transition_of(g, metric, n_boot, seed)
            t["group"].append(str(g["label"]))
            t["metric"].append(metric)
            t["found"].append(bool(tr is not None and tr.found))
            t["outcome"].append("none" if tr is None else tr.outcome)  # ci_low/ci_high also hold an unresolved step
            for col in ("t_star", "ci_low", "ci_high"):
                t[col].append(None if tr is None or getattr(tr, col) is None else float(getattr(tr, col)))
            t["replicates"].append(None if tr is None else int(tr.replicates))
            t["points"].append(None if tr is None else int(tr.points))
            t["method"].append(None if tr is None else tr.method)
            t["reason"].append("not found" if tr is None else tr.reason)
    return t


def transition_summary_text(groups: list[TransitionGroup], metrics: tuple[str, ...] | None = None,
                            n_boot: int = 1000, seed: int = 0) -> Table:
    """The summary as a page shows it, every cell text: t* and its interval to 3 significant digits (a long float
    in a narrow column lost its leading digits), the outcome in words (beyond grid: try larger t0 and T; an
    unresolved step's interval is the two t0 it lies between), and the whole reason where none was found."""
    from twophase_core.science.transition import outcome_label

    full = transition_summary_table(groups, metrics, n_boot, seed)
    found = full["found"]
    return {
        "group": full["group"], "metric": full["metric"],
        "t*": [round_sig(v) if ok else "none" for v, ok in zip(full["t_star"], found, strict=True)],
        "outcome": [outcome_label({"outcome": o, "ci_low": lo, "ci_high": hi})
                    for o, lo, hi in zip(full["outcome"], full["ci_low"], full["ci_high"], strict=True)],
        "95% interval": [f"[{round_sig(lo)}, {round_sig(hi)}]" if lo is not None and hi is not None else ""
                         for lo, hi in zip(full["ci_low"], full["ci_high"], strict=True)],
        "replicates": ["" if n is None else str(n) for n in full["replicates"]],
        "points": ["" if n is None else str(n) for n in full["points"]],
        "why none was found": ["" if ok else str(r) for r, ok in zip(full["reason"], found, strict=True)],
    }


def too_few_points(group: TransitionGroup) -> str | None:
    """Plain words when a group's grid is too short for any estimate of t* (one run of the demo: 4 t0), else None,
    so a page says it once instead of a table of refusals."""
    from twophase_core.science.transition import RULES

    n = len(np.atleast_1d(np.asarray(group["t0"])))
    if n >= RULES.min_points:
        return None
    return (f"One run of {n} t0 cannot place t* with an interval: the fit needs at least {RULES.min_points} t0, and "
            "its interval needs replicates, the same run repeated with other data and init seeds.")


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


def _segments(mask: np.ndarray) -> list[np.ndarray]:
    """Indices of each run of consecutive True in `mask` (a band is drawn per run, never across a gap)."""
    idx = np.flatnonzero(mask)
    return [r for r in np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1) if r.size] if idx.size else []


def transition_figure(groups: list[TransitionGroup], metric: str, n_boot: int = 1000, seed: int = 0,
                      show_replicates: bool = True, title: str | None = None) -> go.Figure:
    """The metric at the final t1 versus t0, one colour per group: the geometric mean over replicates
    (the scale t* is defined on) with its 95% bootstrap band, the replicates as faint points, the fitted
    sigmoid dotted, and t* as a dashed vertical line over its shaded 95% interval. x is 1 + t0 on a log
    axis, labelled with t0. Exact zeros (and a geometric mean that a zero makes 0) are drawn on a row of their
    own under the log axis, labelled 0 (`add_zero_row`), never at the floor the estimator counts them at (a tenth
    of the smallest positive value, which their hover states); the fit is drawn down to the smallest positive
    value only, and not at all where it was refused and zeros shaped it. Groups: see the comment above."""
    from twophase_core.science.transition import log_values, sigmoid_curve

    fig = go.Figure()
    lows: list[float] = []
    highs: list[float] = []
    ticks: set[int] = set()
    drawn = []
    marks = []
    for k, g in enumerate(groups):
        colour = LINE_COLOURS[k % len(LINE_COLOURS)]
        label = str(g["label"])
        t0, v = _sorted_group(g, metric)
        _, floor, _ = log_values(v)
        mean, lo, hi, zeros = _geometric_band(v, n_boot, seed)
        ok = np.isfinite(mean)
        pos = ok & (mean > 0)
        x = 1.0 + t0
        ticks.update(int(a) for a in t0[ok])
        shown = np.where(v > 0, v, np.nan)
        lows.append(np.nanmin(shown) if np.isfinite(shown).any() else np.nan)
        highs.append(np.nanmax(shown) if np.isfinite(shown).any() else np.nan)
        for seg in _segments(pos):
            fig.add_trace(go.Scatter(
                x=np.concatenate([x[seg], x[seg][::-1]]), y=np.concatenate([hi[seg], lo[seg][::-1]]), fill="toself",
                fillcolor=rgba(colour, 0.18), line=dict(width=0), name=f"{label}: 95% band", legendgroup=label,
                showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=x[ok], y=np.where(pos, mean, np.nan)[ok], mode="lines+markers", name=label, legendgroup=label,
            line=dict(color=colour, width=2.5),
            customdata=np.stack([t0[ok], lo[ok], hi[ok]], axis=1),
            hovertemplate=(f"{label}<br>t0=%{{customdata[0]:.0f}}<br>{metric} (geometric mean)=%{{y:.3g}}"
                           "<br>95% band [%{customdata[1]:.3g}, %{customdata[2]:.3g}]<extra></extra>")))
        counted = f"<br>(t* counts a 0 as {floor:.2g}, a tenth of the smallest value)" if floor is not None else ""
        zero = ok & (mean == 0)
        if zero.any():
            marks.append(zero_marks(
                x[zero], colour, f"{label}: geometric mean 0", legendgroup=label,
                customdata=np.stack([t0[zero], zeros[zero], np.isfinite(v[:, zero]).sum(axis=0)], axis=1),
                hover=(f"{label}<br>t0=%{{customdata[0]:.0f}}<br>%{{customdata[1]:.0f}} of %{{customdata[2]:.0f}} "
                       f"replicates exactly 0: geometric mean 0{counted}<extra></extra>")))
        if show_replicates:
            rx, ry = np.broadcast_to(x, v.shape).ravel(), v.ravel()
            for keep, on_row in ((np.isfinite(ry) & (ry > 0), False), (ry == 0, True)):
                if not keep.any():
                    continue
                hover = (f"{label}, one replicate<br>t0=%{{customdata:.0f}}<br>{metric}="
                         + (f"0 exactly{counted}" if on_row else "%{y:.3g}") + "<extra></extra>")
                if on_row:
                    marks.append(zero_marks(rx[keep], colour, f"{label}: replicates exactly 0", hover, label,
                                            customdata=rx[keep] - 1.0, opacity=0.45, size=6))
                else:
                    fig.add_trace(go.Scatter(
                        x=rx[keep], y=ry[keep], mode="markers", name=f"{label}: replicates", legendgroup=label,
                        showlegend=False, marker=dict(color=colour, size=5, opacity=0.35),
                        customdata=(rx[keep] - 1.0), hovertemplate=hover))
        tr = _transition_of(g, metric, n_boot, seed)
        # a refused fit to data with zeros is a curve through the floor, which is no data: not drawn
        if tr is not None and tr.early is not None and ok.sum() >= 2 and (tr.found or not tr.zeros):
            xs = np.geomspace(x[ok][0], x[ok][-1], 120)
            fit = sigmoid_curve(tr, xs - 1.0)
            fig.add_trace(go.Scatter(
                x=xs, y=np.where(fit >= lows[-1], fit, np.nan), mode="lines", name=f"{label}: fit", legendgroup=label,
                showlegend=False, line=dict(color=colour, dash="dot", width=1.5), hoverinfo="skip"))
        drawn.append((label, colour, tr))
    finite_lo = [a for a in lows if np.isfinite(a) and a > 0]
    finite_hi = [a for a in highs if np.isfinite(a) and a > 0]
    y0 = min(finite_lo) / 2 if finite_lo else 1e-12
    y1 = max(finite_hi) * 2 if finite_hi else 1.0
    for label, colour, tr in drawn:  # after the data, so the y extent of the lines is known
        if tr is not None and not tr.found and tr.outcome != "none":
            _mark_outcome(fig, label, colour, tr, y0, y1)
        if tr is None or not tr.found or tr.t_star is None or tr.ci_low is None or tr.ci_high is None:
            continue  # (found: t* and its interval are there)
        a, b, c = 1.0 + tr.ci_low, 1.0 + tr.ci_high, 1.0 + tr.t_star
        text = f"{label}: t* = {round_sig(tr.t_star)} [{round_sig(tr.ci_low)}, {round_sig(tr.ci_high)}]"
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
                     title=f"{y_what} (geometric mean)")  # short: the zero row leaves the axis less height
    add_zero_row(fig, marks)
    name = TRANSITION_METRICS.get(metric, metric)
    default = (f"Where the kernel settles: {name} versus t" if metric == "S"
               else f"Where the chaos ends: {name} versus t0")
    return apply_layout(fig, title or default, legend_title_text="group")


def _mark_outcome(fig: go.Figure, label: str, colour: str, tr: Transition, y0: float, y1: float) -> None:
    """A refusal that says where to look: an unresolved step shades the two t0 it lies between (no t* line: its
    place between them is not known); beyond or before the grid is a legend entry with what to try."""
    from twophase_core.science.transition import outcome_label

    text = f"{label}: {outcome_label(tr)}"
    if tr.outcome == "unresolved" and tr.ci_low is not None and tr.ci_high is not None:
        a, b = 1.0 + tr.ci_low, 1.0 + tr.ci_high
        fig.add_trace(go.Scatter(
            x=[a, b, b, a, a], y=[y0, y0, y1, y1, y0], fill="toself", fillcolor=rgba(colour, 0.10),
            line=dict(color=colour, width=1, dash="dot"), mode="lines", name=text, legendgroup=label,
            hoverinfo="text", text=text))
    else:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color=colour, dash="dot"), name=text,
                                 legendgroup=label, hoverinfo="skip"))


def _phase_text(cell: dict | None) -> str:
    from twophase_core.science.transition import outcome_label

    if cell is None:
        return "not run yet"
    if cell.get("outcome") == "found":
        return str(round_sig(cell.get("t_star")))
    return outcome_label(cell).split(":")[0] if cell.get("outcome") != "unresolved" else \
        f"{round_sig(cell.get('ci_low'))}-{round_sig(cell.get('ci_high'))}?"


def phase_diagram_table(diagram: dict, metric: str) -> Table:
    """The phase diagram's cells, one row each: both settings, the outcome, t* and its interval, and the reason."""
    from twophase_core.science.transition import outcome_label

    x, y = diagram["x"], diagram["y"]
    t: Table = {x: [], y: [], "outcome": [], "t_star": [], "ci_low": [], "ci_high": [], "replicates": [], "reason": []}
    for j, vy in enumerate(diagram["y_values"]):
        for i, vx in enumerate(diagram["x_values"]):
            cell = diagram["cells"].get(metric, [[None] * len(diagram["x_values"])] * len(diagram["y_values"]))[j][i]
            t[x].append(str(vx))
            t[y].append(str(vy))
            t["outcome"].append("not run yet" if cell is None else outcome_label(cell))
            for col in ("t_star", "ci_low", "ci_high", "replicates", "reason"):
                t[col].append(None if cell is None else cell.get(col))
    return t


def phase_diagram_figure(diagram: dict, metric: str, title: str | None = None) -> go.Figure:
    """t* as a heatmap over the two settings a sweep varies (`experiments.sweep.phase_diagram`): the colour is t* on
    a log scale, the interval on hover, and a cell without a t* (none, beyond or before the grid, an unresolved
    step, not run yet) is left uncoloured and says which in words, so no refusal reads as a value."""
    x, y = diagram["x"], diagram["y"]
    xs, ys = [str(v) for v in diagram["x_values"]], [str(v) for v in diagram["y_values"]]
    cells = diagram["cells"].get(metric) or [[None] * len(xs) for _ in ys]
    z = np.full((len(ys), len(xs)), np.nan)
    text = [["" for _ in xs] for _ in ys]
    hover = [["" for _ in xs] for _ in ys]
    for j in range(len(ys)):
        for i in range(len(xs)):
            c = cells[j][i]
            text[j][i] = _phase_text(c)
            if c is not None and c.get("outcome") == "found" and c.get("t_star") is not None:
                z[j, i] = math.log10(1.0 + float(c["t_star"]))
                hover[j][i] = (f"t* = {round_sig(c['t_star'])} [{round_sig(c['ci_low'])}, {round_sig(c['ci_high'])}]"
                               f"<br>{c.get('replicates')} replicates")
            else:
                hover[j][i] = "no t*" if c is None else str(c.get("reason") or c.get("outcome"))
    finite = z[np.isfinite(z)]
    ticks = np.unique(np.round(finite, 3)) if finite.size else np.array([])
    fig = go.Figure(go.Heatmap(
        z=z, x=xs, y=ys, text=text, texttemplate="%{text}", customdata=hover, colorscale="Viridis",
        hovertemplate=f"{x}=%{{x}}<br>{y}=%{{y}}<br>%{{customdata}}<extra></extra>", xgap=2, ygap=2,
        colorbar=dict(title="t*", tickvals=ticks.tolist(), ticktext=[round_sig(10**v - 1) for v in ticks])))
    fig.update_xaxes(title=x, type="category")
    fig.update_yaxes(title=y, type="category")
    name = TRANSITION_METRICS.get(metric, metric)
    return apply_layout(fig, title or f"Phase diagram: t* of {name} over {x} and {y} (uncoloured: no t*, and why)")


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
    cannot draw a band edge at 0, so there the band stops, and a mean of exactly 0 goes on the zero row.
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
    if log:
        zeros_to_row(fig, "t1")
    name = METRICS.get(metric, metric)
    return apply_layout(fig, title or f"{name} versus t1, one line per t0, 95% band over replicates",
                        legend_title_text="perturbed at")


def chaos_transition_group(arrays: dict[str, np.ndarray], label: str = "this run") -> TransitionGroup:
    """One chaos result as a transition group: each metric at its final t1, one row per perturbation seed
    (the only replicates a single run has; a sweep over data and init seeds gives the real ones)."""
    return {"label": label, "t0": np.asarray(arrays["t0"]),
            "values": {m: np.asarray(arrays[m], dtype=float)[:, :, -1] for m in METRICS}}
