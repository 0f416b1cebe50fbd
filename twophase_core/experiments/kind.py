"""`Kind`: an experiment kind from a few pieces, run the one way every experiment runs.

Every experiment is its base run, then units of work, then an assembly: the base run trains (once per
trajectory, whoever needs it) up to every checkpoint the config reads; a plan fixes what all units must share
(a path, a sample set); each unit (a chaos row, a cone kernel, a linear switch time) is a pure function of the
config, the plan, its key and the stored checkpoints, so it runs here or as a Ray task with the same result;
the assembly turns the units into the result's arrays. A kind writes `plan`, `unit_cost`, `run_unit` and
`assemble` (and its forms: JSON, table, summary line, sweep summary); `compute` strings them together with the
live training curve, partial results and progress. Nothing here knows a kind by name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

import numpy as np

from twophase_core.experiments.registry import Plan, Remote
from twophase_core.experiments.result import Result, nested
from twophase_core.experiments.running import Live, Progress, ProgressCallback, Tracker, eval_set, meta, waiting
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go
    import torch

    from twophase_core.science.train import CancelToken, Training

C = TypeVar("C", bound=conf.ExperimentConfig)  # the kind's config class
U = TypeVar("U")  # what one unit of work returns (a chaos row of arrays, a cone kernel's file, an accuracy)
# What every unit of one run shares, fixed once (`Kind.plan`): JSON-ready values under the kind's own keys
class Kind(Generic[C, U]):
    """The common part of every experiment kind (registry.Experiment); subclasses set the class attributes and
    write the pieces below `compute`. `Kind[ChaosConfig, Row]`: the config class it takes, what a unit returns."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    help: ClassVar[str] = ""
    config: ClassVar[type[conf.ExperimentConfig]] = conf.ExperimentConfig  # C (a ClassVar cannot say so)
    metrics: ClassVar[tuple[str, ...]] = ()
    page: ClassVar[str | None] = None  # the app's page file (None: the generic result page)
    icon: ClassVar[str] = ":material/science:"  # the app's menu icon (Material Symbols)
    settings_title: ClassVar[str] = "Settings"  # the heading of the kind's own fields in the app's form
    unit_word: ClassVar[str] = "unit"  # a unit in stage messages: 'row', 'kernel', 'switch time'
    show_units: ClassVar[bool] = True  # partial results show the units done so far (else only the live curve)

    # -- the run ----------------------------------------------------------------------------
    def compute(self, cfg: C, store: Store, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None,
                remote: Remote | None = None, plan: Plan | None = None,
                units: Mapping[int, tuple[U, int]] | None = None, executor: str = "local") -> Result:
        """The result, computed (looked up and stored by the caller: execution.run). Units run here one after
        another, or through `remote` (Ray tasks); `plan` and `units` (each unit's output and the SGD steps it
        took, computed elsewhere with that plan: a Ray sweep) only assemble them."""
        from twophase_core.science.train import Training

        started, h = time.time(), conf.config_hash(cfg)
        training = Training(cfg.train, store)
        plan = plan if plan is not None else self.plan(training, cfg, executor)
        keys, needed = cfg.unit_keys(), sorted(cfg.base_checkpoints())
        base = training.base()
        prog = Progress(progress, base.steps_needed(needed) + self.unit_cost(training, cfg, plan))
        prog.set_stage("base run")
        x, y = self.eval_data(training, cfg)
        done: dict[int, U] = {}
        shown: dict[int, U] = {}  # units done, and the one under way as far as it got (chaos: its cells)
        last_sent = [0.0]

        def result(extra: dict[str, Any], final: bool) -> Result:
            arrays = self.assemble(training, cfg, plan, done if final else shown, live, final)
            if final:
                extra = {**extra, **self.final_meta(training, cfg, plan, done, arrays)}
            else:
                arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}  # a snapshot: work goes on
            return Result(self.name, conf.to_dict(cfg), h, {**arrays, **live.arrays()},
                          meta(started, training, **self.describe(plan), **extra))

        def send(force: bool = False) -> None:
            if partial is not None and (force or time.time() - last_sent[0] > 1.0):
                last_sent[0] = time.time()
                partial(result({"partial": True, "units_done": len(done)}, final=False))

        live = Live(training, x, y, lambda: send(force=True))
        first = self.first_look(cfg, plan) if partial is not None and units is None and remote is None else None
        if first is not None:  # watched: the first cell as soon as the base run has reached it, then the rest
            key, upto = first
            base.ensure([c for c in needed if c <= upto], live.step(prog.add), cancel, on_wait=waiting(prog))

            def part_first(out: U, key: int = key) -> None:
                shown[key] = out
                send(force=True)

            shown[key] = self.run_part(training, cfg, key, plan, prog, cancel, part_first, upto, None)
            prog.set_stage("base run")
        base.ensure(needed, live.step(prog.add), cancel, on_wait=waiting(prog))
        live.finish(needed)
        if self.show_units:
            send(force=True)
        task_steps = 0
        if units is not None or remote is not None:
            given = units.items() if units is not None else None
            if given is None:
                prog.set_stage(f"{len(keys)} {self.unit_word}s as Ray tasks")
            arrived: Iterable[tuple[int, tuple[U, int]]] = given or self._from_remote(remote, cfg, plan, prog.add)
            for n, (key, (out, steps)) in enumerate(arrived, 1):
                done[key] = shown[key] = out
                task_steps += steps
                if given is None:
                    prog.set_stage(f"{len(keys)} {self.unit_word}s as Ray tasks: {n} done")
                if self.show_units:
                    send(force=True)
        else:
            for key in keys:
                if cancel is not None:
                    cancel.check()

                def part(out: U, key: int = key) -> None:
                    shown[key] = out
                    if self.show_units:
                        send()

                if first is not None and key == first[0]:  # its first part is done: the rest of it
                    done[key] = shown[key] = self.run_part(training, cfg, key, plan, prog, cancel, part, None,
                                                           shown[key])
                else:
                    done[key] = shown[key] = self.run_unit(training, cfg, key, plan, prog, cancel, part)
                if self.show_units:
                    send(force=True)
        r = result({"executor": executor}, final=True)
        r.meta["sgd_steps"] += task_steps
        return r

    @staticmethod
    def _from_remote(remote: Remote | None, cfg: C, plan: Plan,
                     add: Callable[[float], None]) -> Iterator[tuple[int, tuple[U, int]]]:
        """The units `remote` runs elsewhere, as they finish: this kind's `run_unit` outputs (Ray tasks)."""
        if remote is None:
            raise TypeError("compute: an empty `units` and no `remote`")
        return cast("Iterator[tuple[int, tuple[U, int]]]", remote(cfg, plan, add))

    # -- the pieces a kind writes -------------------------------------------------------------
    def eval_data(self, training: Training, cfg: C) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the base run's live accuracy (and the kind's own evaluations) are measured."""
        return eval_set(training, getattr(cfg, "eval_size", 0))

    def plan(self, training: Training, cfg: C, executor: str) -> Plan:
        """What every unit of one run must share, fixed once before the base run (nothing, by default)."""
        return {}

    def describe(self, plan: Plan) -> dict[str, Any]:
        """What of the plan goes into the result's metadata."""
        return {}

    def unit_cost(self, training: Training, cfg: C, plan: Plan | None = None) -> float:
        """Progress units (SGD steps and their equivalents) all units will take; `plan` None: before it is made."""
        return float(len(cfg.unit_keys()))

    def run_unit(self, training: Training, cfg: C, key: int, plan: Plan, tracker: Tracker,
                 cancel: CancelToken | None = None, on_part: Callable[[U], None] | None = None) -> U:
        """One unit of work (needs the base checkpoints the config reads); `on_part(out)` may show it half done."""
        raise NotImplementedError(f"{type(self).__name__}.run_unit")

    def first_look(self, cfg: C, plan: Plan) -> tuple[int, int] | None:
        """(unit key, base iteration) when a unit can show its first part once the base run has reached that
        iteration: a watched run (a job with a page open) then trains the base run that far, runs that part
        (`run_part(..., upto=iteration)`) and only then the rest of the base run, so the first cell is on screen
        seconds after the click instead of after the whole base run. The same work in another order: the base
        run resumes from its checkpoint, bit for bit. None (the default): the base run trains whole first."""
        return None

    def run_part(self, training: Training, cfg: C, key: int, plan: Plan, tracker: Tracker,
                 cancel: CancelToken | None, on_part: Callable[[U], None] | None, upto: int | None,
                 before: U | None) -> U:
        """The unit `key` up to base iteration `upto` (None: to its end), going on from `before` (what an
        earlier call up to some iteration returned). Only kinds with a `first_look` need it."""
        raise NotImplementedError(f"{type(self).__name__}.run_part")

    def assemble(self, training: Training, cfg: C, plan: Plan, done: Mapping[int, U], live: Live,
                 final: bool) -> dict[str, np.ndarray]:
        """The result's arrays (the live curve is added) from the units `done` (all of them when `final`)."""
        raise NotImplementedError(f"{type(self).__name__}.assemble")

    def final_meta(self, training: Training, cfg: C, plan: Plan, done: Mapping[int, U],
                   arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """What the final result's metadata adds from the units and the arrays (nothing, by default)."""
        return {}

    def extra_checkpoints(self, cfg: C) -> int:
        """Checkpoint files the units write beside the base run's (for the free-space estimate of a job)."""
        return 0

    def default(self, train: conf.TrainConfig) -> conf.ExperimentConfig:
        """This kind on a training run (a preset that does not name this kind): its defaults."""
        return self.config(train=train)

    # -- forms --------------------------------------------------------------------------------
    def to_json(self, r: Result) -> dict[str, Any]:
        """The CLI's JSON: every array (NaN as null), the config, hash and metadata."""
        return {**{k: nested(v) for k, v in r.arrays.items()}, "config": r.config, "hash": r.hash, "meta": r.meta}

    def to_frame(self, r: Result) -> pd.DataFrame:
        """Long form for notebooks; by default one row per unit of work, a column per array along the units
        (the base run's curve, along training steps, is left to `train_t`/`train_loss`)."""
        import pandas as pd

        n = len(conf.from_dict(self.config, r.config).unit_keys())
        return pd.DataFrame({k: v for k, v in r.arrays.items() if np.ndim(v) == 1 and len(v) == n})

    def summary(self, r: Result) -> str:
        """A few lines a person reads after a run."""
        return f"{self.name} {r.hash} ({r.meta.get('seconds')}s): {', '.join(sorted(r.arrays))}"

    def summarize(self, done: list[Result], n_boot: int, seed: int) -> dict[str, Any]:
        """A sweep group's entry: each metric's mean and 95% bootstrap band over the replicates `done`."""
        out: dict[str, Any] = {m: band(np.stack([np.asarray(r.arrays[m], dtype=float) for r in done]), n_boot, seed)
                               for m in self.metrics}
        return {**out, "transition": None}

    def figures(self, r: Result) -> list[tuple[str, go.Figure]]:
        """(title, plotly figure) of a result for the generic result page (kinds with their own page: none)."""
        return []


def band(values: np.ndarray, n_boot: int, seed: int) -> dict[str, object]:
    """(replicates, ...) -> the mean and 95% bootstrap interval per cell, as JSON (NaN as null)."""
    from twophase_core.science.transition import replicate_band

    mean, lo, hi = replicate_band(values, n_boot=n_boot, seed=seed)
    return {"mean": nested(mean), "ci_low": nested(lo), "ci_high": nested(hi)}
