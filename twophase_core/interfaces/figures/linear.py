"""Linearised-training figures: accuracy of the Taylor model versus the switch time."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from twophase_core.interfaces.figures.base import LINE_COLOURS, Table, apply_layout, cell_value

# ---------------------------------------------------------------------------------------------
# Linearised training


def linear_table(arrays: dict[str, np.ndarray]) -> Table:
    full = float(np.asarray(arrays["acc_full"]))
    return {"switch": [int(v) for v in arrays["switch"]], "acc_linear": [cell_value(v) for v in arrays["acc_linear"]],
            "acc_at_switch": [cell_value(v) for v in arrays["acc_at_switch"]],
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
                             line=dict(color=LINE_COLOURS[0], width=3),
                             hovertemplate="switch t=%{x}<br>acc at T=%{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=sw, y=arrays["acc_at_switch"], mode="lines+markers",
                             name="network at t (no more training)",
                             line=dict(color=LINE_COLOURS[1], dash="dash"),
                             hovertemplate="t=%{x}<br>acc=%{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[int(sw.min()), int(sw.max())] if len(sw) else [], y=[full, full], mode="lines",
                             name=f"full training to T: {full:.3f}", line=dict(color="#444", dash="dot"),
                             hovertemplate=f"full training: {full:.4f}<extra></extra>"))
    fig.update_xaxes(title="switch time t (iteration)")
    fig.update_yaxes(title="test accuracy", rangemode="tozero")
    return apply_layout(fig, title or "Linearised training from theta_t versus full training",
                   legend=dict(orientation="h", y=-0.25))
