"""Chaos Effect: C, B and D over (t0, t1), cross-sections, and the loss along one interpolation path."""

import streamlit as st

import app_common as ui
from twophase_core.experiments.sweep import load_sweep
from twophase_core.interfaces import figures as F
from twophase_core.interfaces.gallery import demo_sweep
from twophase_core.settings import config as conf

KIND = "chaos"
view, cmd = ui.page_run(
    KIND, "Chaos Effect",
    "Perturb a copy of the network at iteration t0, train both copies on the same minibatches, "
    "compare them at t1. Before the transition the copies end up apart; after it they stay together.",
)

a = view.result.arrays
if view.partial:
    st.info(f"Partial result: {view.result.meta.get('units_done', '?')} of {len(a['t0'])} rows of t0 complete; "
            "cells fill in as they finish. The cross-sections, where the chaos ends and the interpolation path "
            "come when every row is done.", icon=":material/hourglass_top:")

c = st.columns([2, 2, 3])
ui.from_query("chaos_log", "log", ui.parse_bool, True)
log = c[0].toggle("log colour / log axis", key="chaos_log",
                  help="C spans many orders of magnitude; hover always shows the value")
ui.to_query("log", "1" if log else "0")
seed = None
if len(a["seeds"]) > 1:
    seeds = ["mean"] + [str(k) for k in range(len(a["seeds"]))]
    ui.from_query("chaos_seed", "seed", str, "mean", allowed=seeds)
    pick = c[1].selectbox("perturbation seed", seeds, key="chaos_seed",
                          format_func=lambda s: "mean over seeds" if s == "mean" else f"seed {int(a['seeds'][int(s)])}")
    ui.to_query("seed", pick)
    seed = None if pick == "mean" else int(pick)

cells = F.chaos_cells(a)
b = F.seed_reduce(a["B"])
by_label = {f"{t0},{t1}": (i, j) for i, j, t0, t1 in cells}
if cells:  # the cell of the path plot: from a click on a heatmap (read before they are drawn), the link, or B
    point = ui.new_click({m: ui.chart_state(f"heat_{m}") for m in F.METRICS}, f"chaos_clicks_{view.run_id}")
    clicked = F.chaos_cell_at(a, point) if point is not None else None
    if clicked is not None:
        st.session_state["chaos_cell"] = f"{int(a['t0'][clicked[0]])},{int(a['t1'][clicked[1]])}"
        ui.chosen("chaos_cell")
    # until a click, the link or the user picks one: the largest barrier of the cells computed so far
    ui.from_query("chaos_cell", "cell", lambda s: s.replace(" ", ""), max(by_label, key=lambda s: b[by_label[s]]),
                  allowed=list(by_label), follow=True)
framed = tuple(int(v) for v in st.session_state["chaos_cell"].split(",")) if cells else None
if view.partial and cells:  # (no cell picker yet: the link still names the framed cell)
    ui.to_query("cell", st.session_state["chaos_cell"])

st.subheader("Heatmaps over (t0, t1)")
st.caption("Click a cell to draw the loss along its interpolation path at the bottom of the page (framed in red).")
cols = ui.figure_columns(3)  # (presentation mode: one below the other)
for col, m in zip(cols, F.METRICS, strict=True):
    with col:
        fig = F.chaos_heatmap(a, m, log=log, seed=seed, title={"C": "C: parameter distance", "B": "B: loss barrier",
                                                                 "D": "D: disagreement"}[m],
                              clickable=not view.partial, selected=framed)
        if view.partial:  # the figure alone, redrawn at each new cell: exports and clicks come with the whole result
            ui.show_figure(fig, f"fig_heat_{m}_partial")
        else:
            ui.figure_block(fig, F.chaos_heatmap_table(a, m, seed), f"heatmap_{m}", view, cmd, f"heat_{m}",
                            show_command=m == "C", on_select=True)
if view.partial:  # a rerun per cell stays cheap for a slow browser: the first cells show within seconds of Run
    ui.command_block(cmd)
    st.stop()

st.subheader("Cross-sections: the metric versus t1, one line per t0")
ui.from_query("chaos_section_metric", "metric", str, "C", allowed=list(F.METRICS))
metric = st.radio("metric", list(F.METRICS), horizontal=True, key="chaos_section_metric",
                  format_func=lambda m: F.METRICS[m])
ui.to_query("metric", metric)
if len(a["seeds"]) > 1 and seed is None:  # several perturbation seeds: the mean with its 95% band
    ui.figure_block(F.chaos_sections_band(a, metric, log=log), F.chaos_sections_band_table(a, metric),
                    f"sections_{metric}", view, cmd, "sections")
else:
    ui.figure_block(F.chaos_sections(a, metric, log=log, seed=seed), F.chaos_sections_table(a, metric, seed),
                    f"sections_{metric}", view, cmd, "sections")

st.subheader("Where the chaos ends: each metric at the final t1 versus t0")
st.caption("t* is where the metric falls halfway between its early and late levels on a log scale, with a 95% "
           "interval from the bootstrap over replicates. One run has only its perturbation seeds as replicates; "
           "a sweep over data and init seeds (Sweeps page) gives the real interval.")
group = F.chaos_transition_group(a)
ui.figure_block(F.transition_figure([group], metric), F.transition_curve_table([group], metric),
                f"transition_{metric}", view, cmd, "transition", show_command=False)
short = F.too_few_points(group)
if short:  # (the demo: 4 t0) said once, with where the estimate is: the gallery's demo-sweep, seeded in every store
    demo = demo_sweep("chaos")
    stored = load_sweep(ui.job_manager().store, demo.id()) is not None
    st.info(f"{short} The **demo-sweep** on the Sweeps page is that: {len(conf.flat(demo.base)['t0'])} t0, each run "
            f"{demo.replicates} times, with t* and its interval for each metric.", icon=":material/info:")
    st.page_link(ui.PAGE_FILES["sweeps"], label="Open the demo-sweep on the Sweeps page", icon=":material/timeline:",
                 query_params={"sweep": demo.id()} if stored else None)
else:
    st.table(F.transition_summary_text([group]), hide_index=True)

st.subheader("Loss along the interpolation path")
if not cells:
    st.info("No cell computed yet.")
    st.stop()
pick = st.selectbox("cell (t0, t1)", list(by_label), key="chaos_cell", on_change=ui.chosen, args=("chaos_cell",),
                    format_func=lambda s: "t0={}, t1={}".format(*s.split(",")) + f"  (B={b[by_label[s]]:.3g})",
                    help="a click on a heatmap cell selects it here; the largest barrier is selected first")
ui.to_query("cell", pick)
i, j = by_label[pick]
t0, t1 = pick.split(",")
ui.figure_block(F.chaos_path(a, i, j), F.chaos_path_table(a, i, j), f"path_t0_{t0}_t1_{t1}", view, cmd, "path")

with st.expander("Details: realized perturbation norms, accuracies, config"):
    st.write({"realized |theta' - theta|_2 per (seed, t0)": a["realized_eps_norm"].tolist(),
              "test accuracy of the control at t1": dict(zip(a["t1"].tolist(), a["acc_base"].tolist(), strict=True)),
              "meta": view.result.meta})
    st.json(view.result.config, expanded=False)
