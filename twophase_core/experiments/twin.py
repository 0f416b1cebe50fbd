"""A phase diagram's other side (issue 17): the cone sweep beside a chaos sweep, and the chaos sweep beside a cone one.

Two sweeps are twins when one is chaos and the other cone, they vary the same two settings (seeds aside) over the
same values, and their base runs are the same trajectories but for those two settings: every training setting
equal except the varied ones and those that cannot change a trajectory (T, checkpoint_every, the data's folder).
Then cell (x, y) of one diagram and cell (x, y) of the other are read off the same base runs, so C's t* and S's t*
can be set side by side. A refined sweep is matched by the sweep it started from (its T was raised by the rounds,
which a trajectory does not see anyway). Nothing here imports torch or Streamlit (the Sweeps page calls it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from twophase_core.experiments import registry
from twophase_core.experiments.presets import PRESETS, preset
from twophase_core.experiments.sweep import Sweep, expand
from twophase_core.settings import config as conf
from twophase_core.settings.spec import ConfigError

TWIN_KIND = {"chaos": "cone", "cone": "chaos"}
TWIN_METRIC = {"chaos": "C", "cone": "S"}  # the metric whose t* a side's diagram shows beside the other's
NOT_TRAJECTORY = ("iterations", "checkpoint_every", "data_root", "download")  # (TrainConfig._NOT_TRAJECTORY)


def started_from(rec: Mapping[str, Any]) -> Sweep:
    """The sweep a record was submitted as: a refined one's first round, else the sweep itself."""
    refine = rec.get("refine")
    start = refine.get("start") if isinstance(refine, Mapping) else None
    return Sweep.from_dict(start if isinstance(start, dict) else rec["sweep"])


def varied_pair(sweep: Sweep) -> tuple[str, str] | None:
    """The two settings a sweep varies (seeds aside), in its order; None unless exactly two."""
    names = [k for k, _ in sweep.vary if k not in sweep.seeds]
    return (names[0], names[1]) if len(names) == 2 else None


def signature(sweep: Sweep) -> tuple[str, frozenset[tuple[str, tuple[str, ...]]]] | None:
    """What twins share: the base run's training settings but the varied and non-trajectory ones, and the two
    varied settings with their values (as sets: the order they were given in does not matter). None unless the
    sweep varies exactly two settings."""
    pair = varied_pair(sweep)
    if pair is None:
        return None
    train = {k: v for k, v in conf.to_dict(sweep.base.train).items() if k not in (*NOT_TRAJECTORY, *pair)}
    vary = dict(sweep.vary)
    axes = frozenset((k, tuple(sorted(json.dumps(_plain(v), sort_keys=True) for v in vary[k]))) for k in pair)
    return json.dumps(train, sort_keys=True, default=str), axes


def _plain(v: object) -> object:
    return list(v) if isinstance(v, tuple) else v


def find_twin(rec: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The newest stored sweep record (`records` newest first, as `list_sweeps` gives them) that is `rec`'s
    twin; None when there is none, or `rec` is not a two-setting chaos or cone sweep."""
    sweep = started_from(rec)
    other = TWIN_KIND.get(sweep.kind)
    mine = signature(sweep)
    if other is None or mine is None:
        return None
    for r in records:
        if r.get("id") == rec.get("id") or (r.get("sweep") or {}).get("kind") != other:
            continue
        try:
            theirs = signature(started_from(r))
        except (ConfigError, KeyError, TypeError, ValueError):
            continue
        if theirs == mine:
            return dict(r)
    return None


def on_axes_of(twin: Sweep, sweep: Sweep) -> Sweep:
    """`twin` with its varied settings in `sweep`'s order, so its phase diagram has the same x and y."""
    order = [k for k, _ in sweep.vary]
    vary = sorted(twin.vary, key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    return dataclasses.replace(twin, vary=tuple(vary))


def missing_twin(sweep: Sweep) -> Sweep | None:
    """The other side to run when none is stored: the same training run, varied settings, seeds and replicates,
    with the other kind's settings from the first preset whose training run is this one's (but the varied and
    non-trajectory settings), else the other kind's defaults; None where no such sweep expands (say, a varied
    setting the other kind does not have, or its checkpoints past this T)."""
    other = TWIN_KIND.get(sweep.kind)
    if other is None or varied_pair(sweep) is None:
        return None
    train = sweep.base.train
    skip = (*NOT_TRAJECTORY, *(k for k, _ in sweep.vary))
    same = [p for p in PRESETS if {k: v for k, v in conf.to_dict(preset(p, other).train).items() if k not in skip}
            == {k: v for k, v in conf.to_dict(train).items() if k not in skip}]
    bases = [dataclasses.replace(preset(p, other), train=train) for p in same] + [registry.get(other).default(train)]
    for base in bases:
        twin = Sweep(base, sweep.vary, sweep.seeds, sweep.replicates)
        try:
            expand(twin)
        except (ConfigError, ArithmeticError, KeyError, TypeError, ValueError):
            continue
        return twin
    return None
