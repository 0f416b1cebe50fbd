"""Cone Effect figures: kernel distances, reference and velocity curves, the projected trajectory
with the cone drawn, test accuracy."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

from twophase_core.interfaces.figures.base import (
    LINE_COLOURS,
    PROJECTION_LABELS,
    Table,
    apply_layout,
    cell_value,
    log_colour,
    zeros_to_row,
)
from twophase_core.science.cone import APEXES, DEFAULT_APEX, ConeReport  # noqa: F401 - APEXES: for the page

if TYPE_CHECKING:
    from twophase_core.experiments.result import Result

# ---------------------------------------------------------------------------------------------
# Cone: the empirical NTK along training


def cone_S_table(arrays: dict[str, np.ndarray]) -> Table:
    t: Table = {"t_i": [], "t_j": [], "S": []}
    its = arrays["iters"]
    for a, ti in enumerate(its):
        for b, tj in enumerate(its):
            t["t_i"].append(int(ti))
            t["t_j"].append(int(tj))
            t["S"].append(cell_value(arrays["S"][a, b]))
    return t


def cone_S_heatmap(arrays: dict[str, np.ndarray], log: bool = False, title: str | None = None) -> go.Figure:
    """S[i, j] = kernel distance between the checkpoints t_i and t_j (paper Fig. 4)."""
    S = np.asarray(arrays["S"], dtype=float)
    labels = [str(int(v)) for v in arrays["iters"]]
    colour = S
    colorbar: dict[str, object] = dict(title="S", exponentformat="e")
    if log:
        colour, tv, tt = log_colour(S)
        colorbar.update(tickvals=tv, ticktext=tt, title="S (log)")
    fig = go.Figure(go.Heatmap(
        z=colour, x=labels, y=labels, customdata=S, colorscale="Viridis", colorbar=colorbar,
        hovertemplate="t_i=%{y}<br>t_j=%{x}<br>S=%{customdata:.4g}<extra></extra>", hoverongaps=False,
    ))
    fig.update_xaxes(title="checkpoint t_j (iteration)", type="category")
    fig.update_yaxes(title="checkpoint t_i (iteration)", type="category", autorange="reversed")
    return apply_layout(fig, title or "Kernel distance S(H(theta_ti), H(theta_tj))", height=520)


def cone_ref_table(arrays: dict[str, np.ndarray]) -> Table:
    t: Table = {"reference": [], "t": [], "S": []}
    for r, tau in enumerate(arrays["references"]):
        for k, it in enumerate(arrays["iters"]):
            t["reference"].append(int(tau))
            t["t"].append(int(it))
            t["S"].append(cell_value(arrays["ref_curves"][r, k]))
    return t


def cone_ref_curves(arrays: dict[str, np.ndarray], log: bool = False, title: str | None = None) -> go.Figure:
    """S(H(theta_t), H(theta_tau)) versus t, one line per reference tau (paper Fig. 5a)."""
    fig = go.Figure()
    its = arrays["iters"].astype(int)
    for r, tau in enumerate(arrays["references"]):
        fig.add_trace(go.Scatter(x=its, y=arrays["ref_curves"][r], mode="lines+markers", name=f"tau={int(tau)}",
                                 line=dict(color=LINE_COLOURS[r % len(LINE_COLOURS)]),
                                 hovertemplate=f"tau={int(tau)}<br>t=%{{x}}<br>S=%{{y:.4g}}<extra></extra>"))
    fig.update_xaxes(title="t (iteration)")
    fig.update_yaxes(title="S(H(theta_t), H(theta_tau))", type="log" if log else "linear")
    if log:
        zeros_to_row(fig, "t")  # S(H_tau, H_tau) = 0 at t = tau
    return apply_layout(fig, title or "Kernel distance to a reference checkpoint tau", legend_title_text="reference")


def cone_neigh_table(arrays: dict[str, np.ndarray]) -> Table:
    t: Table = {"dt": [], "t": [], "S": []}
    for dt in arrays["dts"]:
        for it, s in zip(arrays[f"neigh_t_{int(dt)}"], arrays[f"neigh_s_{int(dt)}"], strict=True):
            t["dt"].append(int(dt))
            t["t"].append(int(it))
            t["S"].append(cell_value(s))
    return t


def cone_neighbours(arrays: dict[str, np.ndarray], log: bool = False, title: str | None = None) -> go.Figure:
    """S(H(theta_t), H(theta_t+dt)) versus t, one line per dt: the kernel velocity (paper Fig. 5b)."""
    fig = go.Figure()
    for k, dt in enumerate(arrays["dts"]):
        dt = int(dt)
        fig.add_trace(go.Scatter(x=arrays[f"neigh_t_{dt}"].astype(int), y=arrays[f"neigh_s_{dt}"],
                                 mode="lines+markers", name=f"dt={dt}",
                                 line=dict(color=LINE_COLOURS[k % len(LINE_COLOURS)]),
                                 hovertemplate=f"dt={dt}<br>t=%{{x}}<br>S=%{{y:.4g}}<extra></extra>"))
    fig.update_xaxes(title="t (iteration)")
    fig.update_yaxes(title="S(H(theta_t), H(theta_t+dt))", type="log" if log else "linear")
    if log:
        zeros_to_row(fig, "t")
    return apply_layout(fig, title or "Kernel velocity: distance between neighbouring checkpoints",
                        legend_title_text="step")


def cone_projection_table(arrays: dict[str, np.ndarray], method: str, dim: int) -> Table:
    xyz = np.asarray(arrays[f"{method}{dim}"], dtype=float)
    t: Table = {"t": [int(v) for v in arrays["iters"]]}
    for d in range(dim):
        t[f"{method}{d + 1}"] = [float(v) for v in xyz[:, d]]
    return t


def _iteration_colorbar(its: np.ndarray) -> dict[str, object]:
    """Colour by checkpoint index (checkpoints are dense early), labelled with iterations."""
    m = len(its)
    idx = sorted({0, m - 1, *np.linspace(0, m - 1, min(m, 6)).round().astype(int).tolist()})
    return dict(title="iteration", tickvals=idx, ticktext=[str(int(its[i])) for i in idx])


def cone_ray_ends(arrays: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """Indices of the two kernels of the cone window (after 0) whose increments from H(theta_0) are furthest apart:
    the pair that subtends the cone angle (the result's cone_angle_deg), so the rays drawn open by that angle.
    Increments of zero length have no direction and are skipped, as the cone angle skips them."""
    its = np.asarray(arrays["iters"]).astype(int)
    win = arrays.get("cone_window")
    if win is None or len(its) < 3:
        return None
    inside = [k for k, t in enumerate(its) if int(win[0]) <= t <= int(win[1]) and k != 0]
    g = np.asarray(arrays["G"], dtype=float)
    keep = [k for k in inside if g[k, k] - g[k, 0] - g[0, k] + 1.0 > 1e-15]  # |u_k - u_0|^2, as ray_angle_kernel
    pairs = [(i, j) for n, i in enumerate(keep) for j in keep[n + 1:]]
    return max(pairs, key=lambda p: ray_angle_kernel(arrays, *p)) if pairs else None


def fmt_angle(deg: float | None) -> str:
    """An angle as every view writes it (metric, rays, caption, comparison): one value, one rounding."""
    return "n/a" if deg is None else f"{deg:.1f}°"


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

    rays=True draws the cone: a ray from H(theta_0) to each kernel of the widest pair of the cone window
    (`cone_ray_ends`), labelled with the angle between them measured in kernel space, the cone angle (the drawn
    angle of a projection can differ; the hover says by how much)."""
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
        fig.add_trace(go.Scatter(x=[xyz[0, 0]], y=[xyz[0, 1]], mode="markers",
                                 marker=dict(color="#d62728", size=14, symbol="diamond"), name="H(theta_0)",
                                 customdata=[its[0]], hovertemplate="H(θ₀), t=%{customdata}<extra></extra>"))
        # its label as an annotation: a marker's text is clipped by the plot area, and H(θ₀) often sits at its edge
        fig.add_annotation(x=xyz[0, 0], y=xyz[0, 1], text="H(θ₀)", showarrow=False, yshift=16, name="H(theta_0)")
        fig.update_xaxes(title=f"{lab} 1")
        fig.update_yaxes(title=f"{lab} 2", scaleanchor="x", scaleratio=1)
    ends = cone_ray_ends(arrays) if rays else None
    if ends is not None:
        _draw_rays(fig, arrays, xyz, its, method, dim, ends)
    return apply_layout(fig, title or f"Kernels along training, {lab} {dim}-D", height=560, showlegend=False)


RAY_COLOUR = "#d62728"


def _draw_rays(fig: go.Figure, arrays: dict[str, np.ndarray], xyz: np.ndarray, its: np.ndarray, method: str, dim: int,
               ends: tuple[int, int]) -> None:
    """Two rays from H(theta_0) to the widest pair of the cone window, and the angle between them as a label."""
    a, b = ends
    true, drawn = ray_angle_kernel(arrays, a, b), ray_angle_drawn(arrays, method, dim, a, b)
    label = f"{fmt_angle(true)} (t={int(its[a])} and {int(its[b])})"
    hover = (f"ray from H(θ₀) to H(θ_t), t=%{{customdata}}<br>angle between the rays: {fmt_angle(true)} in kernel "
             f"space, {fmt_angle(drawn)} as drawn<extra></extra>")
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
    return {"t": [int(v) for v in arrays["iters"]], "test_acc": [cell_value(v) for v in arrays["test_acc"]]}


def cone_test_acc(arrays: dict[str, np.ndarray], title: str | None = None) -> go.Figure:
    fig = go.Figure(go.Scatter(x=arrays["iters"].astype(int), y=arrays["test_acc"], mode="lines+markers",
                               name="test accuracy", hovertemplate="t=%{x}<br>acc=%{y:.4f}<extra></extra>"))
    fig.update_xaxes(title="t (iteration)")
    fig.update_yaxes(title="test accuracy", rangemode="tozero")
    return apply_layout(fig, title or "Test accuracy along training", height=320)


def cone_against_null(result: Result, apex: str = DEFAULT_APEX) -> ConeReport:
    """The cone angle seen from `apex` ("start": H(theta_0), the default; "window": the window's first kernel) and
    the random-walk null beside it (science/cone.py), from the stored G."""
    from twophase_core.experiments.cone import cone_report_of

    return cone_report_of(result, apex)


def cone_angles(result: Result) -> dict[str, Any]:
    """The cone angles (degrees) and their windows, for showing as numbers."""
    a, m = result.arrays, result.meta
    cw = [int(v) for v in a["cone_window"]] if "cone_window" in a else None
    ew = [int(v) for v in a["early_window"]] if "early_window" in a else None
    return {"cone_angle_deg": m.get("cone_angle_deg"), "cone_window": cw,
            "early_angle_deg": m.get("early_angle_deg"), "early_window": ew}
