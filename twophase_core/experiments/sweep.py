"""Sweeps: an experiment with some settings given as lists, expanded to their cartesian product.

Every point is an ordinary experiment config, so it is cached like any other run: a point computed
before costs nothing, and points that differ only in what cannot change the base trajectory (eps,
t0, the barrier's settings, ...) share one base run through the checkpoint store. Fields named as
`seeds` (default `data_seed` and `init_seed` together) are replicates of one setting, not settings:
for each group of replicates the sweep reports, per cell, the mean and a 95% bootstrap interval,
and the transition t* with its interval (twophase_core.transition).

`expand` and `summarize` import neither torch nor Streamlit (the app's process calls them);
`run_sweep` runs the points in this process (the CLI), `submit_sweep` queues them as jobs (the app).

Past 350 lines on purpose: expansion, running, the replicate summaries and the sweep's job record
are one concept; each part reads the same Point.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twophase_core.experiments.result import Result, load_result, nested, save_result
from twophase_core.science.transition import (
    estimate_kernel_transition,
    estimate_transitions,
    replicate_band,
    transition_json,
)
from twophase_core.settings import config as conf
from twophase_core.settings.spec import ConfigError, Spec, check, format_value, parse_text, split_list
from twophase_core.storage import record_types as R

DEFAULT_SEEDS = ("data_seed", "init_seed")
MAX_POINTS = 999  # a sweep of 1,000 points is a typo more often than a plan
LIST_TYPES = ("steps", "ints", "window")
METRICS = {"chaos": ("C", "B", "D"), "cone": ("S",), "linear": ("acc_linear",)}


@dataclass(frozen=True)
class Sweep:
    """What to run: a base config, the varied settings (name -> values, in the order given), which
    settings are replicate seeds, and how many replicates when the seeds are not listed."""

    base: Any
    vary: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    seeds: tuple[str, ...] = DEFAULT_SEEDS
    replicates: int = 1

    @property
    def kind(self) -> str:
        return conf.kind_of(self.base)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "base": conf.to_dict(self.base), "vary": {k: list(v) for k, v in self.vary},
                "seeds": list(self.seeds), "replicates": self.replicates}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sweep:
        base = conf.from_dict(conf.KINDS[d["kind"]], d["base"])
        vary = tuple((k, tuple(tuple(x) if isinstance(x, list) else x for x in v)) for k, v in d["vary"].items())
        return cls(base, vary, tuple(d["seeds"]), int(d["replicates"]))

    def id(self) -> str:
        return f"sweep-{conf.digest(self.to_dict())}"


@dataclass(frozen=True)
class Point:
    """One experiment of the sweep: its config, the settings it varies, and its replicate."""

    config: Any
    varied: dict[str, Any]  # every varied setting, seeds included
    group: tuple[tuple[str, Any], ...]  # the varied settings without the seeds: its group of replicates
    replicate: int

    @property
    def hash(self) -> str:
        return conf.config_hash(self.config)

    @property
    def run_id(self) -> str:
        return f"{conf.kind_of(self.config)}-{self.hash}"


def parse_vary(kind: str, texts: Sequence[str]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """'lr=0.05,0.1' -> (("lr", (0.05, 0.1)),). A list-valued setting takes alternatives separated by
    '|' ('t1=300,600|600'). Values are parsed and checked as the CLI and the form do; steps in epochs
    are resolved against each point's own training run."""
    specs = conf.settings_of(conf.KINDS[kind])
    out: dict[str, tuple[Any, ...]] = {}
    for text in texts:
        name, eq, values = str(text).partition("=")
        name = name.strip().replace("-", "_")
        if not eq:
            raise ConfigError("--vary", text, "write FIELD=v1,v2,... (e.g. lr=0.05,0.1)")
        if name not in specs:
            raise ConfigError("--vary", text, f"{name!r} is not a setting of {kind}; see `twophase settings`")
        if name in out:
            raise ConfigError("--vary", text, f"{name} is varied twice")
        spec = specs[name][0]
        items = [v for v in values.split("|")] if spec.type in LIST_TYPES else split_list(values)
        if not [v for v in items if v.strip()]:
            raise ConfigError("--vary", text, "give at least one value")
        out[name] = tuple(_value(name, spec, v) for v in items)
    return tuple(out.items())


def _value(name: str, spec: Spec, text: str) -> Any:
    """A typed value; steps written in epochs stay text until the point's run is known (their form, ASCII
    digits included, is checked now: stripping first would drop a no-break space unseen)."""
    if spec.type in ("step", *LIST_TYPES) and "ep" in text:
        parse_text(name, spec, text, iterations_per_epoch=1)
        return text.strip()
    v = parse_text(name, spec, text)
    check(name, spec, v)
    return v


def expand(sweep: Sweep) -> list[Point]:
    """The points, validated, without duplicates; a ConfigError (naming the point) for the first bad one."""
    kind = sweep.kind
    specs = conf.settings_of(conf.KINDS[kind])
    for s in sweep.seeds:
        if s not in specs:
            raise ConfigError("--seeds", s, f"is not a setting of {kind}")
        if specs[s][0].type != "int":
            raise ConfigError("--seeds", s, "replicates vary whole-number seed settings (e.g. data_seed)")
    if not isinstance(sweep.replicates, int) or isinstance(sweep.replicates, bool) or not 1 <= sweep.replicates:
        raise ConfigError("--replicates", sweep.replicates, "must be a whole number >= 1")
    vary = dict(sweep.vary)
    for name, values in vary.items():
        if not values:
            raise ConfigError("--vary", name, "give at least one value")
    listed = [s for s in sweep.seeds if s in vary]
    if listed:  # the seeds' own values are the replicates, zipped across seed fields
        lengths = {len(vary[s]) for s in listed}
        if len(lengths) > 1:
            raise ConfigError("--vary", ", ".join(listed), "seed settings varied together need as many values each")
        n_rep = lengths.pop()
        if sweep.replicates not in (1, n_rep):
            raise ConfigError("--replicates", sweep.replicates, f"the seeds are listed with {n_rep} values")
    else:
        n_rep = sweep.replicates
    base_flat = conf.flat(sweep.base)
    replicas = [{s: (vary[s][r] if s in vary else base_flat[s] + r) for s in sweep.seeds} for r in range(n_rep)]
    settings = [(k, v) for k, v in sweep.vary if k not in sweep.seeds]
    n = n_rep
    for _, values in settings:
        n *= len(values)
    if n > MAX_POINTS:
        raise ConfigError("--vary", f"{n} points", f"a sweep may have at most {MAX_POINTS} points; vary fewer values")
    points: list[Point] = []
    seen: set[str] = set()
    for combo in itertools.product(*[values for _, values in settings]):
        group = tuple((k, v) for (k, _), v in zip(settings, combo, strict=True))
        for r, seeds in enumerate(replicas):
            changes = {**dict(group), **seeds}
            try:
                cfg = conf.with_settings(sweep.base, changes)
            except ConfigError as e:
                where = ", ".join(f"{k}={format_value(specs[k][0], v)}" for k, v in changes.items())
                raise ConfigError(e.field, e.value, f"{e.allowed} (sweep point {where})") from None
            h = conf.config_hash(cfg)
            if h in seen:
                continue
            seen.add(h)
            points.append(Point(cfg, changes, group, r))
    return points


# ---------------------------------------------------------------------------------------------
# Running


def run_sweep(sweep: Sweep, store: Any = None, progress: Callable[[float, str], None] | None = None,
              cancel: Any = None, executor: str = "local") -> SweepResult:
    """Every point, then the summary. Locally: in this process, points sharing a base run one after
    another. On Ray: the points not yet stored as one graph of tasks (`ray_exec.run_points`: base runs,
    then every point's units, then each point's result), the bar moving with the tasks' progress."""
    from twophase_core.experiments.engine import run_experiment, sweep_units
    from twophase_core.storage.store import Store

    store = store if store is not None else Store()
    points = expand(sweep)
    order = sorted(range(len(points)), key=lambda i: points[i].config.train.trajectory_key())
    results: dict[str, Result] = {}
    started = time.time()
    if executor == "ray":
        from twophase_core.execution.on_ray import run_points

        results = load_results(store, points)
        todo = [points[i].config for i in order if points[i].hash not in results]
        if todo:
            store.check_storage()
        stored, finished, units = len(points) - len(todo), [0], [0.0]
        total = sweep_units(todo, store) if todo and progress is not None else 0.0

        def tell(added: float = 0.0) -> None:  # the tasks' units as they grow, and points as they finish
            units[0] += added
            if progress is not None:
                running = min(units[0] / total, 1.0) * len(todo) if total else finished[0]
                progress(min((stored + max(running, finished[0])) / len(points), 0.999),
                         f"{finished[0]} of {len(todo)} points done on Ray")

        for r in run_points(todo, store.files, cancel, on_units=tell if progress is not None else None):
            save_result(store, r)  # only the driver writes the index
            results[r.hash] = r
            finished[0] += 1
            tell()
        order = []
    elif executor != "local":
        raise ConfigError("executor", executor, "choose local or ray")
    for k, i in enumerate(order):
        p = points[i]
        label = ", ".join(f"{a}={b}" for a, b in p.varied.items()) or "base"

        def sub(frac: float, stage: str, k: int = k, label: str = label) -> None:
            if progress is not None:
                progress((k + min(frac, 1.0)) / len(points), f"point {k + 1}/{len(points)} ({label}): {stage}")

        results[p.hash] = run_experiment(p.config, store, progress=sub, cancel=cancel)
    if progress is not None:
        progress(1.0, "done")
    return SweepResult(sweep, points, results, {"seconds": round(time.time() - started, 3),
                                                "points": len(points), "executor": executor})


@dataclass
class SweepResult:
    sweep: Sweep
    points: list[Point]
    results: dict[str, Result]  # by config hash; points without a result yet are missing
    meta: dict[str, Any] = field(default_factory=dict)

    def replicates_of(self, varied: dict[str, Any]) -> list[Result]:
        """The finished results of one group (its varied settings as the JSON writes them)."""
        group = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in varied.items())
        return [self.results[p.hash] for p in self.points if p.group == group and p.hash in self.results]

    def groups(self, n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
        return summarize(self.sweep, self.points, self.results, n_boot=n_boot, seed=seed)

    def to_json(self, n_boot: int = 1000) -> dict[str, Any]:
        return {**self.sweep.to_dict(),
                "runs": [{"varied": _plain(p.varied), "replicate": p.replicate, "hash": p.hash,
                          "kind": self.sweep.kind, "done": p.hash in self.results} for p in self.points],
                "groups": self.groups(n_boot=n_boot), "meta": self.meta}


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def load_results(store: Any, points: Sequence[Point]) -> dict[str, Result]:
    """The stored results of the points that have one (a sweep view while jobs still run)."""
    out = {}
    for p in points:
        r = load_result(store, conf.kind_of(p.config), p.hash)
        if r is not None:
            out[p.hash] = r
    return out


# ---------------------------------------------------------------------------------------------
# Summaries: replicates collapsed, per cell and as a transition


def _replicate_arrays(kind: str, results: Sequence[Result]) -> dict[str, np.ndarray]:
    """(replicates, ...) per metric; chaos averages its perturbation seeds within a replicate first."""
    out: dict[str, np.ndarray] = {}
    for m in METRICS[kind]:
        rows = []
        for r in results:
            a = np.asarray(r.arrays[m], dtype=float)
            if kind == "chaos":
                with np.errstate(all="ignore"):
                    a = np.nanmean(a, axis=0) if a.shape[0] > 1 else a[0]
            rows.append(a)
        out[m] = np.stack(rows)
    return out


def _band(values: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    mean, lo, hi = replicate_band(values, n_boot=n_boot, seed=seed)
    return {"mean": nested(mean), "ci_low": nested(lo), "ci_high": nested(hi)}


def summarize(sweep: Sweep, points: Sequence[Point], results: dict[str, Result], n_boot: int = 1000,
              seed: int = 0) -> list[dict[str, Any]]:
    """One entry per group of replicates that has results: the varied settings (seeds left out), the
    replicates, the grid, each metric's mean and 95% bootstrap interval per cell, and the transition."""
    kind = sweep.kind
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault(p.group, []).append(p)
    out = []
    for group, members in groups.items():
        done = [results[p.hash] for p in members if p.hash in results]
        entry: dict[str, Any] = {"varied": _plain(dict(group)), "replicates": len(done),
                                 "runs": [p.run_id for p in members]}
        if not done:
            out.append({**entry, "transition": None})
            continue
        arrays = _replicate_arrays(kind, done)
        a0 = done[0].arrays
        if kind == "chaos":
            t0 = np.asarray(a0["t0"])
            entry.update({"t0": t0.tolist(), "t1": np.asarray(a0["t1"]).tolist()})
            for m, v in arrays.items():
                entry[m] = _band(v, n_boot, seed)
            final = {m: v[:, :, -1] for m, v in arrays.items()}
            entry["at_final_t1"] = {m: nested(v) for m, v in final.items()}  # (replicates, t0): what t* is fit to
            est = estimate_transitions(t0, final, n_boot=n_boot, seed=seed)
            entry["transition"] = transition_json(est)
            entry["estimates"] = {m: e.to_dict() for m, e in est.items()}  # found or not, with the fit
        elif kind == "cone":
            entry["iters"] = np.asarray(a0["iters"]).tolist()
            entry["S"] = _band(arrays["S"], n_boot, seed)
            dt = int(min(a0["dts"]))
            t = np.asarray(a0[f"neigh_t_{dt}"])
            s = np.stack([np.asarray(r.arrays[f"neigh_s_{dt}"], dtype=float) for r in done])
            entry["velocity"] = {"dt": dt, "t": t.tolist(), "replicates": nested(s), **_band(s, n_boot, seed)}
            est = estimate_kernel_transition(t, s, n_boot=n_boot, seed=seed)
            entry["transition"] = transition_json({"S": est})
            entry["estimates"] = {"S": est.to_dict()}
        else:
            entry["switch"] = np.asarray(a0["switch"]).tolist()
            entry["acc_linear"] = _band(arrays["acc_linear"], n_boot, seed)
            entry["transition"] = None
        out.append(entry)
    return out


def figure_groups(groups: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sweep JSON groups -> the groups `figures.transition_figure` draws (label, grid, replicate values,
    and the transitions already estimated, so the figure shows exactly the JSON's t*)."""
    out = []
    for g in groups:
        label = ", ".join(f"{k}={v}" for k, v in g["varied"].items()) or "base"
        tr = g.get("estimates") or {}
        if "at_final_t1" in g:
            values = {m: np.asarray(v, dtype=float) for m, v in g["at_final_t1"].items()}
            out.append({"label": label, "t0": g["t0"], "values": values, "transitions": tr})
        elif "velocity" in g:
            out.append({"label": label, "t0": g["velocity"]["t"], "transitions": tr,
                        "values": {"S": np.asarray(g["velocity"]["replicates"], dtype=float)}})
    return out


# ---------------------------------------------------------------------------------------------
# As jobs (the app): one record per sweep, one ordinary job per point


def sweep_key(sweep_id: str) -> str:
    return f"sweep/{sweep_id}"


def submit_sweep(jm: Any, sweep: Sweep) -> dict[str, Any]:
    """Record the sweep and queue its points on the job runner (points sharing a base run queued
    together); a point already computed or queued is attached to, not run again. A stored record of this
    sweep that fails its checks is replaced: the user is submitting the sweep again."""
    points = expand(sweep)
    sid = sweep.id()
    old = load_sweep(jm.store, sid)
    rec = {"id": sid, "sweep": sweep.to_dict(), "runs": [p.run_id for p in points],
           "created": old["created"] if old is not None and "created" in old else time.time()}
    jm.store.put_json(sweep_key(sid), rec)
    for p in sorted(points, key=lambda p: p.config.train.trajectory_key()):
        jm.submit(p.config)
    return rec


def load_sweep(store: Any, sweep_id: str) -> dict[str, Any] | None:
    """The sweep's record; None if there is none or it fails its checks (`list_sweeps` names those)."""
    return R.read(store, "sweep", sweep_id)[0]


def list_sweeps(store: Any) -> tuple[list[dict[str, Any]], list[R.RecordProblem]]:
    """Every sweep record, newest first, and the records skipped as failing their checks (left in place)."""
    recs, skipped = R.read_all(store, "sweep")
    return sorted(recs, key=lambda r: r.get("created", 0.0), reverse=True), skipped


def sweep_progress(jm: Any, rec: dict[str, Any]) -> dict[str, Any]:
    """Overall progress of a sweep's jobs: the mean of their progress, and how many are in each state."""
    counts = {s: 0 for s in ("queued", "running", "done", "failed", "cancelled", "missing")}
    total = 0.0
    for rid in rec["runs"]:
        r = jm.get(rid)
        if r is None:
            kind, _, h = rid.partition("-")
            done = load_result(jm.store, kind, h) is not None
            counts["done" if done else "missing"] += 1
            total += 1.0 if done else 0.0
        else:
            counts[r.status] += 1
            total += 1.0 if r.status == "done" else r.progress
    return {"progress": total / max(len(rec["runs"]), 1), "points": len(rec["runs"]), **counts}


def sweep_result(store: Any, rec: dict[str, Any]) -> SweepResult:
    """The sweep with whatever results are stored so far (its groups fill in as points finish)."""
    sweep = Sweep.from_dict(rec["sweep"])
    points = expand(sweep)
    return SweepResult(sweep, points, load_results(store, points), {"points": len(points)})


def sweep_command(sweep: Sweep, preset_name: str | None = None, json_out: str = "sweep.json") -> str:
    """The `twophase sweep ...` line that reproduces the sweep (its base as `command_for` writes it)."""
    import shlex

    from twophase_core.interfaces.cli import command_for

    base = shlex.split(command_for(sweep.base, preset_name, json_out=None))
    specs = conf.settings_of(type(sweep.base))
    parts = ["twophase", "sweep", *base[1:]]
    for name, values in sweep.vary:
        sep = "|" if specs[name][0].type in LIST_TYPES else ","
        parts += ["--vary", f"{name}={sep.join(format_value(specs[name][0], v) for v in values)}"]
    if tuple(sweep.seeds) != DEFAULT_SEEDS:
        for s in sweep.seeds:
            parts += ["--seeds", s]
    if sweep.replicates != 1:
        parts += ["--replicates", str(sweep.replicates)]
    parts += ["--json", json_out]
    return " ".join(shlex.quote(p) for p in parts)
