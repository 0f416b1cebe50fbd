"""Runs: every run in one table (jobs and results computed by the command line), filtered, selected,
then opened, compared, renamed, cancelled, resubmitted or deleted."""

import hashlib

import streamlit as st

import app_common as ui
from app_common.runs import warn_skipped_runs
from twophase_core.execution.jobs import STATUSES
from twophase_core.experiments import registry
from twophase_core.interfaces import catalog as K
from twophase_core.settings import config as conf
from twophase_core.storage.errors import StoreError

MAX_COMPARE = 6

st.title("Runs")
st.caption("Every run in the result store: jobs started here or with the command line, and results computed "
           "without a job. They survive a reload or a restart of the app; one job runs at a time, the others wait.")

jm = ui.job_manager()
active = any(not r.finished for r in jm.list())


def _table_key(shown: list[K.RunEntry]) -> str:
    """Selection is by row position: a new key when the listed rows change, so it never lands on another run."""
    ids = ",".join(e.id for e in shown) + f"|{st.session_state.get('runs_generation', 0)}"
    return "runs_table_" + hashlib.sha256(ids.encode()).hexdigest()[:12]


def _forget_selection() -> None:
    st.session_state["runs_generation"] = st.session_state.get("runs_generation", 0) + 1
    st.session_state.pop("runs_confirm_delete", None)


def _edit(entry: K.RunEntry) -> None:
    """Name, tags and note of one run, saved under its own key in the store."""
    with st.form(f"edit_{entry.id}", border=True):
        st.markdown(f"**Describe** `{entry.id}`")
        default = K.default_name(entry.config) if entry.config is not None else entry.id
        name = st.text_input("name", value=entry.meta.name, placeholder=default,
                             help=f"empty: the default name, {default}")
        tags = st.text_input("tags", value=", ".join(entry.meta.tags), help="separated by commas or spaces")
        note = st.text_area("note", value=entry.meta.note, height=80)
        if st.form_submit_button("Save", icon=":material/save:"):
            K.save_meta(jm.store, entry.id, K.RunMeta(name=name, tags=K.parse_tags(tags), note=note))
            st.rerun()


def _delete(picked: list[K.RunEntry]) -> None:
    """Asks first; then removes records, results and notes, never checkpoints."""
    st.warning(f"Delete {len(picked)} run{'s' if len(picked) > 1 else ''}: "
               + ", ".join(f"the {ui.KIND_TITLES[e.kind]} run **{e.name}**" for e in picked)
               + "? Their job records, results, partial results and notes go. Checkpoints stay: other runs on the "
                 "same training trajectory use them.", icon=":material/delete:")
    c = st.columns([1, 1, 4])
    if c[0].button("Delete", type="primary", key="runs_delete_yes", icon=":material/delete_forever:"):
        try:
            for e in picked:
                K.delete_run(jm.store, e)
        except (ValueError, StoreError) as err:  # started again meanwhile, or a damaged store
            st.error(f"Not everything was deleted: {err}", icon=":material/error:")
            return
        _forget_selection()
        st.rerun()
    if c[1].button("Keep them", key="runs_delete_no"):
        st.session_state.pop("runs_confirm_delete", None)
        st.rerun()


def _actions(picked: list[K.RunEntry]) -> None:
    if not picked:
        st.caption("Tick rows at the left of the table to open, compare, describe, cancel, resubmit or delete them.")
        return
    kinds = {e.kind for e in picked}
    can_compare = 2 <= len(picked) <= MAX_COMPARE and len(kinds) == 1 and all(e.status == "done" for e in picked)
    why_not = ("" if can_compare else "2 to 6 finished runs of one kind"
               if len(kinds) == 1 else "runs of one kind (these are " + ", ".join(sorted(kinds)) + ")")
    unfinished = [e for e in picked if not e.finished]
    stopped = [e for e in picked if e.status in ("failed", "cancelled") and e.config is not None]
    c = st.columns(5)
    if c[0].button("Open", key="runs_open", icon=":material/open_in_new:", disabled=len(picked) != 1,
                   help="one run, on its experiment's page", width="stretch"):
        ui.open_run(picked[0].kind, picked[0].id)
    if c[1].button("Compare", key="runs_compare", icon=":material/compare:", disabled=not can_compare,
                   help=f"side by side: {why_not or 'these runs'}", width="stretch"):
        st.switch_page(ui.PAGE_FILES["compare"], query_params={"runs": ",".join(e.id for e in picked)})
    if c[2].button("Cancel", key="runs_cancel", icon=":material/stop:", disabled=not unfinished,
                   help="queued or running jobs among the selected", width="stretch"):
        for e in unfinished:
            jm.cancel(e.id)
        st.rerun()
    if c[3].button("Resubmit", key="runs_resubmit", icon=":material/replay:", disabled=not stopped,
                   help="failed or cancelled runs: resumes from the checkpoints they left", width="stretch"):
        try:
            for e in stopped:
                if e.config is not None:  # (stopped: only runs with a config)
                    jm.submit(e.config)
        except (conf.ConfigError, StoreError) as err:  # a full or damaged store: said as such, never a traceback
            st.error(f"Nothing more was started: {err}", icon=":material/error:")
            return
        st.rerun()
    if c[4].button("Delete", key="runs_delete", icon=":material/delete:", disabled=bool(unfinished),
                   help="cancel running jobs first" if unfinished else "asks first; checkpoints are kept",
                   width="stretch"):
        st.session_state["runs_confirm_delete"] = [e.id for e in picked]
    if st.session_state.get("runs_confirm_delete") == [e.id for e in picked]:
        _delete(picked)
    if len(picked) == 1:
        _edit(picked[0])
    for e in picked:
        if e.error:
            with st.expander(f"Error of {e.name}", expanded=len(picked) == 1):
                st.code(e.error, language=None, wrap_lines=True)
                if e.record is not None and e.record.traceback:
                    st.code(e.record.traceback, language=None)
        if e.meta.note and len(picked) > 1:
            st.caption(f"**{e.name}**: {e.meta.note}")


@st.fragment(run_every=ui.POLL_S if active else None)
def runs_view() -> None:
    jm.pump()
    entries = ui.run_entries()
    warn_skipped_runs(entries)
    if not entries:
        st.info("No runs yet. Start one from an experiment page, or run the demo from Home.", icon=":material/info:")
        return
    f = st.columns([2, 2, 2, 3])
    kinds = f[0].multiselect("kind", list(ui.KINDS), key="runs_kind", format_func=lambda k: ui.KIND_TITLES[k])
    statuses = f[1].multiselect("status", list(STATUSES), key="runs_status")
    tags = f[2].multiselect("tags", sorted({t for e in entries for t in e.meta.tags}), key="runs_tags")
    text = f[3].text_input("search", key="runs_text", placeholder="name, id, note, tag or setting (eps=1e-06)")
    shown = K.filter_runs(entries, kinds, statuses, tags, text)
    rows, varying = K.runs_table(shown)
    st.caption(f"{len(shown)} of {len(entries)} runs. "
               + (f"The columns after created are the settings that differ between these runs ({', '.join(varying)})."
                  if varying else "These runs share every setting."))
    spec_help = {n: conf.settings_of(registry.get(e.kind).config)[n][0].help for e in shown if e.config is not None
                 for n in varying if n in conf.settings_of(registry.get(e.kind).config)}
    event = st.dataframe(
        rows, key=_table_key(shown), on_select="rerun", selection_mode="multi-row", hide_index=True, width="stretch",
        column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
            "error": st.column_config.TextColumn("error", help="select the run to read the whole error"),
            **{n: st.column_config.TextColumn(n, help=spec_help.get(n)) for n in varying},
        },
    )
    picked = [shown[i] for i in event["selection"]["rows"] if i < len(shown)]
    _actions(picked)


runs_view()
