"""A kind of experiment from outside the package, for tests/test_plugin_kind.py: the parameter norm |theta_t|_2
at every chosen checkpoint of the base run. Nothing in twophase_core names it: it registers itself when imported
($TWOPHASE_PLUGINS=param_norm with this folder on the path)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from twophase_core.experiments import registry
from twophase_core.experiments.kind import Kind
from twophase_core.settings import config as conf
from twophase_core.settings.spec import setting


@dataclass(frozen=True)
class ParamNormConfig(conf.ExperimentConfig):
    kind: ClassVar[str] = "pnorm"
    checkpoints: tuple[int, ...] = setting((0, 30, 60), "iterations where the norm is measured", "steps",
                                           **conf.STEPS)

    def check(self) -> None:
        conf.check_in_run("checkpoints", self.checkpoints, 0, self.train.iterations, self.train.iterations)

    def base_checkpoints(self) -> set[int]:
        return set(self.checkpoints)

    def unit_keys(self) -> list[int]:
        return sorted(self.checkpoints)


class ParamNorm(Kind):
    name = "pnorm"
    title = "Parameter norm"
    help = "the parameter norm at every checkpoint"
    config = ParamNormConfig
    metrics = ("norm",)

    def run_unit(self, training: Any, cfg: ParamNormConfig, key: int, plan: dict[str, Any], tracker: Any,
                 cancel: Any = None, on_part: Callable[[Any], None] | None = None) -> float:
        model = training.base().model(key)
        tracker.add(1.0)
        return float(sum(float((p.detach().double() ** 2).sum()) for p in model.parameters()) ** 0.5)

    def assemble(self, training: Any, cfg: ParamNormConfig, plan: dict[str, Any], done: Mapping[int, Any],
                 live: Any, final: bool) -> dict[str, np.ndarray]:
        ts = sorted(cfg.checkpoints)
        return {"t": np.array(ts), "norm": np.array([done.get(t, np.nan) for t in ts], dtype=float)}


registry.register(ParamNorm())
