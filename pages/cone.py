"""Cone Effect: the empirical NTK along training, its distances, its velocity and its trajectory."""

import streamlit as st

import app_common as ui
from twophase_core.interfaces import figures as F

KIND = "cone"
view, cmd = ui.page_run(
    KIND, "Cone Effect",
    "The empirical neural tangent kernel H(theta_t) on a fixed set of inputs, at every checkpoint. "
    "Early it moves fast; after the transition it keeps moving, but inside a narrow cone seen from H(theta_0).",
)

a = view.result.arrays
ang = F.cone_angles(view.result)


APEX_LABELS = {"start": "H(θ₀) (default)", "window": "the window's first kernel"}
ui.from_query("cone_apex", "apex", str, F.DEFAULT_APEX, allowed=list(F.APEXES))
apex = st.radio("cone seen from", list(F.APEXES), horizontal=True, key="cone_apex",
                format_func=lambda x: APEX_LABELS[x],
                help="the apex the cone angle is measured from: H(θ₀), where training started (the paper's picture), "
                     "or the first kernel of the window; far from the window, any window looks narrow")
ui.to_query("apex", apex)
null = F.cone_against_null(view.result, apex)
c = st.columns(4)
cw, ew = ang["cone_window"], ang["early_window"]
c[0].metric(f"Cone angle, t in [{cw[0]}, {cw[1]}]" if cw else "Cone angle", F.fmt_angle(null.angle_deg),
            help=f"the widest angle, seen from the kernel at t = {null.apex_iteration}, between the kernels of the "
                 "window (from H(θ₀): the dashed rays of the trajectory below)")
c[1].metric("Random walk, same steps", f"{F.fmt_angle(null.null_mean_deg)}",
            help=f"the null: {null.null_draws} random walks with this trajectory's step lengths in random directions "
                 f"of the kernel's dimension ({null.dim:,}), seen from the same apex over the same window; 95 % of "
                 f"them between {F.fmt_angle(null.null_low_deg)} and {F.fmt_angle(null.null_high_deg)}. A kernel "
                 "that moves inside a cone has an angle well below it (docs/science.md, 'The cone against a null')")
c[2].metric(f"Early angle, t in [{ew[0]}, {ew[1]}]" if ew else "Early angle", F.fmt_angle(ang["early_angle_deg"]),
            help="the angle over the early checkpoints, seen from H(θ₀): wide while the dynamics are chaotic")
c[3].metric("Kernels", f"{len(a['iters'])}", help=f"checkpoints with a kernel; final test accuracy "
                                                    f"{float(a['test_acc'][-1]):.3f}")
ui.from_query("cone_log", "log", ui.parse_bool, False)
log = st.toggle("log scale for S", key="cone_log")
ui.to_query("log", "1" if log else "0")

left, right = ui.figure_columns(2, gap="medium")
with left:
    st.subheader("Kernel distance between checkpoints")
    ui.figure_block(F.cone_S_heatmap(a, log=log), F.cone_S_table(a), "S_heatmap", view, cmd, "S")
with right:
    st.subheader("Kernel trajectory")
    honest = F.honest_view(a)
    # the honest view of each run opened, until the user picks a view
    ui.from_query("cone_method", "proj", str, honest[0], allowed=list(F.PROJECTION_LABELS), follow=True)
    ui.from_query("cone_dim", "dim", int, honest[1], allowed=[2, 3], follow=True)
    p = st.columns(2)
    method = p[0].radio("projection", list(F.PROJECTION_LABELS), horizontal=True, key="cone_method",
                        format_func=lambda m: F.PROJECTION_LABELS[m], on_change=ui.chosen, args=("cone_method",))
    dim = p[1].radio("dimensions", [2, 3], horizontal=True, key="cone_dim", format_func=lambda d: f"{d}-D",
                     on_change=ui.chosen, args=("cone_dim",))
    ui.to_query("proj", method)
    ui.to_query("dim", str(dim))
    ui.figure_block(F.cone_projection(a, method, dim, rays=True), F.cone_projection_table(a, method, dim),
                    f"{method}{dim}", view, cmd, "proj", show_command=False)
    ends = F.cone_ray_ends(a)
    if ends is not None:
        its = a["iters"]
        true, drawn = F.ray_angle_kernel(a, *ends), F.ray_angle_drawn(a, method, dim, *ends)
        st.caption(
            f"What to see: each point is the kernel at one checkpoint (colour: iteration), the red diamond is "
            f"H(θ₀). The dashed rays go from H(θ₀) to the kernels at t = {int(its[ends[0]])} and t = "
            f"{int(its[ends[1]])}, the two of the cone window furthest apart: seen from where training started, "
            f"every kernel of the window stays within that wedge's angle of the others, although they keep moving. "
            f"The rays are {F.fmt_angle(true)} apart in kernel space, the cone angle; this {dim}-D "
            f"{F.PROJECTION_LABELS[method]} view draws them {F.fmt_angle(drawn)} apart. It opens in {honest[1]}-D "
            f"{F.PROJECTION_LABELS[honest[0]]}, the flat view that draws this angle most faithfully; a 3-D view adds "
            "its camera's own projection.")

left, right = ui.figure_columns(2, gap="medium")
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
