"""Cone Effect: the empirical NTK along training, its distances, its velocity and its trajectory."""

import streamlit as st

import app_common as ui
from twophase_core import figures as F

KIND = "cone"
view, cmd = ui.page_run(
    KIND, "Cone Effect",
    "The empirical neural tangent kernel H(theta_t) on a fixed set of inputs, at every checkpoint. "
    "Early it moves fast; after the transition it keeps moving, but inside a narrow cone seen from H(theta_0).",
)

a = view.result.arrays
ang = F.cone_angles(view.result)


def _deg(v):
    return "n/a" if v is None else f"{v:.1f}°"


c = st.columns(4)
cw, ew = ang["cone_window"], ang["early_window"]
c[0].metric(f"Cone angle, t in [{cw[0]}, {cw[1]}]" if cw else "Cone angle", _deg(ang["cone_angle_deg"]),
            help="the angle subtended, seen from H(theta_0), by the kernel increments H_t - H_tau in the window")
c[1].metric(f"Early angle, t in [{ew[0]}, {ew[1]}]" if ew else "Early angle", _deg(ang["early_angle_deg"]),
            help="the same angle over the early checkpoints: wide while the dynamics are chaotic")
c[2].metric("Kernels", f"{len(a['iters'])}", help="checkpoints with a kernel")
c[3].metric("Final test accuracy", f"{float(a['test_acc'][-1]):.3f}")
log = st.toggle("log scale for S", value=False, key="cone_log")

left, right = st.columns(2, gap="medium")
with left:
    st.subheader("Kernel distance between checkpoints")
    ui.figure_block(F.cone_S_heatmap(a, log=log), F.cone_S_table(a), "S_heatmap", view, cmd, "S")
with right:
    st.subheader("Kernel trajectory")
    p = st.columns(2)
    method = p[0].radio("projection", ["pca", "mds"], horizontal=True, key="cone_method",
                        format_func=lambda m: F.PROJECTION_LABELS[m])
    dim = p[1].radio("dimensions", [3, 2], horizontal=True, key="cone_dim", format_func=lambda d: f"{d}-D")
    ui.figure_block(F.cone_projection(a, method, dim), F.cone_projection_table(a, method, dim),
                    f"{method}{dim}", view, cmd, "proj", show_command=False)

left, right = st.columns(2, gap="medium")
with left:
    st.subheader("Distance to a reference checkpoint")
    ui.figure_block(F.cone_ref_curves(a, log=log), F.cone_ref_table(a), "reference_curves", view, cmd, "ref",
                    show_command=False)
with right:
    st.subheader("Kernel velocity")
    ui.figure_block(F.cone_neighbours(a, log=log), F.cone_neigh_table(a), "neighbour_curves", view, cmd, "neigh",
                    show_command=False)

st.subheader("Test accuracy along training")
ui.figure_block(F.cone_test_acc(a), F.cone_acc_table(a), "test_acc", view, cmd, "acc")

with st.expander("Details: config and timings"):
    st.write({k: v for k, v in view.result.meta.items() if k != "subset"})
    st.json(view.result.config, expanded=False)
