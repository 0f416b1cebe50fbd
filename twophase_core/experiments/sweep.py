"""Sweeps: an experiment with some settings given as lists, expanded to their cartesian product.

Every point is an ordinary experiment config, so it is cached like any other run: a point computed
before costs nothing, and points that differ only in what cannot change the base trajectory (eps,
t0, the barrier's settings, ...) share one base run through the checkpoint store. Fields named as
`seeds` (default `data_seed` and `init_seed` together) are replicates of one setting, not settings:
for each group of replicates the sweep reports, per cell, the mean and a 95% bootstrap interval,
and the transition t* with its interval (twophase_core.transition).

What a sweep is, how it expands and how its results are summarised (each kind summarises its own
replicates: `Kind.summarize`) live here and import neither torch nor Streamlit (the app's process calls
them); running one, here or on Ray, and queueing its points as jobs live in execution/sweeps.py.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import numpy as np
from numpy.typing import ArrayLike

from twophase_core.experiments import registry
from twophase_core.experiments.result import Result, load_result
from twophase_core.settings import config as conf
from twophase_core.settings.spec import ConfigError, SettingValue, Spec, check, format_value, parse_text, split_list
from twophase_core.storage import record_types as R
from twophase_core.storage.store import Store

if TYPE_CHECKING:
    from twophase_core.science.transition import Transition

DEFAULT_SEEDS = ("data_seed", "init_seed")
MAX_POINTS = 999  # a sweep of 1,000 points is a typo more often than a plan
LIST_TYPES = ("steps", "ints", "window")


@dataclass(frozen=True)
class Sweep:
    """What to run: a base config, the varied settings (name -> values, in the order given), which
    settings are replicate seeds, and how many replicates when the seeds are not listed."""

    base: conf.ExperimentConfig
    vary: tuple[tuple[str, tuple[SettingValue, ...]], ...] = ()  # steps in epochs stay text ('2ep')
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
        base = registry.config_from_dict(d["kind"], d["base"])
        vary = tuple((k, tuple(tuple(x) if isinstance(x, list) else x for x in v)) for k, v in d["vary"].items())
        return cls(base, vary, tuple(d["seeds"]), int(d["replicates"]))

    def id(self) -> str:
        return f"sweep-{conf.digest(self.to_dict())}"


@dataclass(frozen=True)
class Point:
    """One experiment of the sweep: its config, the settings it varies, and its replicate."""

    config: conf.ExperimentConfig
    varied: dict[str, SettingValue]  # every varied setting, seeds included
    group: tuple[tuple[str, SettingValue], ...]  # the varied settings without the seeds: its group of replicates
    replicate: int

    @property
    def hash(self) -> str:
        return conf.config_hash(self.config)

    @property
    def run_id(self) -> str:
        return f"{conf.kind_of(self.config)}-{self.hash}"


def parse_vary(kind: str, texts: Sequence[str]) -> tuple[tuple[str, tuple[SettingValue, ...]], ...]:
    """'lr=0.05,0.1' -> (("lr", (0.05, 0.1)),). A list-valued setting takes alternatives separated by
    '|' ('t1=300,600|600'). Values are parsed and checked as the CLI and the form do; steps in epochs
    are resolved against each point's own training run."""
    specs = conf.settings_of(registry.get(kind).config)
    out: dict[str, tuple[SettingValue, ...]] = {}
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


def _value(name: str, spec: Spec, text: str) -> SettingValue:
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
    specs = conf.settings_of(registry.get(kind).config)
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
# Progress units


def sweep_units(configs: list[conf.ExperimentConfig], store: Store) -> float:
    """Progress units of running these experiments from what the store holds: each base run once (the checkpoints
    all its points read) plus every point's units (each kind's `unit_cost`, before its plan)."""
    from twophase_core.science.train import Training

    total = 0.0
    for members in conf.by_base_run(configs).values():
        training = Training(members[0].train, store)
        total += training.base().steps_needed(set().union(*(c.base_checkpoints() for c in members)))
        total += sum(registry.of(c).unit_cost(training, c) for c in members)
    return total


@dataclass
class SweepResult:
    sweep: Sweep
    points: list[Point]
    results: dict[str, Result]  # by config hash; points without a result yet are missing
    meta: dict[str, Any] = field(default_factory=dict)

    def replicates_of(self, varied: Mapping[str, object]) -> list[Result]:
        """The finished results of one group (its varied settings as the JSON writes them)."""
        group = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in varied.items())
        return [self.results[p.hash] for p in self.points if p.group == group and p.hash in self.results]

    def groups(self, n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
        return summarize(self.sweep, self.points, self.results, n_boot=n_boot, seed=seed)

    def to_json(self, n_boot: int = 1000) -> dict[str, Any]:
        groups = self.groups(n_boot=n_boot)
        out = {**self.sweep.to_dict(),
               "runs": [{"varied": _plain(p.varied), "replicate": p.replicate, "hash": p.hash,
                         "kind": self.sweep.kind, "done": p.hash in self.results} for p in self.points],
               "groups": groups, "meta": self.meta}
        diagram = phase_diagram(self.sweep, groups)
        if diagram is not None:
            out["phase_diagram"] = diagram
        return out


def _plain(d: Mapping[str, object]) -> dict[str, object]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def load_results(store: Store, points: Sequence[Point]) -> dict[str, Result]:
    """The stored results of the points that have one (a sweep view while jobs still run)."""
    out = {}
    for p in points:
        r = load_result(store, conf.kind_of(p.config), p.hash)
        if r is not None:
            out[p.hash] = r
    return out


# ---------------------------------------------------------------------------------------------
# Summaries: replicates collapsed, per cell and as a transition


def summarize(sweep: Sweep, points: Sequence[Point], results: dict[str, Result], n_boot: int = 1000,
              seed: int = 0) -> list[dict[str, Any]]:
    """One entry per group of replicates that has results: the varied settings (seeds left out), the
    replicates, the grid, each metric's mean and 95% bootstrap interval per cell, and the transition."""
    experiment = registry.get(sweep.kind)
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
        entry.update(experiment.summarize(done, n_boot, seed))
        out.append(entry)
    return out


def phase_diagram(sweep: Sweep, groups: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """t* over the two settings a sweep varies (seeds aside), per metric, as a grid of cells: each cell the
    outcome, t* and its interval (an unresolved step's two t0), and the reason; None where the group has no
    result yet. None when the sweep does not vary exactly two settings: a diagram needs two axes.

    {"x": name, "y": name, "x_values": [...], "y_values": [...], "cells": {metric: [[cell per x] per y]}}"""
    names = [k for k, _ in sweep.vary if k not in sweep.seeds]
    if len(names) != 2:
        return None
    values = {k: [_plain({k: v})[k] for v in vs] for k, vs in sweep.vary if k in names}
    x, y = names
    by_cell = {(json.dumps(g["varied"].get(x)), json.dumps(g["varied"].get(y))): g for g in groups}
    metrics = sorted({m for g in groups for m in (g.get("estimates") or {})})
    keep = ("outcome", "t_star", "ci_low", "ci_high", "reason", "replicates")
    cells: dict[str, list[list[dict[str, Any] | None]]] = {}
    for m in metrics:
        rows = []
        for vy in values[y]:
            row: list[dict[str, Any] | None] = []
            for vx in values[x]:
                g = by_cell.get((json.dumps(vx), json.dumps(vy)))
                est = (g.get("estimates") or {}).get(m) if g else None
                if est is not None:  # an entry written before outcomes existed: found or none
                    est = {**est, "outcome": est.get("outcome") or ("found" if est.get("found") else "none")}
                row.append(None if est is None else {k: est.get(k) for k in keep})
            rows.append(row)
        cells[m] = rows
    return {"x": x, "y": y, "x_values": values[x], "y_values": values[y], "cells": cells}


class TransitionGroup(TypedDict):
    """One setting with its replicates, as `figures.transition_figure` draws it."""

    label: str  # legend and table name
    t0: ArrayLike  # (n,) iterations, any order
    values: dict[str, np.ndarray]  # metric -> (replicates, n) at the final t1, NaN where none
    # metric -> the estimate (or its to_dict), None for "none found" (the sweep JSON's null); a metric missing
    # here is estimated by the figure
    transitions: NotRequired[Mapping[str, Transition | dict[str, Any] | None]]


def figure_groups(groups: Sequence[dict[str, Any]]) -> list[TransitionGroup]:
    """Sweep JSON groups -> the groups `figures.transition_figure` draws (label, grid, replicate values,
    and the transitions already estimated, so the figure shows exactly the JSON's t*)."""
    out: list[TransitionGroup] = []
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


def _sweep_fields() -> dict[str, R.Field]:
    return {"id": R.Field(str, True), "sweep": R.Field(dict[str, Any], True, _runnable),
            "runs": R.Field(list[str], True), "created": R.Field(float, False, R.unix_time),
            "refine": R.Field(dict[str, Any], False)}  # a refined sweep's rounds (execution/refine.py)


def _runnable(d: Mapping[str, object]) -> str | None:
    """Why a stored sweep is not one this version can expand (what the Sweeps page does with it), else None."""
    spec = {"kind": R.Field(str, True, R.one_of(registry.names())), "base": R.Field(dict[str, Any], True),
            "vary": R.Field(dict[str, list[Any]], True), "seeds": R.Field(list[str], True),
            "replicates": R.Field(int, True, R.at_least(1))}
    bad = R.problem_of(spec, d)
    if bad is not None:
        return f"{bad[0]} {bad[1]}" if bad[0] else bad[1]
    return _unexpandable(json.dumps(d, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _unexpandable(spec: str) -> str | None:
    """Why the sweep (as canonical JSON) does not expand, else None; cached, as a big sweep takes a fraction of a
    second and the Sweeps page lists every sweep on each rerun."""
    d = json.loads(spec)
    if d["replicates"] > MAX_POINTS:  # expand lists the replicates before it counts the points
        return f"replicates must be at most {MAX_POINTS}"
    try:
        expand(Sweep.from_dict(d))
    except (conf.ConfigError, ArithmeticError, KeyError, TypeError, ValueError) as e:  # Arithmetic: 10**400
        return f"is not a sweep this version can run: {R.shown(str(e), 200)}"
    return None


R.register("sweep", R.Schema("sweep/", "sweep", _sweep_fields))


def load_sweep(store: Store, sweep_id: str) -> dict[str, Any] | None:
    """The sweep's record; None if there is none or it fails its checks (`list_sweeps` names those)."""
    return R.read(store, "sweep", sweep_id)[0]


def list_sweeps(store: Store) -> tuple[list[dict[str, Any]], list[R.RecordProblem]]:
    """Every sweep record, newest first, and the records skipped as failing their checks (left in place)."""
    recs, skipped = R.read_all(store, "sweep")
    return sorted(recs, key=lambda r: r.get("created", 0.0), reverse=True), skipped


def sweep_result(store: Store, rec: dict[str, Any]) -> SweepResult:
    """The sweep with whatever results are stored so far (its groups fill in as points finish)."""
    sweep = Sweep.from_dict(rec["sweep"])
    points = expand(sweep)
    return SweepResult(sweep, points, load_results(store, points), {"points": len(points)})
