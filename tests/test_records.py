"""Stored JSON records checked by type on read (issue 18): job records, run notes and sweep records that
fail their checks are skipped with kind, id and field named, left in the store, and never crash `twophase
jobs`, the Runs or Sweeps page, or a reader; the readers are fuzzed with hypothesis."""

from __future__ import annotations

import math
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from launchers import FailingLauncher
from streamlit.testing.v1 import AppTest

from twophase_core.execution import sweeps as SJ
from twophase_core.execution.jobs import JobManager, JobRecord, load_record, update_record
from twophase_core.experiments import registry, reproduce
from twophase_core.experiments import sweep as S
from twophase_core.experiments.presets import preset
from twophase_core.interfaces import catalog as K
from twophase_core.interfaces.cli import main
from twophase_core.settings import config as conf
from twophase_core.storage import record_types as R
from twophase_core.storage.store import Store

APP = str(Path(__file__).resolve().parent.parent / "app.py")
NOW = 1_700_000_000.0  # 2023-11-14
HINT = "(run `twophase cache check`; `twophase cache repair` moves it aside)"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])




def _job(cfg: Any = None, **changes: Any) -> dict[str, Any]:
    """A finished job record as JSON, with `changes` on top."""
    cfg = cfg if cfg is not None else preset("tiny", "chaos")
    h = conf.config_hash(cfg)
    rec = JobRecord(f"{conf.kind_of(cfg)}-{h}", conf.kind_of(cfg), h, conf.to_dict(cfg), status="done", progress=1.0,
                    stage="done", created=NOW, started=NOW, updated=NOW + 5, finished_at=NOW + 5)
    return {**asdict(rec), **changes}


def _sweep() -> dict[str, Any]:
    """A two-point sweep record as `submit_sweep` writes it."""
    sweep = S.Sweep(preset("tiny", "chaos"), S.parse_vary("chaos", ["eps=1e-6,1e-5"]))
    return {"id": sweep.id(), "sweep": sweep.to_dict(), "runs": [p.run_id for p in S.expand(sweep)], "created": NOW}


VALID = {"job": _job(), "runmeta": {"name": "baseline", "tags": ["paper", "seed"], "note": "first try"},
         "sweep": _sweep()}
IDS = {"job": VALID["job"]["id"], "runmeta": VALID["job"]["id"], "sweep": VALID["sweep"]["id"]}


def _flip_a_byte(store: Store, key: str) -> bytes:
    """Flip one bit of the last byte of the record's row in the index (inside its JSON); the new row."""
    con = sqlite3.connect(store.root / "index" / "cache.db")
    with con:
        (raw,) = con.execute("SELECT value FROM Cache WHERE key = ?", (key,)).fetchone()
        bad = bytes(raw[:-1]) + bytes([raw[-1] ^ 1])
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (bad, key))
    con.close()
    return bad


def _row(store: Store, key: str) -> bytes | None:
    con = sqlite3.connect(store.root / "index" / "cache.db")
    with con:
        row = con.execute("SELECT value FROM Cache WHERE key = ?", (key,)).fetchone()
    con.close()
    return None if row is None else bytes(row[0])


def _jobs(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["jobs", "--cache-dir", str(root)])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------
# twophase jobs


def test_jobs_names_a_record_with_a_flipped_byte_and_leaves_it_in_the_store(store, capsys):
    good, bad = _job(), _job(conf.replace(preset("tiny", "chaos"), eps=1e-5))
    store.put_json(f"job/{good['id']}", good)
    store.put_json(f"job/{bad['id']}", bad)
    flipped = _flip_a_byte(store, f"job/{bad['id']}")

    code, out, err = _jobs(store.root, capsys)

    assert code == 0 and good["id"] in out and bad["id"] not in out
    [line] = err.splitlines()
    assert line.startswith(f"twophase: skipped job {bad['id']}: ") and line.endswith(HINT)
    assert _row(store, f"job/{bad['id']}") == flipped  # named, never deleted or rewritten
    assert f"job/{bad['id']}" in store.keys("job/")


@pytest.mark.parametrize(("field", "value", "why"), [
    ("created", "yesterday", "must be a number"),
    ("created", 1e300, "must be a time in seconds since 1970, before the year 10000"),
    ("created", True, "must be a number"),
    ("progress", float("nan"), "must be a number"),
    ("status", "paused", "must be one of queued, running, done, failed, cancelled"),
])
def test_jobs_skips_a_record_with_a_field_of_the_wrong_type_in_one_line(store, capsys, field, value, why):
    good, bad = _job(), _job(conf.replace(preset("tiny", "chaos"), eps=1e-5), **{field: value})
    store.put_json(f"job/{good['id']}", good)
    store.put_json(f"job/{bad['id']}", bad)

    code, out, err = _jobs(store.root, capsys)

    assert code == 0 and good["id"] in out and "Traceback" not in err
    assert err == f"twophase: skipped job {bad['id']}: field {field} {why} {HINT}\n"


def test_a_record_that_fails_its_checks_is_never_rewritten_by_an_update(store):
    bad = _job(created="yesterday", status="queued")
    store.put_json(f"job/{bad['id']}", bad)
    before = _row(store, f"job/{bad['id']}")
    calls = []

    assert update_record(store, bad["id"], lambda r: calls.append(r)) is None
    JobManager(store, launcher=FailingLauncher()).cancel(bad["id"])

    assert calls == [] and _row(store, f"job/{bad['id']}") == before


# ---------------------------------------------------------------------------------------------
# Run notes and sweeps


def test_a_note_with_tags_5_leaves_its_run_listed_without_the_note(store):
    one, two = _job(), _job(conf.replace(preset("tiny", "chaos"), eps=1e-5))
    for rec in (one, two):
        store.put_json(f"job/{rec['id']}", rec)
    store.put_json(f"runmeta/{one['id']}", {"name": "broken", "tags": 5, "note": ""})
    store.put_json(f"runmeta/{two['id']}", {"name": "fine", "tags": ["a"], "note": "n"})

    entries = K.list_runs(store, JobManager(store, launcher=FailingLauncher()).list())

    assert {e.id: (e.meta.name, e.meta.tags, e.meta.note) for e in entries} == {
        one["id"]: ("", (), ""), two["id"]: ("fine", ("a",), "n")}
    assert [(p.kind, p.id, p.field) for p in K.skipped_notes(entries)] == [("runmeta", one["id"], "tags")]
    assert K.runs_table(entries)[0]  # the table the page draws is built too


def test_submitting_a_sweep_over_its_own_damaged_record_writes_a_fresh_one(store):
    rec = _sweep()
    store.put_json(f"sweep/{rec['id']}", {**rec, "created": "yesterday"})
    sweep = S.Sweep.from_dict(rec["sweep"])

    fresh = SJ.submit_sweep(JobManager(store, launcher=FailingLauncher()), sweep)

    assert type(fresh["created"]) is float and S.load_sweep(store, rec["id"]) == fresh
    assert S.list_sweeps(store) == ([fresh], [])


def _plant_every_problem(store: Store) -> set[tuple[str, str, str]]:
    """One stored record per way a record can be bad; the (kind, id, field) each must be named by."""
    job, sweep = _job(), _sweep()
    planted = {
        ("job", "flipped", ""): job | {"id": "flipped"},
        ("job", "a-list", ""): [1, 2],
        ("job", "no-config", "config"): {k: v for k, v in job.items() if k != "config"} | {"id": "no-config"},
        ("job", "created-text", "created"): job | {"id": "created-text", "created": "yesterday"},
        ("job", "created-huge", "created"): job | {"id": "created-huge", "created": 10**400},
        ("job", "bad-status", "status"): job | {"id": "bad-status", "status": "paused"},
        ("job", "progress-2", "progress"): job | {"id": "progress-2", "progress": 2},
        ("job", "pid-0", "pid"): job | {"id": "pid-0", "pid": 0},
        ("job", "pid-true", "pid"): job | {"id": "pid-true", "pid": True},
        ("job", "kind-x", "kind"): job | {"id": "kind-x", "kind": "x"},
        ("job", "executor-k8s", "executor"): job | {"id": "executor-k8s", "executor": "k8s"},
        ("job", "other-id", "id"): job,  # its own id is not the one in its key
        ("job", "chaos-0", "id"): job | {"id": "chaos-0"},  # not the kind and hash joined
        ("runmeta", "tags-5", "tags"): {"tags": 5},
        ("runmeta", "tag-int", "tags"): {"tags": ["a", 1]},
        ("runmeta", "name-null", "name"): {"name": None},
        ("runmeta", "not-json", ""): b"{not json",
        ("sweep", "null", ""): None,
        ("sweep", "runs-ints", "runs"): sweep | {"id": "runs-ints", "runs": [1, 2]},
        ("sweep", "created-inf", "created"): sweep | {"id": "created-inf", "created": math.inf},
        ("sweep", "no-sweep", "sweep"): {k: v for k, v in sweep.items() if k != "sweep"} | {"id": "no-sweep"},
        ("sweep", "zero-reps", "sweep"): sweep | {"id": "zero-reps", "sweep": sweep["sweep"] | {"replicates": 0}},
        ("sweep", "vary-typo", "sweep"): sweep | {"id": "vary-typo", "sweep": sweep["sweep"] | {"vary": {"epz": [1]}}},
        ("sweep", "eps-huge", "sweep"): sweep | {"id": "eps-huge", "sweep": sweep["sweep"] | {"vary": {"eps": [HUGE]}}},
    }
    for (kind, rid, _), value in planted.items():
        key = f"{R.PREFIXES[kind]}{rid}"
        if isinstance(value, bytes):
            store.put_blob(key, value)
        else:
            store.put_json(key, value)
    _flip_a_byte(store, "job/flipped")
    return set(planted)


def test_record_problems_names_every_kind_of_bad_record_and_only_those(store):
    expected = _plant_every_problem(store)
    for kind, value in VALID.items():
        store.put_json(f"{R.PREFIXES[kind]}{IDS[kind]}", value)

    problems = R.record_problems(store)

    assert {(p.kind, p.id, p.field) for p in problems} == expected
    assert all(p.key == f"{R.PREFIXES[p.kind]}{p.id}" and p.why for p in problems)
    tags = next(p for p in problems if p.id == "tags-5")
    assert str(tags) == "run note tags-5: field tags must be a list of strings"
    assert len(store.keys()) == len(expected) + 3  # reading moved nothing


def test_listers_skip_bad_records_and_name_them(store):
    expected = _plant_every_problem(store)
    for kind, value in VALID.items():
        store.put_json(f"{R.PREFIXES[kind]}{IDS[kind]}", value)
    jm = JobManager(store, launcher=FailingLauncher())

    assert [r.id for r in jm.list()] == [IDS["job"]]
    assert {(p.kind, p.id, p.field) for p in jm.skipped} == {e for e in expected if e[0] == "job"}
    sweeps, skipped = S.list_sweeps(store)
    assert [r["id"] for r in sweeps] == [IDS["sweep"]]
    assert {(p.kind, p.id, p.field) for p in skipped} == {e for e in expected if e[0] == "sweep"}


def test_an_id_that_would_break_a_line_is_shown_escaped():
    p = R.RecordProblem("job", "x\n\x1b[2Jy", "job/x\n\x1b[2Jy", "created", "must be a number")
    assert str(p) == "job 'x\\n\\x1b[2Jy': field created must be a number"


# ---------------------------------------------------------------------------------------------
# Fuzzed


HUGE = 10**400  # JSON integers go past a float's range: float() overflows on them
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-HUGE, max_value=HUGE) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@st.composite
def stored_records(draw: st.DrawFn) -> tuple[str, Any]:
    """(kind, value): an arbitrary JSON value, or a valid record with one field replaced, dropped or added (for
    a sweep, also one field of what it sweeps or of its base config, or the values of one varied setting)."""
    kind = draw(st.sampled_from(list(VALID)))
    valid = dict(VALID[kind])
    nested = ["spec", "base", "vary"] if kind == "sweep" else []
    how = draw(st.sampled_from(["any", "replace", "drop", "extra", *nested]))
    if how == "any":
        return kind, draw(json_values)
    if how == "vary":
        setting = draw(st.sampled_from(sorted(conf.settings_of(registry.get("chaos").config))))
        valid["sweep"] = valid["sweep"] | {"vary": {setting: draw(st.lists(json_values, min_size=1, max_size=3))}}
        return kind, valid
    if how in ("spec", "base"):
        spec = dict(valid["sweep"])
        inner = spec if how == "spec" else dict(spec["base"])
        inner[draw(st.sampled_from(sorted(inner)))] = draw(json_values | st.lists(json_values, max_size=3))
        valid["sweep"] = spec if how == "spec" else spec | {"base": inner}
        return kind, valid
    name = draw(st.sampled_from(sorted(valid)))
    if how == "replace":
        valid[name] = draw(json_values)
    elif how == "drop":
        del valid[name]
    else:
        valid[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in valid))] = draw(json_values)
    return kind, valid


def _read_everything(store: Store) -> None:
    """Every reader, lister and what the pages build from them."""
    jm = JobManager(store, launcher=FailingLauncher())
    load_record(store, IDS["job"])
    entries = K.list_runs(store, jm.list())
    K.load_meta(store, IDS["runmeta"])
    K.runs_table(K.filter_runs(entries, text="x"))
    for rec in S.list_sweeps(store)[0]:
        SJ.sweep_progress(jm, rec)
        reproduce.sweep_command(S.Sweep.from_dict(rec["sweep"]))
    R.record_problems(store)


@FUZZ
@given(record=stored_records())
def test_readers_never_raise_on_any_stored_record(store, record):
    kind, value = record
    key = f"{R.PREFIXES[kind]}{IDS[kind]}"
    store.put_json(key, value)
    try:
        _read_everything(store)
        named = [(p.kind, p.field) for p in R.record_problems(store)]
        bad = R.problem(kind, value, IDS[kind])
        assert named == ([] if bad is None else [(kind, bad[0])])
    finally:
        store.delete(key)


def _is_number(v: Any) -> bool:
    return type(v) is float and math.isfinite(v)


def _has_declared_types(kind: str, store: Store) -> bool:
    """isinstance on each field of what the reader loaded, against the types written out here."""
    if kind == "job":
        r = load_record(store, IDS["job"])
        optional_numbers = (r.eta_s, r.started, r.cancel_requested, r.finished_at)
        optional_text = (r.error, r.traceback, r.log, r.executor)
        return (all(isinstance(v, str) for v in (r.id, r.kind, r.hash, r.status, r.stage))
                and isinstance(r.config, dict) and all(_is_number(v) for v in (r.progress, r.created, r.updated))
                and all(v is None or _is_number(v) for v in optional_numbers) and (r.pid is None or type(r.pid) is int)
                and all(v is None or isinstance(v, str) for v in optional_text))
    if kind == "runmeta":
        m = K.load_meta(store, IDS["runmeta"])
        return (isinstance(m.name, str) and isinstance(m.note, str) and isinstance(m.tags, tuple)
                and all(isinstance(t, str) for t in m.tags))
    [rec] = S.list_sweeps(store)[0]
    return (isinstance(rec["id"], str) and isinstance(rec["sweep"], dict) and isinstance(rec["runs"], list)
            and all(isinstance(r, str) for r in rec["runs"]) and ("created" not in rec or _is_number(rec["created"])))


@FUZZ
@given(record=stored_records())
def test_a_record_its_checks_accept_loads_with_the_declared_types(store, record):
    kind, value = record
    assume(R.problem(kind, value, IDS[kind]) is None)  # about a third of the drawn records
    key = f"{R.PREFIXES[kind]}{IDS[kind]}"
    store.put_json(key, value)
    try:
        assert _has_declared_types(kind, store)
    finally:
        store.delete(key)


# ---------------------------------------------------------------------------------------------
# The pages


def _page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page(page).run()
    assert not at.exception
    return at


def test_runs_page_lists_every_good_run_beside_a_bad_note_and_a_bad_job(store):
    good = [_job(), _job(conf.replace(preset("tiny", "chaos"), eps=1e-5), status="failed", error="boom"),
            _job(preset("tiny", "cone"))]
    for rec in good:
        store.put_json(f"job/{rec['id']}", rec)
    store.put_json(f"runmeta/{good[0]['id']}", {"tags": 5})
    store.put_json(f"runmeta/{good[1]['id']}", {"name": "named", "tags": ["t"]})
    bad = _job(conf.replace(preset("tiny", "chaos"), eps=1e-4), created="yesterday")
    store.put_json(f"job/{bad['id']}", bad)

    at = _page("pages/runs.py")

    [table] = at.dataframe
    assert sorted(table.value["id"]) == sorted(r["id"] for r in good)
    assert "named" in list(table.value["name"])
    [warning] = at.warning
    assert f"job {bad['id']}: field created must be a number" in warning.value
    assert f"run note {good[0]['id']}: field tags must be a list of strings" in warning.value
    assert "twophase cache repair" in warning.value


def test_sweeps_page_shows_the_good_sweep_and_names_the_bad_one(store):
    good = _sweep()
    store.put_json(f"sweep/{good['id']}", good)
    store.put_json("sweep/sweep-bad", good | {"id": "sweep-bad", "runs": 5})

    at = _page("pages/sweeps.py")

    pick = at.selectbox(key="sweep_pick")
    assert len(pick.options) == 1 and pick.value == good["id"]
    [warning] = at.warning
    assert "sweep sweep-bad: field runs must be a list of strings" in warning.value


# ---------------------------------------------------------------------------------------------
# twophase cache check / repair


def test_cache_check_names_bad_records_and_repair_moves_them_aside_whole(store, capsys):
    """check: kind, id and field of each bad record, exit 1; repair: each one's stored bytes moved to
    damaged/ (the flipped row byte for byte), the good ones untouched, and check is clean after."""
    import json

    good, typed, flipped = _job(), _job(conf.replace(preset("tiny", "chaos"), eps=1e-5), created="yesterday"), \
        _job(conf.replace(preset("tiny", "chaos"), eps=1e-4))
    for rec in (good, typed, flipped):
        store.put_json(f"job/{rec['id']}", rec)
    store.put_json(f"runmeta/{good['id']}", {"name": "x", "tags": 5, "note": ""})
    raw = _flip_a_byte(store, f"job/{flipped['id']}")

    assert main(["cache", "check", "--cache-dir", str(store.root)]) == 1
    report = json.loads(capsys.readouterr().out)
    named = {(r["key"], r["field"]) for r in report["records"]}
    assert named == {(f"job/{typed['id']}", "created"), (f"runmeta/{good['id']}", "tags")}
    assert [d["key"] for d in report["index"]["damaged"]] == [f"job/{flipped['id']}"]

    assert main(["cache", "repair", "--dry-run", "--cache-dir", str(store.root)]) == 0
    capsys.readouterr()
    assert _row(store, f"job/{flipped['id']}") == raw  # a dry run moves nothing

    assert main(["cache", "repair", "--cache-dir", str(store.root)]) == 0
    fixed = json.loads(capsys.readouterr().out)
    moved = {m["key"]: Path(m["to"]) for m in fixed["records_moved_aside"]}
    assert set(moved) == {f"job/{typed['id']}", f"runmeta/{good['id']}", f"job/{flipped['id']}"}
    assert all(p.parent == store.root / "damaged" for p in moved.values())
    assert raw in moved[f"job/{flipped['id']}"].read_bytes()  # the record's bytes, kept whole
    assert json.dumps(typed).encode() in moved[f"job/{typed['id']}"].read_bytes()
    assert store.keys("job/") == [f"job/{good['id']}"] and store.get_json(f"job/{good['id']}") == good
    assert fixed["after"]["ok"] is True


def test_the_app_path_refuses_a_cuda_job_where_there_is_no_cuda_and_writes_no_record(store, monkeypatch):
    from twophase_core.execution import placement

    monkeypatch.setattr(placement, "cuda_available", lambda: False)
    cfg = conf.replace(preset("tiny", "chaos"), device="cuda")
    with pytest.raises(conf.ConfigError, match="device='cuda' is invalid: no CUDA device is visible"):
        JobManager(store, launcher=FailingLauncher()).submit(cfg)
    assert store.keys() == []
