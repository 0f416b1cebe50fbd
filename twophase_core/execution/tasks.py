"""The pieces of a sweep's task graph, as plain functions of plain data: what Ray's tasks and the local process
pool both run (`on_ray.run_points`, `local_pool.run_points`).

Per base run a `prepare` (trained at every checkpoint its points read, and each point's plan), per point one
`unit` per unit of work (a chaos row, a cone kernel, a linear switch time) once its base run is there, then an
`assemble` of the point's result from its units. Each runs with one torch thread in a throwaway index beside the
driver's storage root (`task_store`) and returns arrays; only the driver writes results into the store's index.
`report(units)` hears a task's progress (SGD steps and their equivalents), last at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from twophase_core.experiments.registry import Plan
    from twophase_core.storage.files import CheckpointFiles

Report = Callable[[float], None]  # a task's units done so far
Plugins = list[tuple[str, str | None]]  # (module, the folder the driver found it in): `registry.plugins()`
UnitOut = tuple[object, int]  # a unit's output and the SGD steps it took


def load_plugins(plugins: Plugins) -> None:
    """The driver's plugins, loaded into the experiment registry in a task's process (a kind defined outside the
    package: its module, and the folder the driver found it in)."""
    from twophase_core.experiments import registry

    for module, path in plugins:
        registry.load_plugin(module, path)


def prepare(train_dict: dict[str, object], needed: list[int], points: Sequence[tuple[str, dict[str, object]]],
            files: CheckpointFiles, plugins: Plugins, report: Report | None, executor: str) -> dict[str, Plan]:
    """One base run of a sweep: trained (or found) at every checkpoint its points read, and the plan of each
    point (what its units share: the lockstep path, the eNTK path and samples), by config hash."""
    from twophase_core.experiments import registry
    from twophase_core.experiments.running import Units
    from twophase_core.science.train import Training, configure_threads
    from twophase_core.settings import config as conf
    from twophase_core.storage.store import task_store

    load_plugins(plugins)
    configure_threads()
    steps = Units(report)
    with task_store(files) as store:
        training = Training(conf.from_dict(conf.TrainConfig, train_dict), store)
        training.base().ensure(needed, steps.add)
        plans = {}
        for kind, d in points:
            cfg = registry.config_from_dict(kind, d)
            plans[conf.config_hash(cfg)] = registry.get(kind).plan(training, cfg, executor)
    if report is not None:
        report(steps.done)
    return plans


def unit(kind: str, cfg_dict: dict[str, object], key: int, files: CheckpointFiles, plugins: Plugins, plan: Plan,
         report: Report | None) -> UnitOut:
    """One unit of an experiment and the SGD steps it took, with the plan its experiment shares."""
    from twophase_core.experiments import registry
    from twophase_core.experiments.running import in_task

    load_plugins(plugins)
    experiment = registry.get(kind)
    return in_task(experiment.config, cfg_dict, files, report, lambda training, cfg, units: (
        experiment.run_unit(training, cfg, key, plan, units), training.steps_done))


def assemble(kind: str, cfg_dict: dict[str, object], files: CheckpointFiles, plugins: Plugins, plan: Plan,
             keys: Sequence[int], results: Sequence[UnitOut],
             executor: str) -> tuple[dict[str, np.ndarray], str, dict[str, Any]]:
    """A sweep point's result from its units; it travels back as arrays and metadata and the driver stores it."""
    from twophase_core.experiments import registry
    from twophase_core.science.train import configure_threads
    from twophase_core.storage.store import task_store

    load_plugins(plugins)
    configure_threads()
    with task_store(files) as store:
        r = registry.get(kind).compute(registry.config_from_dict(kind, cfg_dict), store, executor=executor,
                                       plan=plan, units=dict(zip(keys, results, strict=True)))
    return r.arrays, r.hash, {**r.meta, "config": r.config}
