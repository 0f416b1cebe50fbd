"""The Chaos Effect (paper Fig. 2-3): perturb a copy at t0, train it under the base run's SGD noise, compare at t1.

C (parameter dissimilarity), B (loss barrier) and D (disagreement) over (t0, t1), one branch per (t0, seed), the
base run as the control (or, on the stacked path, a control trained inside the stack). The unit of work is one
t0: every seed's branch from the base checkpoint at t0 and its cells at every later t1. Definitions:
docs/science.md.

Axes of the result's arrays: `C`, `B`, `D`, `acc_branch`: (perturbation seed, t0, t1), NaN where t1 <= t0;
`path`: (seed, t0, t1, alpha); `realized_eps_norm`: (seed, t0); `acc_base`: (t1,).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from twophase_core.experiments import registry
from twophase_core.experiments.kind import Kind, band
from twophase_core.experiments.registry import Plan
from twophase_core.experiments.result import Result, nested
from twophase_core.experiments.running import Live, Tracker
from twophase_core.settings import config as conf
from twophase_core.settings.spec import MAX_INT, MAX_SEED, ConfigError, setting

if TYPE_CHECKING:
    import pandas as pd

    from twophase_core.science.train import CancelToken, Training

@dataclass(frozen=True)
class ChaosConfig(conf.ExperimentConfig):
    """Perturb at t0, train perturbed copies under the base run's SGD noise, compare at t1."""

    kind: ClassVar[str] = "chaos"
    t0: tuple[int, ...] = setting((0, 100, 500), "iterations where a copy is perturbed", "steps",
                                  label="t0: perturb at", **conf.STEPS)
    t1: tuple[int, ...] = setting((200, 600, 1000), "iterations where the copies are compared", "steps",
                                  label="t1: compare at", **conf.STEPS)
    eps: float = setting(1e-7, "size of the nudge (see eps_mode); 0 is the exactness control", "float", lo=0, hi=1,
                         hi_text="a perturbation is meant to be tiny; 1e-7 is the paper's")
    eps_mode: str = setting("per-coordinate", "per-coordinate: N(0, eps^2) on every weight; total-l2: |eps|_2 = eps; "
                            "relative: |eps|_2 = eps |theta_t0|_2", "choice", choices=conf.EPS_MODES)
    perturb_seeds: tuple[int, ...] = setting((0,), "one perturbed copy per seed; figures show their mean", "ints",
                                             lo=0, hi=MAX_SEED, label="perturbation seeds")
    n_alpha: int = setting(30, "points on the interpolation path of the loss barrier", "int", lo=2, hi=1000,
                           label="interpolation points")
    bn: str = setting("interpolate", "BatchNorm statistics along the path: interpolate them, or reset "
                      "(recompute on training batches)", "choice", choices=conf.BN_MODES, label="BatchNorm on the path")
    eval_size: int = setting(0, conf.EVAL_HELP, "int", lo=0, hi=MAX_INT, **conf.ADVANCED)
    lockstep: str = setting("auto", "how perturbed copies train: auto (measured), loop, or stack (vmap)", "choice",
                            choices=conf.LOCKSTEP, **conf.ADVANCED)

    def check(self) -> None:
        T = self.train.iterations
        conf.check_in_run("t0", self.t0, 0, T - 1, T)
        conf.check_in_run("t1", self.t1, 1, T, T)
        if min(self.t0) >= max(self.t1):
            raise ConfigError("t1", self.t1, f"needs at least one t1 > the smallest t0 ({min(self.t0)})")
        cells = sum(t1 > t0 for t0 in self.t0 for t1 in self.t1) * len(self.perturb_seeds)
        if cells * self.n_alpha > 10**7:
            raise ConfigError("n_alpha", self.n_alpha, f"{cells} cells x {self.n_alpha} points is too many evaluations")

    def base_checkpoints(self) -> set[int]:
        return set(self.t0) | set(self.t1)

    def unit_keys(self) -> list[int]:
        return sorted(self.t0)


Row = dict[str, np.ndarray]  # a unit: one t0's arrays over (seed, t1)


class Chaos(Kind[ChaosConfig, Row]):
    name = "chaos"
    title = "Chaos Effect"
    help = "Chaos Effect: C, B, D over (t0, t1)"
    config = ChaosConfig
    metrics = ("C", "B", "D")
    page = "pages/chaos.py"
    icon = ":material/scatter_plot:"
    settings_title = "Perturbation"
    unit_word = "row"

    def plan(self, training: Training, cfg: ChaosConfig, executor: str) -> Plan:
        """The lockstep path every row shares: loop (the base run is the control) or stack (vmap, with its own
        control); 'auto' measures which is faster for this model."""
        from twophase_core.science import lockstep

        how = cfg.lockstep if cfg.lockstep != "auto" else lockstep.choose_path(training, len(cfg.perturb_seeds),
                                                                               with_control=True)
        if executor == "ray" and cfg.lockstep == "auto" and training.device.type != "cpu":
            how = "stack"  # rows may land on other GPUs than the base run's: the control trains beside its copies
        return {"how": how}

    def describe(self, plan: Plan) -> dict[str, Any]:
        return {"lockstep": plan["how"]}

    def unit_cost(self, training: Training, cfg: ChaosConfig, plan: Plan | None = None) -> float:
        how = plan["how"] if plan else "loop"  # before the plan: counted on the loop path
        return sum(self._row_cost(training, cfg, t0, how) for t0 in cfg.t0)

    @staticmethod
    def _row_cost(training: Training, cfg: ChaosConfig, t0: int, how: str) -> float:
        """One row in progress units: its branches' SGD steps (and the stacked control's) and its cells'
        evaluations."""
        from twophase_core.science import lockstep

        later = [t1 for t1 in sorted(cfg.t1) if t1 > t0]
        steps = sum(training.branch(t0, cfg.eps, cfg.eps_mode, s).steps_needed(later) for s in cfg.perturb_seeds)
        if how == "stack":  # the stack trains its own control: the base run went through the plain path
            steps += lockstep.control_branch(training, t0).steps_needed(later)
        return steps + len(later) * len(cfg.perturb_seeds) * (2.0 + cfg.n_alpha / 10)

    def first_look(self, cfg: ChaosConfig, plan: Plan) -> tuple[int, int] | None:
        """The smallest t0's first cell, on the loop path (one branch against the base run, a cell per t1): the
        base run to that t1, the branch beside it, the cell. The stacked path trains its copies together to
        every t1 at once, so it has no early part."""
        if plan["how"] != "loop":
            return None
        t0 = min(cfg.t0)
        return t0, min(t1 for t1 in cfg.t1 if t1 > t0)

    def run_unit(self, training: Training, cfg: ChaosConfig, key: int, plan: Plan, tracker: Tracker,
                 cancel: CancelToken | None = None, on_part: Callable[[Row], None] | None = None) -> Row:
        """The row of t0 = `key`: the branches from the base checkpoint at t0 (stacked with their own control, or
        one by one against the base run as control, as the plan says) and every cell at t1 > t0. Arrays over
        (seed, t1) on the config's whole t1 grid, NaN where t1 <= t0: C, B, D, acc_branch; path (seed, t1, alpha);
        realized (seed,)."""
        return self.run_part(training, cfg, key, plan, tracker, cancel, on_part, None, None)

    def run_part(self, training: Training, cfg: ChaosConfig, key: int, plan: Plan, tracker: Tracker,
                 cancel: CancelToken | None, on_part: Callable[[Row], None] | None, upto: int | None,
                 before: Row | None) -> Row:
        """The row's cells at t1 <= `upto` (all when None), skipping those `before` holds (loop path only)."""
        from twophase_core.science import lockstep, metrics

        t0, how = key, plan["how"]
        x, y = self.eval_data(training, cfg)
        t1s, seeds = sorted(cfg.t1), list(cfg.perturb_seeds)
        later = [t1 for t1 in t1s if t1 > t0 and (upto is None or t1 <= upto)]
        train_x = training.ds.x_train if cfg.bn == "reset" else None
        if before is not None:
            row: Row = {k: np.array(v, copy=True) for k, v in before.items()}
        else:
            row = {k: np.full((len(seeds), len(t1s)), np.nan) for k in ("C", "B", "D", "acc_branch")}
            row["path"] = np.full((len(seeds), len(t1s), cfg.n_alpha), np.nan)
            row["realized"] = np.zeros(len(seeds))
        if (upto is not None or before is not None) and how == "stack":
            raise ValueError("the stacked path trains a row's copies together: it has no part to run first")
        branches = [training.branch(t0, cfg.eps, cfg.eps_mode, s) for s in seeds]
        if how == "stack":
            tracker.set_stage(f"branches t0={t0} ({len(seeds) + 1} copies stacked)")
            branches = lockstep.ensure_branches_stacked(training, branches, later, True, tracker.add, cancel)
            control = lockstep.control_branch(training, t0)
        else:
            control = training.base()
        for si, (seed, br) in enumerate(zip(seeds, branches, strict=True)):
            row["realized"][si] = training.perturbation_norms(t0, cfg.eps, cfg.eps_mode, seed)["realized"]
            for t1 in later:
                if before is not None and not np.isnan(before["C"][si, t1s.index(t1)]):
                    continue  # computed by the first part
                if how != "stack":  # up to this t1 only, so its cell shows before the branch trains on (same bits:
                    tracker.set_stage(f"branch t0={t0} seed={seed}")  # a branch resumed from its checkpoint)
                    br.ensure([t1], tracker.add, cancel)
                tracker.set_stage(f"metrics t0={t0}")
                if cancel is not None:
                    cancel.check()
                j = t1s.index(t1)
                pm = metrics.pair_metrics(control.model(t1), br.model(t1), x, y, cfg.n_alpha, cfg.bn, train_x)
                row["C"][si, j], row["B"][si, j], row["D"][si, j] = pm["C"], pm["B"], pm["D"]
                row["acc_branch"][si, j] = pm["acc_b"]
                row["path"][si, j] = pm["losses"]
                tracker.add(2.0 + cfg.n_alpha / 10)
                if on_part is not None:
                    on_part(row)
        return row

    def assemble(self, training: Training, cfg: ChaosConfig, plan: Plan, done: Mapping[int, Row], live: Live,
                 final: bool) -> dict[str, np.ndarray]:
        t0s, t1s, seeds = sorted(cfg.t0), sorted(cfg.t1), list(cfg.perturb_seeds)
        shape = (len(seeds), len(t0s), len(t1s))
        out = {k: np.full(shape, np.nan) for k in ("C", "B", "D", "acc_branch")}
        path = np.full(shape + (cfg.n_alpha,), np.nan)
        realized = np.zeros(shape[:2])
        for t0, row in done.items():
            i = t0s.index(t0)
            for k in out:
                out[k][:, i, :] = row[k]
            path[:, i, :] = row["path"]
            realized[:, i] = row["realized"]
        measured = all(t1 in live.acc for t1 in t1s) and live.curve is not None
        acc_base = np.array([live.acc[t1] for t1 in t1s]) if measured else np.full(len(t1s), np.nan)
        return {"t0": np.array(t0s), "t1": np.array(t1s), "seeds": np.array(seeds),
                "alphas": np.linspace(0.0, 1.0, cfg.n_alpha), "path": path, "realized_eps_norm": realized,
                "acc_base": acc_base, **out}

    def extra_checkpoints(self, cfg: ChaosConfig) -> int:
        """One branch checkpoint per later t1, per t0 and seed, and the stacked path's control."""
        return sum(sum(1 for t1 in cfg.t1 if t1 > t0) * (len(cfg.perturb_seeds) + 1) for t0 in cfg.t0)

    # -- forms --------------------------------------------------------------------------------
    def to_json(self, r: Result) -> dict[str, Any]:
        a = r.arrays
        mean = lambda k: np.nanmean(a[k], axis=0) if a[k].shape[0] > 1 else a[k][0]
        with np.errstate(all="ignore"):
            return {
                "t0": a["t0"].tolist(), "t1": a["t1"].tolist(),
                "C": nested(mean("C")), "B": nested(mean("B")), "D": nested(mean("D")),
                "config": r.config, "hash": r.hash,
                "realized_eps_norm": a["realized_eps_norm"].mean(axis=0).tolist(),
                "acc_base": a["acc_base"].tolist(),
                "per_seed": {"seeds": a["seeds"].tolist(), "C": nested(a["C"]), "B": nested(a["B"]),
                             "D": nested(a["D"]), "realized_eps_norm": a["realized_eps_norm"].tolist()},
                "meta": r.meta,
            }

    def to_frame(self, r: Result) -> pd.DataFrame:
        """One row per cell and seed: (seed, t0, t1, C, B, D, acc_branch, acc_base, realized_eps_norm)."""
        import pandas as pd

        a = r.arrays
        seeds, t0s, t1s = a["seeds"], a["t0"], a["t1"]
        s, i, j = np.meshgrid(np.arange(len(seeds)), np.arange(len(t0s)), np.arange(len(t1s)), indexing="ij")
        keep = (t1s[j] > t0s[i]).ravel()  # cells with t1 <= t0 do not exist; NaN elsewhere: not computed yet
        s, i, j = s.ravel()[keep], i.ravel()[keep], j.ravel()[keep]
        return pd.DataFrame({"seed": seeds[s], "t0": t0s[i], "t1": t1s[j],
                             **{k: a[k][s, i, j] for k in ("C", "B", "D", "acc_branch")},
                             "acc_base": a["acc_base"][j], "realized_eps_norm": a["realized_eps_norm"][s, i]})

    def summary(self, r: Result) -> str:
        a = r.arrays
        last = {k: a[k].mean(axis=0)[:, -1] for k in ("C", "B", "D")}
        lines = [f"chaos {r.hash} ({r.meta.get('seconds')}s): at t1={int(a['t1'][-1])}"]
        for i, t0 in enumerate(a["t0"]):
            lines.append(f"  t0={int(t0):6d}  C={last['C'][i]:.3e}  B={last['B'][i]:.4f}  D={last['D'][i]:.4f}"
                         f"  |eps|={a['realized_eps_norm'][:, i].mean():.2e}")
        return "\n".join(lines)

    def summarize(self, done: list[Result], n_boot: int, seed: int) -> dict[str, Any]:
        """Per metric, the mean and band per (t0, t1) (each replicate averaged over its perturbation seeds first),
        the values at the final t1 by replicate, and the transition t* fitted to them."""
        from twophase_core.science.transition import estimate_transitions, transition_json

        arrays = {}
        for m in self.metrics:
            rows = []
            for r in done:
                a = np.asarray(r.arrays[m], dtype=float)
                with np.errstate(all="ignore"):
                    rows.append(np.nanmean(a, axis=0) if a.shape[0] > 1 else a[0])
            arrays[m] = np.stack(rows)
        a0 = done[0].arrays
        t0 = np.asarray(a0["t0"])
        entry: dict[str, Any] = {"t0": t0.tolist(), "t1": np.asarray(a0["t1"]).tolist()}
        for m, v in arrays.items():
            entry[m] = band(v, n_boot, seed)
        final = {m: v[:, :, -1] for m, v in arrays.items()}
        entry["at_final_t1"] = {m: nested(v) for m, v in final.items()}  # (replicates, t0): what t* is fit to
        est = estimate_transitions(t0, final, n_boot=n_boot, seed=seed)
        entry["transition"] = transition_json(est)
        entry["estimates"] = {m: e.to_dict() for m, e in est.items()}  # found or not, with the fit
        return entry


CHAOS = registry.register(Chaos())
