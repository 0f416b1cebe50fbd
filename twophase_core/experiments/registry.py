"""The experiment kinds, by name: one object each, found here by everything that used to branch on a kind.

An experiment kind is one module (chaos.py, cone.py, linear.py) holding its config class, its units of work and
how they are planned, run and assembled, its metrics, its JSON and table forms and its sweep summary, in one
object satisfying `Experiment` (most of it inherited from `kind.Kind`) and registered with `register`. The CLI's
subcommands and flags, the store's keys, jobs, sweeps, Ray tasks and the app's pages all ask `get(name)` or
`of(cfg)`.

A kind from outside the package (a researcher's own measurement) is a module that calls `register` when
imported, named in $TWOPHASE_PLUGINS (comma-separated module names) or under the entry-point group
`twophase.experiments`; every process (the CLI, a job's worker, a Ray task, the app) loads them on first use.
Built-in kinds are imported here by name, so this module imports no kind and every kind may import it.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from twophase_core.settings import config as conf
from twophase_core.settings.spec import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from twophase_core.experiments.running import ProgressCallback, Tracker
    from twophase_core.science.train import CancelToken, Training
    from twophase_core.storage.store import Store

BUILTIN = ("twophase_core.experiments.chaos", "twophase_core.experiments.cone", "twophase_core.experiments.linear")
ENV_PLUGINS = "TWOPHASE_PLUGINS"
ENTRY_POINTS = "twophase.experiments"
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")  # a CLI subcommand, a store key part, a job id prefix
Plan = dict[str, Any]  # what every unit of one run shares (a path, a sample set), fixed before the base run
# remote(cfg, plan, add): (key, (unit output, SGD steps it took)) as units finish elsewhere (execution/on_ray.py);
# add(n) hears their progress
Remote = Callable[[conf.ExperimentConfig, Plan, Callable[[float], None]], Iterator[tuple[int, tuple[object, int]]]]
C = TypeVar("C", bound=conf.ExperimentConfig, contravariant=True)  # the kind's config class
U = TypeVar("U")  # what one unit of work returns (a chaos row of arrays, a cone kernel's file, an accuracy)


# experiments/result.py's Result, named here without importing it (result.py reads this registry for a result's
# forms, so the import would run in a circle)
Result = Any


class Experiment(Protocol[C, U]):
    """What the rest of twophase asks of an experiment kind (`kind.Kind` implements it from a few pieces)."""

    # read-only (class attributes of a Kind)
    @property
    def name(self) -> str: ...  # 'chaos': the CLI subcommand, the kind in result keys and job ids
    @property
    def title(self) -> str: ...  # 'Chaos Effect': what pages and menus call it
    @property
    def help(self) -> str: ...  # one line for `twophase --help`
    @property
    def config(self) -> type[conf.ExperimentConfig]: ...  # its ExperimentConfig subclass (C)
    @property
    def metrics(self) -> tuple[str, ...]: ...  # arrays a sweep summarises over replicates
    @property
    def page(self) -> str | None: ...  # the app's page file for it (None: the generic result page)
    @property
    def icon(self) -> str: ...  # the app's menu icon
    @property
    def settings_title(self) -> str: ...  # the heading of its own fields in the app's form

    def compute(self, cfg: C, store: Store, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None,
                remote: Remote | None = None, plan: Plan | None = None,
                units: Mapping[int, tuple[U, int]] | None = None, executor: str = "local") -> Result:
        """The experiment's `Result`, computed (not looked up nor stored)."""
        ...

    def plan(self, training: Training, cfg: C, executor: str) -> Plan: ...

    def run_unit(self, training: Training, cfg: C, key: int, plan: Plan, tracker: Tracker,
                 cancel: CancelToken | None = None, on_part: Callable[[U], None] | None = None) -> U: ...

    def unit_cost(self, training: Training, cfg: C) -> float: ...

    def extra_checkpoints(self, cfg: C) -> int: ...

    def to_json(self, r: Result) -> dict[str, Any]: ...

    def to_frame(self, r: Result) -> pd.DataFrame: ...

    def summary(self, r: Result) -> str: ...

    def summarize(self, done: list[Result], n_boot: int, seed: int) -> dict[str, Any]: ...

    def default(self, train: conf.TrainConfig) -> conf.ExperimentConfig: ...

    def figures(self, r: Result) -> list[tuple[str, go.Figure]]: ...


# A registered kind, whatever its config class and units: `of(cfg)` finds the one whose config class `cfg` is (at
# run time, which no static type says), so its methods take any config here
Registered = Experiment[Any, Any]
K = TypeVar("K", bound=Registered)

_KINDS: dict[str, Registered] = {}
_PLUGINS: list[str] = []  # modules loaded as plugins, in order: a Ray task loads the same
_LOCK = threading.RLock()
_LOADED = False


def register(experiment: K) -> K:
    """Add a kind (called by its module when imported); its name must be new and its config class say it."""
    name = experiment.name
    if not NAME.fullmatch(name):
        raise ValueError(f"experiment name {name!r}: lowercase letters, digits and _, starting with a letter")
    if not (isinstance(experiment.config, type) and issubclass(experiment.config, conf.ExperimentConfig)
            and experiment.config.kind == name):
        raise ValueError(f"experiment {name!r}: its config must subclass ExperimentConfig with kind = {name!r}")
    with _LOCK:
        old = _KINDS.get(name)
        if old is not None and type(old) is not type(experiment):
            raise ValueError(f"experiment {name!r} is registered already (by {type(old).__module__})")
        _KINDS[name] = experiment
    return experiment


def _load() -> None:
    """The built-in kinds, then the plugins: once per process."""
    global _LOADED
    with _LOCK:
        if _LOADED:
            return
        _LOADED = True
        for module in BUILTIN:
            importlib.import_module(module)
        for module in [m for m in re.split(r"[,\s]+", os.environ.get(ENV_PLUGINS, "")) if m]:
            load_plugin(module)
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINTS):
            load_plugin(ep.module)


def load_plugin(module: str, path: str | None = None) -> None:
    """Import a plugin module (it registers its kinds); `path`: a folder to find it in (a Ray task gets the
    driver's). A module that does not import is a ConfigError naming it."""
    with _LOCK:
        if module in _PLUGINS:
            return
        if path and path not in sys.path:
            sys.path.append(path)
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - whatever the plugin raises, named in one line
            raise ConfigError(ENV_PLUGINS, module, f"cannot be imported ({type(e).__name__}: {e})") from None
        _PLUGINS.append(module)


def plugins() -> list[tuple[str, str | None]]:
    """(module, the folder it was found in) of every plugin loaded here: what a Ray task must load too. Modules of
    models and datasets given by import path (settings/plugins.py) are among them, so a task finds them where the
    driver did."""
    from twophase_core.settings.plugins import imported_modules

    _load()
    out = []
    for module in [*_PLUGINS, *(m for m in imported_modules() if m not in _PLUGINS)]:
        file = getattr(sys.modules.get(module), "__file__", None)
        depth = module.count(".") + 1
        out.append((module, str(Path(file).resolve().parents[depth - 1]) if file else None))
    return out


def get(name: str) -> Registered:
    _load()
    try:
        return _KINDS[name]
    except KeyError:
        raise ConfigError("kind", name, f"choose one of {', '.join(names())}") from None


def names() -> tuple[str, ...]:
    _load()
    return tuple(_KINDS)


def of(cfg: conf.ExperimentConfig) -> Registered:
    """The kind of an experiment config."""
    return get(conf.kind_of(cfg))


def config_from_dict(kind: str, d: object) -> conf.ExperimentConfig:
    """A kind's config from its plain form (`config.to_dict`), strictly (`config.from_dict`)."""
    return conf.from_dict(get(kind).config, d)
