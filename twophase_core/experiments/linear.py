"""Linearised training (paper Fig. 6): train normally to t, then the first-order Taylor model at theta_t until T.

Test accuracy at T of the model linearised at each switch time t, beside full training. The unit of work is one
switch time (needs the base checkpoint at t). Definitions: docs/science.md.

Axes of the result's arrays: `switch`, `acc_linear`, `acc_at_switch`: (switch time,); `acc_full`: a scalar.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from twophase_core.experiments import registry
from twophase_core.experiments.kind import Kind
from twophase_core.experiments.registry import Plan
from twophase_core.experiments.result import Result, nested
from twophase_core.experiments.running import Live, Tracker
from twophase_core.settings import config as conf
from twophase_core.settings.spec import MAX_INT, setting

if TYPE_CHECKING:
    import pandas as pd

    from twophase_core.science.train import CancelToken, Training

LIN_UNITS = 3.0  # a linearised step costs about three plain ones


@dataclass(frozen=True)
class LinearConfig(conf.ExperimentConfig):
    """Train normally to t, then the first-order Taylor model at theta_t until T."""

    kind: ClassVar[str] = "linear"
    switch: tuple[int, ...] = setting((0, 100, 500), "iterations t where training switches to the linearised model",
                                      "steps", label="switch times t", **conf.STEPS)
    bn_stats: str = setting("recompute", "BatchNorm statistics of the linearised model: recompute at theta_t on "
                            "training data, or the checkpoint's", "choice", choices=conf.LINEAR_BN_STATS,
                            label="BN statistics")
    eval_size: int = setting(0, conf.EVAL_HELP, "int", lo=0, hi=MAX_INT, **conf.ADVANCED)

    def check(self) -> None:
        T = self.train.iterations
        conf.check_in_run("switch", self.switch, 0, T - 1, T)

    def base_checkpoints(self) -> set[int]:
        return set(self.switch) | {self.train.iterations}

    def unit_keys(self) -> list[int]:
        return sorted(self.switch)


class Linear(Kind[LinearConfig, float]):
    name = "linear"
    title = "Linearised training"
    help = "linearised training from theta_t"
    config = LinearConfig
    metrics = ("acc_linear",)
    page = "pages/linear.py"
    icon = ":material/show_chart:"
    settings_title = "Linearisation"
    unit_word = "switch time"

    def unit_cost(self, training: Training, cfg: LinearConfig, plan: Plan | None = None) -> float:
        return LIN_UNITS * sum(cfg.train.iterations - t for t in cfg.switch)

    def run_unit(self, training: Training, cfg: LinearConfig, key: int, plan: Plan, tracker: Tracker,
                 cancel: CancelToken | None = None, on_part: Callable[[float], None] | None = None) -> float:
        """The model linearised at theta_t (t = `key`), trained to T: its test accuracy."""
        from twophase_core.science.linearised import linear_accuracy, train_linearised

        tracker.set_stage(f"linearised from t={key}")
        lin, params = train_linearised(training, training.base().state(key), cfg.train.iterations, cfg.bn_stats,
                                       lambda n: tracker.add(LIN_UNITS * n), cancel)
        return linear_accuracy(lin, params, *self.eval_data(training, cfg))

    def assemble(self, training: Training, cfg: LinearConfig, plan: Plan, done: Mapping[int, float], live: Live,
                 final: bool) -> dict[str, np.ndarray]:
        ts, T = sorted(cfg.switch), cfg.train.iterations
        measured = live.curve is not None  # the base run's accuracies, once it is complete
        return {"switch": np.array(ts), "acc_linear": np.array([done.get(t, np.nan) for t in ts], dtype=float),
                "acc_at_switch": np.array([live.acc[t] for t in ts]) if measured else np.full(len(ts), np.nan),
                "acc_full": np.array(live.acc[T] if measured else np.nan)}

    # -- forms --------------------------------------------------------------------------------
    def to_json(self, r: Result) -> dict[str, Any]:
        a = r.arrays
        return {"switch": a["switch"].tolist(), "acc_linear": nested(a["acc_linear"]),
                "acc_at_switch": a["acc_at_switch"].tolist(), "acc_full": float(a["acc_full"]),
                "config": r.config, "hash": r.hash, "meta": r.meta}

    def to_frame(self, r: Result) -> pd.DataFrame:
        """One row per switch time: (switch, acc_linear, acc_at_switch, acc_full)."""
        import pandas as pd

        a = r.arrays
        return pd.DataFrame({"switch": a["switch"], "acc_linear": a["acc_linear"], "acc_at_switch": a["acc_at_switch"],
                             "acc_full": float(a["acc_full"])})

    def summary(self, r: Result) -> str:
        a = r.arrays
        return (f"linear {r.hash} ({r.meta.get('seconds')}s): full training {float(a['acc_full']):.3f}; linearised "
                "from " + ", ".join(f"t={int(t)}: {v:.3f}" for t, v in zip(a["switch"], a["acc_linear"], strict=True)))

    def summarize(self, done: list[Result], n_boot: int, seed: int) -> dict[str, Any]:
        return {"switch": np.asarray(done[0].arrays["switch"]).tolist(), **super().summarize(done, n_boot, seed)}


LINEAR = registry.register(Linear())
