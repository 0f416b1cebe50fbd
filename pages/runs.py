"""Runs: every job with its status and progress; open, cancel or resubmit it."""

import streamlit as st

import app_common as ui
from twophase_core import config as C

st.title("Runs")
st.caption("Jobs live in the result store, so they survive a reload or a restart of the app. "
           "One job runs at a time; the others wait in the queue.")

jm = ui.job_manager()
active = any(not r.finished for r in jm.list())


@st.fragment(run_every=ui.POLL_S if active else None)
def job_table() -> None:
    jm.pump()
    recs = jm.list()
    if not recs:
        st.info("No jobs yet. Start one from an experiment page, or run the demo from Home.", icon=":material/info:")
        return
    st.dataframe(
        [{"id": r.id, "kind": r.kind, "status": r.status, "progress": r.progress, "stage": r.stage,
          "created": ui.fmt_time(r.created), "error": r.error or ""} for r in recs],
        hide_index=True, width="stretch",
        column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0,
                                                                   format="percent")},
    )
    for r in recs:
        c = st.columns([4, 1, 1, 1], vertical_alignment="center")
        c[0].markdown(f"`{r.id}` · {ui.KIND_TITLES[r.kind]} · **{r.status}**")
        if c[1].button("Open", key=f"open_{r.id}", icon=":material/open_in_new:"):
            ui.open_run(r.kind, r.id)
        if c[2].button("Cancel", key=f"cancel_{r.id}", icon=":material/stop:", disabled=r.finished):
            jm.cancel(r.id)
            st.rerun()
        if c[3].button("Resubmit", key=f"resubmit_{r.id}", icon=":material/replay:",
                       disabled=r.status not in ("failed", "cancelled"), help="resumes from the checkpoints it left"):
            jm.submit(C.from_dict(C.KINDS[r.kind], r.config))
            st.rerun()


job_table()

stored = sorted(k for k in jm.store.keys("result/"))
job_ids = {r.id for r in jm.list()}
extra = [(k.split("/")[1], k.split("/")[2]) for k in stored if f"{k.split('/')[1]}-{k.split('/')[2]}" not in job_ids]
if extra:
    st.subheader("Other results in the store")
    st.caption("Computed outside the app (for example with the `twophase` command line).")
    for kind, h in extra:
        rid = f"{kind}-{h}"
        c = st.columns([4, 1], vertical_alignment="center")
        c[0].markdown(f"`{rid}` · {ui.KIND_TITLES.get(kind, kind)}")
        if kind in ui.KINDS and c[1].button("Open", key=f"open_store_{rid}", icon=":material/open_in_new:"):
            ui.open_run(kind, rid)
