"""Compare: 2 to 6 runs of one kind side by side, from Runs or a link `compare?runs=ID1,ID2,...`."""

import streamlit as st

import app_common as ui
from twophase_core.interfaces import compare as CF
from twophase_core.interfaces import figures as F

st.title("Compare runs")
views, problem = ui.compare_views()
if problem:
    st.warning(problem, icon=":material/link_off:")
    st.page_link(ui.PAGE_FILES["runs"], label="Pick runs to compare on Runs", icon=":material/list:")
    st.stop()

kind = views[0].kind
labels, cmds = ui.labels_and_commands(views)
arrays = [v.result.arrays for v in views]
per_row = 1 if ui.presenting() else CF.PER_ROW  # heatmaps in a row of one figure: one per row on a projector
st.caption(f"{len(views)} {ui.KIND_TITLES[kind]} runs. Heatmaps of one quantity share one colour scale; curves are "
           "overlaid, one colour per run.")
links = st.columns(len(views) + 1)
for col, v, label in zip(links[:-1], views, labels, strict=True):
    col.page_link(ui.PAGE_FILES[kind], label=label, query_params={"run": v.run_id}, icon=":material/open_in_new:")
links[-1].page_link(ui.PAGE_FILES["runs"], label="Pick other runs", icon=":material/list:")

st.subheader("Settings that differ")
st.dataframe(CF.settings_table(labels, [v.run_id for v in views], [ui.config_of(v) for v in views]), hide_index=True)

ui.from_query(f"compare_log_{kind}", "log", ui.parse_bool, kind == "chaos")
log = st.toggle("log colour / log axis", key=f"compare_log_{kind}")
ui.to_query("log", "1" if log else "0")
if kind == "chaos":
    for m in F.METRICS:
        st.subheader(F.METRICS[m])
        ui.figure_block(CF.chaos_heatmaps(arrays, labels, m, log=log, per_row=per_row),
                        CF.chaos_heatmaps_table(arrays, labels, m), f"heatmaps_{m}", views, cmds, f"cmp_heat_{m}",
                        show_command=m == "C")
    st.subheader("Cross-sections overlaid")
    ui.from_query("compare_section_metric", "metric", str, "C", allowed=list(F.METRICS))
    metric = st.radio("metric", list(F.METRICS), horizontal=True, key="compare_section_metric",
                      format_func=lambda m: F.METRICS[m])
    ui.to_query("metric", metric)
    ui.figure_block(CF.chaos_sections(arrays, labels, metric, log=log), CF.chaos_sections_table(arrays, labels, metric),
                    f"sections_{metric}", views, cmds, "cmp_sections", show_command=False)
elif kind == "cone":
    results = [v.result for v in views]
    st.subheader("Cone angles")
    ui.figure_block(CF.cone_angles(results, labels), CF.cone_angles_table(results, labels), "cone_angles", views,
                    cmds, "cmp_angles")
    st.subheader("Kernel distance between checkpoints")
    ui.figure_block(CF.cone_S_heatmaps(arrays, labels, log=log, per_row=per_row),
                    CF.cone_S_heatmaps_table(arrays, labels), "S_heatmaps", views, cmds, "cmp_S", show_command=False)
    left, right = ui.figure_columns(2, gap="medium")
    with left:
        st.subheader("Distance to a reference checkpoint")
        ui.figure_block(CF.cone_ref_curves(arrays, labels, log=log), CF.cone_ref_table(arrays, labels),
                        "reference_curves", views, cmds, "cmp_ref", show_command=False)
    with right:
        st.subheader("Kernel velocity")
        ui.figure_block(CF.cone_neighbours(arrays, labels, log=log), CF.cone_neigh_table(arrays, labels),
                        "neighbour_curves", views, cmds, "cmp_neigh", show_command=False)
else:
    ui.figure_block(CF.linear_curves(arrays, labels), CF.linear_table(arrays, labels), "linear", views, cmds,
                    "cmp_linear")
