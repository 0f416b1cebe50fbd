"""Sweeps: many runs of one experiment over settings and seeds; where the chaos ends, with an interval."""

import pandas as pd
import streamlit as st

import app_common as ui
from app_common.form import with_all_settings
from app_common.runs import warn_skipped
from twophase_core.execution import refine as RF
from twophase_core.execution import sweeps as SJ
from twophase_core.experiments import reproduce
from twophase_core.experiments import sweep as S
from twophase_core.experiments import twin as TW
from twophase_core.experiments.presets import PRESETS, preset, sweep_replicates
from twophase_core.interfaces import figures as F
from twophase_core.settings import config as conf
from twophase_core.settings.spec import split_list
from twophase_core.storage.errors import StoreError

st.title("Sweeps")
st.caption("A sweep runs one experiment over several settings (any setting, several values) and several "
           "seeds. Seeds are replicates: each group of replicates gets a mean with a 95% bootstrap band, and the "
           "transition t*, where the metric at the final t1 falls halfway on a log scale, with its interval.")
jm = ui.job_manager()


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


sweeps, skipped = S.list_sweeps(jm.store)
warn_skipped(skipped)

with st.expander("New sweep", expanded=not sweeps):
    c = st.columns(3)
    kind = c[0].radio("experiment", list(ui.KINDS), horizontal=True, key="sweep_kind",
                      format_func=lambda k: ui.KIND_TITLES[k])
    names = list(PRESETS)
    start = c[1].selectbox("preset", names, index=names.index("demo-sweep") if "demo-sweep" in names else 0,
                           key="sweep_preset", format_func=lambda n: f"{n}: {PRESETS[n][0]}")
    with st.form("sweep_form", border=False):
        f = st.columns([3, 3, 2, 1])
        vary = f[0].text_area("vary: one setting per line, FIELD=v1,v2,...", key=f"sweep_vary_{kind}_{start}",
                              value="lr=0.05,0.1,0.2" if start != "demo-sweep" else "",
                              help="any setting by name (every setting: twophase settings, or docs/settings.md); "
                                   "a list setting takes alternatives split by |, e.g. t1=300,600|600")
        overrides = f[1].text_area("other settings: FIELD=value per line", key=f"sweep_over_{kind}_{start}",
                                   help="applied to every point, e.g. iterations=400")
        seeds = f[2].text_input("replicate seeds", ", ".join(S.DEFAULT_SEEDS), key="sweep_seeds",
                                help="settings that are replicates, not settings; unless varied, replicate r "
                                     "adds r to each")
        reps = f[3].text_input("replicates", str(sweep_replicates(start)), key=f"sweep_reps_{start}")
        budget = 0
        if kind == "chaos":
            budget = st.number_input(
                "Refine (budget in SGD steps)", min_value=0, value=0, step=1000, key="sweep_refine",
                help="0: the t0 grid as given. More: after it, t0 are added where t* is not yet found (and T raised "
                     "past them) until it is, or this many progress units are spent (SGD steps of the base runs and "
                     "branches not stored yet, plus the cells' evaluations), as `twophase sweep ... --refine N` "
                     "does; see docs/transition.md, \"Refining the grid\"")
        error = st.empty()
        go = st.form_submit_button("Run sweep", type="primary", icon=":material/play_arrow:")
    if go:  # every bad field is named, not only the first
        errors: list[Exception] = []
        bad = [ln for ln in _lines(overrides) if "=" not in ln]
        if bad:
            errors.append(conf.ConfigError("other settings", bad, "write FIELD=value, one per line"))
        over = {k.strip(): v for k, v in (ln.split("=", 1) for ln in _lines(overrides) if "=" in ln)}
        base, bad_settings = with_all_settings(preset(start, kind), over)
        errors += bad_settings
        n = reps.strip()
        if not n.isdigit() or int(n) < 1:
            errors.append(conf.ConfigError("replicates", reps, "must be a whole number >= 1"))
        for ln in _lines(vary):
            try:
                S.parse_vary(kind, [ln])
            except conf.ConfigError as e:
                errors.append(e)
        if not errors and base is not None:
            try:
                sweep = S.Sweep(base, S.parse_vary(kind, _lines(vary)), tuple(split_list(seeds)) or S.DEFAULT_SEEDS,
                                int(n))
                rec = RF.submit_refine(jm, sweep, float(budget)) if budget else SJ.submit_sweep(jm, sweep)
            except (conf.ConfigError, StoreError) as e:
                errors.append(e)
        if errors:
            error.error("Nothing was started:\n" + "\n".join(f"- {e}" for e in errors), icon=":material/error:")
        else:  # open the new sweep: the picker below follows it, and so does the link
            st.session_state["sweep_pick"] = rec["id"]
            st.query_params["sweep"] = rec["id"]
            st.rerun()

if not sweeps:
    st.info("No sweeps yet. Fill in the form above; with the demo-sweep preset the defaults show the "
            "transition with its interval.", icon=":material/info:")
    st.stop()

sid = st.query_params.get("sweep")
ids = [r["id"] for r in sweeps]
if sid and sid not in ids:
    st.warning(f"No sweep called `{sid[:80]}` in this store; pick one below.", icon=":material/search_off:")
ui.from_query("sweep_pick", "sweep", str, ids[0], allowed=ids)
pick = st.selectbox("Sweep", ids, key="sweep_pick",
                    format_func=lambda i: next(f"{r['sweep']['kind']} · {len(r['runs'])} runs · "
                                               f"{', '.join(r['sweep']['vary']) or 'seeds only'} · "
                                               f"{ui.fmt_time(r.get('created'))}" for r in sweeps if r["id"] == i))
ui.to_query("sweep", pick)
rec = next(r for r in sweeps if r["id"] == pick)
refine = rec.get("refine")


@st.fragment(run_every=ui.POLL_S)
def progress() -> None:
    jm.pump()
    now = (S.load_sweep(jm.store, pick) or rec) if refine else rec  # a refine's driver moves it round by round
    p = SJ.sweep_progress(jm, now)
    driving = bool(refine) and RF.refine_state(jm, now) == "running"
    what = f"round {len(now['refine']['rounds']) + 1}: " if driving else ""
    c1, c2 = st.columns([6, 1], vertical_alignment="bottom")
    c1.progress(min(p["progress"], 1.0), text=f"{what}{p['done']} of {p['points']} runs done · {p['running']} "
                f"running · {p['queued']} queued" + (f" · {p['failed']} failed" if p["failed"] else "")
                + (f" · {p['cancelled']} cancelled" if p["cancelled"] else ""))
    if (driving or p["running"] or p["queued"]) and c2.button(
            "Stop", key=f"stop_sweep_{pick}", icon=":material/stop:",
            help="cancel the points still queued or running (a point shared with another run stops too); finished "
                 "points and every checkpoint stay, and submitting the sweep again goes on from there"):
        if driving:
            RF.stop_refine(jm, pick)
        else:
            SJ.cancel_sweep(jm, now)
        st.rerun()
    mark = (p["done"], p["failed"], len(now["runs"]), *((len(now["refine"]["rounds"]), now["refine"]["state"])
                                                       if refine else ()))
    if st.session_state.get(f"sweep_mark_{pick}") not in (None, mark):
        st.session_state[f"sweep_mark_{pick}"] = mark
        st.rerun()
    st.session_state[f"sweep_mark_{pick}"] = mark


progress()
if refine:
    cmd = reproduce.sweep_command(S.Sweep.from_dict(refine["start"]), refine=refine["budget"])
    st.subheader("Refining the t0 grid")
    state = RF.refine_state(jm, rec)
    spent = f"{refine['spent']:,.0f} of {refine['budget']:,.0f} units spent"
    n_rounds = len(refine["rounds"])
    if state == "running":
        st.info(f"Round {n_rounds + 1} is running; {n_rounds} done, {spent}. Each round adds t0 where t* is not "
                "found yet; the view below shows the last finished round.", icon=":material/hourglass_top:")
    elif state == "done":
        st.success(f"Refined in {n_rounds} rounds, {spent}: {refine['stopped']}.", icon=":material/check_circle:")
    else:
        why = refine.get("error") or "its driver process ended without saying why"
        st.warning(f"Refining stopped after {n_rounds} rounds, {spent}: {why}. Submit the sweep again to go on (stored "
                   "points are reused).", icon=":material/warning:")
    if refine["rounds"]:
        st.dataframe(pd.DataFrame([{"round": i + 1, "t0": ", ".join(map(str, r["t0"])), "T": r["T"],
                                    "units": r["units"], **{f"{refine.get('metric', 'C')} ({g})": o
                                                            for g, o in r["outcomes"].items()}}
                                   for i, r in enumerate(refine["rounds"])]), hide_index=True)
    ui.command_block(cmd)
    rec = RF.shown_record(rec, jm.store)
sweep = S.Sweep.from_dict(rec["sweep"])
if not refine:
    cmd = reproduce.sweep_command(sweep)
res = S.sweep_result(jm.store, rec)
groups = ui.sweep_groups(res)
done = [g for g in groups if g["replicates"]]
if not done:
    st.info("The first points are training; groups appear here as their runs finish.",
            icon=":material/hourglass_top:")
    ui.command_block(cmd)
    st.stop()

fgroups = S.figure_groups(done)
metrics = list(fgroups[0]["values"]) if fgroups else []
if fgroups:
    st.subheader("The transition: t* and its 95% interval per group")
    st.table(F.transition_summary_text(fgroups), hide_index=True)
    ui.from_query("sweep_metric", "metric", str, metrics[0], allowed=metrics)
    metric = st.radio("metric", metrics, horizontal=True, key="sweep_metric",
                      format_func=lambda m: F.TRANSITION_METRICS.get(m, m))
    ui.to_query("metric", metric)
    view = ui.RunView(pick, sweep.kind, None, None, False)
    ui.figure_block(F.transition_figure(fgroups, metric), F.transition_curve_table(fgroups, metric),
                    f"transition_{metric}", view, cmd, "sweep_transition")
    diagram = S.phase_diagram(sweep, done)  # two varied settings: t* over both of them
    if diagram is not None:
        st.subheader(f"Phase diagram: t* over {diagram['x']} and {diagram['y']}")
        here, there = ui.figure_columns(2)  # (presentation mode: one below the other)
        with here:
            ui.figure_block(F.phase_diagram_figure(diagram, metric), F.phase_diagram_table(diagram, metric),
                            f"phase_diagram_{metric}", view, cmd, "sweep_phase", show_command=False)
        other = TW.TWIN_KIND.get(sweep.kind)
        twin = TW.find_twin(rec, sweeps) if other else None
        with there:
            if twin is not None:  # the other side, read off the same base runs, on the same axes
                tsweep = TW.on_axes_of(S.Sweep.from_dict(RF.shown_record(twin, jm.store)["sweep"]), sweep)
                tres = S.sweep_result(jm.store, RF.shown_record(twin, jm.store))
                tdiagram = S.phase_diagram(tsweep, ui.sweep_groups(tres))
                tm = TW.TWIN_METRIC[str(other)]
                tstart = TW.started_from(twin)
                tref = twin.get("refine")
                tcmd = reproduce.sweep_command(tstart, refine=tref["budget"] if tref else None)
                if tdiagram is not None:
                    ui.figure_block(F.phase_diagram_figure(tdiagram, tm), F.phase_diagram_table(tdiagram, tm),
                                    f"phase_diagram_{tm}", ui.RunView(twin["id"], str(other), None, None, False),
                                    tcmd, "sweep_phase_twin", show_command=False)
                st.page_link(ui.PAGE_FILES["sweeps"], label=f"Open the {ui.KIND_TITLES[str(other)]} sweep beside it",
                             icon=":material/timeline:", query_params={"sweep": twin["id"]})
            elif other is not None:
                missing = TW.missing_twin(TW.started_from(rec))
                st.info(f"No {ui.KIND_TITLES[other]} sweep over the same training run and the same "
                        f"{diagram['x']} and {diagram['y']} values is stored, so its t* of "
                        f"{TW.TWIN_METRIC[other]} cannot be shown beside this one"
                        + (". This command runs it:" if missing is not None else
                           f"; a {ui.KIND_TITLES[other]} sweep with these settings does not expand here."),
                        icon=":material/info:")
                if missing is not None:
                    ui.command_block(reproduce.sweep_command(missing))

if sweep.kind == "chaos":
    st.subheader("Cross-sections with their 95% band over replicates")
    labels = [", ".join(f"{k}={v}" for k, v in g["varied"].items()) or "base" for g in done]
    k = st.selectbox("group", range(len(done)), format_func=lambda i: labels[i], key="sweep_group")
    ui.from_query("sweep_band_metric", "band", str, "C", allowed=list(F.METRICS))
    m = st.radio("metric", list(F.METRICS), horizontal=True, key="sweep_band_metric")
    ui.to_query("band", m)
    arrays = F.stack_replicates([r.arrays for r in res.replicates_of(done[k]["varied"])])
    ui.figure_block(F.chaos_sections_band(arrays, m, log=True), F.chaos_sections_band_table(arrays, m),
                    f"sections_band_{m}", ui.RunView(pick, "chaos", None, None, False), cmd, "sweep_bands",
                    show_command=False)

with st.expander("Runs of this sweep"):
    st.dataframe(pd.DataFrame([{"run": p.run_id, "replicate": p.replicate,
                                **{k: str(v) for k, v in p.varied.items()},
                                "done": p.hash in res.results} for p in res.points]), hide_index=True)
