"""The base run's training curve: its loss at every step and its test accuracy at its checkpoints.

Drawn live while a job runs (from partial results, about once a second) and kept with the result."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from twophase_core.interfaces.figures.base import LINE_COLOURS, Table, apply_layout, cell_value


def has_training_curve(arrays: dict[str, np.ndarray]) -> bool:
    return "train_t" in arrays and (len(arrays["train_t"]) > 0 or len(arrays.get("acc_t", ())) > 0)


def training_curve_table(arrays: dict[str, np.ndarray]) -> Table:
    """One row per iteration that has a training loss or a test accuracy (the other cell empty)."""
    loss = dict(zip(np.asarray(arrays["train_t"]).tolist(), np.asarray(arrays["train_loss"]).tolist(), strict=True))
    acc = dict(zip(np.asarray(arrays["acc_t"]).tolist(), np.asarray(arrays["acc"]).tolist(), strict=True))
    ts = sorted(set(loss) | set(acc))
    return {"iteration": [int(t) for t in ts],
            "train_loss": [cell_value(loss[t]) if t in loss else None for t in ts],
            "test_acc": [cell_value(acc[t]) if t in acc else None for t in ts]}


def training_curve(arrays: dict[str, np.ndarray], iterations: int | None = None, title: str | None = None,
                   smooth: int = 20) -> go.Figure:
    """Training loss (every step, faint, with a running mean over `smooth` steps) on the left axis and
    test accuracy at the base run's checkpoints on the right, against the iteration."""
    t = np.asarray(arrays["train_t"])
    loss = np.asarray(arrays["train_loss"], dtype=float)
    fig = go.Figure()
    if len(t):
        fig.add_trace(go.Scatter(x=t, y=loss, mode="lines", name="training loss (each step)",
                                 line=dict(color=LINE_COLOURS[0], width=1), opacity=0.35))
        if len(t) > smooth:
            kernel = np.ones(smooth) / smooth
            fig.add_trace(go.Scatter(x=t[smooth - 1:], y=np.convolve(loss, kernel, mode="valid"), mode="lines",
                                     name=f"training loss (mean of {smooth} steps)",
                                     line=dict(color=LINE_COLOURS[0], width=2.5)))
    acc_t = np.asarray(arrays["acc_t"])
    if len(acc_t):
        fig.add_trace(go.Scatter(x=acc_t, y=np.asarray(arrays["acc"], dtype=float), mode="lines+markers",
                                 name="test accuracy (checkpoints)", yaxis="y2",
                                 line=dict(color=LINE_COLOURS[1], width=2)))
    last = int(max([*t.tolist(), *acc_t.tolist(), 0]))
    fig.update_layout(yaxis=dict(title="training loss", rangemode="tozero"),
                      yaxis2=dict(title="test accuracy", overlaying="y", side="right", range=[0, 1],
                                  tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1.0], tickformat=".1f", showgrid=False),
                      legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(title="iteration", range=[0, max(iterations or 0, last, 1)])
    return apply_layout(fig, title or f"The base run: training loss and test accuracy (up to iteration {last})")


def live_stage(kind: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bool:
    """Whether a partial result has nothing but the training curve yet (its figures would be empty)."""
    if kind == "chaos":
        return int(meta.get("units_done", 0)) == 0 and not np.isfinite(np.asarray(arrays.get("C", np.nan))).any()
    if kind == "cone":
        return "S" not in arrays
    return not np.isfinite(np.asarray(arrays.get("acc_linear", np.nan), dtype=float)).any()
