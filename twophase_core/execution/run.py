"""Run an experiment: served from the store when it is there, else computed where the executor says and stored.

This is the notebook's and the CLI's entry (`run_experiment`, `run_chaos`, ...), and what a job's worker calls.
The executor decides where the units of work run: here, one after another ("local"), or as Ray tasks ("ray",
`on_ray.unit_results`); the experiment's own code is the same either way, and so are its results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from twophase_core.execution.placement import resolve_executor
from twophase_core.experiments import registry
from twophase_core.experiments.result import Result, load_result, save_result
from twophase_core.experiments.running import ProgressCallback
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store

if TYPE_CHECKING:
    from twophase_core.experiments.registry import Plan, Remote
    from twophase_core.science.train import CancelToken


def on_ray(store: Store, cancel: CancelToken | None) -> Remote:
    """The units of an experiment as Ray tasks on the store's storage root (what `Kind.compute` calls `remote`)."""

    def remote(cfg: conf.ExperimentConfig, plan: Plan,
               add: Callable[[float], None]) -> Iterator[tuple[int, tuple[object, int]]]:
        from twophase_core.execution.on_ray import unit_results

        return unit_results(cfg, plan, store.files, cancel, add)

    return remote


def run_experiment(cfg: conf.ExperimentConfig, store: Store | None = None, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None,
                   executor: str | None = "local") -> Result:
    """Validate, answer from the store if the result is there, else compute it (its units where `executor` says:
    None reads $TWOPHASE_EXECUTOR) and store it. A second call with the same config is instant."""
    conf.validate(cfg)
    executor = resolve_executor(executor)
    store = store or Store()
    experiment = registry.of(cfg)
    result = load_result(store, experiment.name, conf.config_hash(cfg))
    if result is None:
        store.check_storage()
        remote = on_ray(store, cancel) if executor == "ray" else None
        from twophase_core.science.train import engine_threads

        with engine_threads():
            result = experiment.compute(cfg, store, progress, cancel, partial, remote=remote, executor=executor)
        save_result(store, result)
    if progress:
        progress(1.0, "done")
    return result


def _of_kind(kind: str) -> Callable[..., Result]:
    def run(cfg: conf.ExperimentConfig, store: Store | None = None, progress: ProgressCallback | None = None,
            cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None,
            executor: str | None = "local") -> Result:
        if conf.kind_of(cfg) != kind:
            raise conf.ConfigError("config", cfg, f"run_{kind} takes a {registry.get(kind).config.__name__}")
        return run_experiment(cfg, store, progress, cancel, partial, executor)

    run.__name__ = run.__qualname__ = f"run_{kind}"
    run.__doc__ = f"{registry.get(kind).title}: `run_experiment` for a {kind} config."
    return run


run_chaos = _of_kind("chaos")
run_cone = _of_kind("cone")
run_linear = _of_kind("linear")
