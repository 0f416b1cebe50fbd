"""Typed, validated, hashable configuration: one object drives the CLI, the app and the tests.

Every experiment config (an `ExperimentConfig`: each kind's lives with its experiment, under
twophase_core/experiments/) holds the `TrainConfig` of its base run. Each field is declared with
`settings.setting`, which keeps its help, type, bounds and allowed values in the field's metadata:
the CLI flags, the app's form, the reproduce command, docs/settings.md and the per-field checks of
`validate` are generated from it. `validate` is the single place where settings are checked (the
per-field checks, then the checks that relate fields); it raises `ConfigError` naming the field,
the bad value and what is allowed. `config_hash` keys the result store;
`TrainConfig.trajectory_key` keys checkpoints, and leaves out what cannot change the trajectory
(the run length, where checkpoints are saved, where the data lives), so that every experiment on
the same training run shares one base run. A model or dataset from outside the package (a registered name or
MODULE:CALLABLE: settings/plugins.py) is checked here too, and both keys then hold its identity (its code's
digest or declared version), so an edit is never served stale; built-in configs keep their keys. Definitions:
docs/science.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from twophase_core.settings import plugins
from twophase_core.settings.spec import (
    MAX_INT,
    MAX_SEED,
    ConfigError,
    Spec,
    check,
    parse_step,
    parse_text,
    setting,
    spec_of,
)

__all__ = ["ConfigError", "parse_step"]  # re-exported: callers know one config module

SCHEMA = 1  # bump when a change of code changes results for the same config

DATASETS = tuple(plugins.BUILTIN["dataset"])  # digits, mnist1d, cifar10, synthetic, and torchvision's formats
MODELS = tuple(plugins.BUILTIN["model"])  # mlp, cnn, resnet20, vgg16_bn, vgg16_bn_fc
DEVICES = ("cpu", "cuda", "auto")
# what the engine offers, named here (torch-free) so that every kind's config can list its choices
EPS_MODES = ("per-coordinate", "total-l2", "relative")  # docs/science.md: the paper's norm read three ways
BN_MODES = ("interpolate", "reset")  # BatchNorm statistics along the barrier's path
KERNELS = ("full", "trace")  # eNTK: (N O x N O), or summed over logits (N x N)
LINEAR_BN_STATS = ("recompute", "checkpoint")  # the linearised model's BatchNorm statistics
LOCKSTEP = ("auto", "loop", "stack")  # how perturbed copies train: measured, one by one, or stacked (vmap)

_ADV = {"advanced": True}


@dataclass(frozen=True)
class TrainConfig:
    """The base training run: data, model, optimiser and SGD noise."""

    dataset: str = setting("mnist1d", "training data; mnist1d, digits and synthetic ship with the installed packages",
                           "choice", choices=DATASETS, plugin="dataset")
    model: str = setting("cnn", "architecture (mnist1d is 1-D: mlp or cnn)", "choice", choices=MODELS, plugin="model")
    width: float = setting(1.0, "width multiplier of every layer", "float", lo=0, lo_open=True, hi=16,
                           label="width multiplier")
    lr: float = setting(0.1, "SGD learning rate", "float", lo=0, lo_open=True, hi=1e6, label="learning rate")
    momentum: float = setting(0.9, "SGD momentum", "float", lo=0, hi=1, hi_open=True, **_ADV)
    weight_decay: float = setting(1e-4, "L2 weight decay", "float", lo=0, hi=1, hi_open=True, **_ADV)
    lr_milestones: tuple[int, ...] = setting((), "iterations where lr is multiplied by lr_gamma (absolute, so the "
                                             "trajectory to t never depends on T)", "steps", lo=1, hi=MAX_INT,
                                             allow_empty=True, **_ADV)
    lr_gamma: float = setting(0.1, "factor applied to lr at each milestone", "float", lo=0, lo_open=True, hi=1,
                              **_ADV)
    batch_size: int = setting(128, "minibatch size (at most the training set)", "int", lo=1, hi=MAX_INT)
    iterations: int = setting(1000, "T, SGD iterations of the base run", "step", lo=1, hi=10**7,
                              label="iterations T", hi_text="ten million steps")
    checkpoint_every: int = setting(0, "also save a checkpoint every k iterations; 0: only those experiments need",
                                    "step", lo=0, hi=MAX_INT, **_ADV)
    init_seed: int = setting(0, "seed of theta_0", "int", lo=0, hi=MAX_SEED, aliases=("--seed",), label="init seed")
    data_seed: int = setting(0, "seed of the SGD noise: batches, crops, flips, dropout masks", "int", lo=0,
                             hi=MAX_SEED, label="data seed (SGD noise)")
    augment: bool = setting(False, "random crop + flip (image data: cifar10, cifar100, svhn, mnist, ..., synthetic)",
                            "bool", **_ADV)
    dropout: float = setting(0.5, "dropout rate of vgg16_bn_fc (models without dropout ignore it)", "float",
                             lo=0, hi=1, hi_open=True, **_ADV)
    train_size: int = setting(0, "use the first n training points; 0: all", "int", lo=0, hi=MAX_INT, **_ADV)
    device: str = setting("cpu", "where to train (auto: cuda if available)", "choice", choices=DEVICES, **_ADV)
    data_root: str = setting("", "cifar10, cifar100, svhn, mnist, fashion_mnist: folder holding them in torchvision's "
                             "layout ($TWOPHASE_CIFAR_ROOT if empty); a plugin's loader: its argument",
                             "text", **_ADV)
    download: bool = setting(False, "cifar10, cifar100, svhn, mnist, fashion_mnist: download if missing (needs "
                             "internet)", "bool", **_ADV)

    # Fields that cannot change the trajectory theta_0..theta_t: not part of its key.
    _NOT_TRAJECTORY = ("iterations", "checkpoint_every", "data_root", "download")

    def trajectory_key(self) -> str:
        d = {k: v for k, v in to_dict(self).items() if k not in self._NOT_TRAJECTORY}
        own = plugin_identity(self)
        return digest({"kind": "trajectory", **d, **({"plugins": own} if own else {})})


STEPS = {"lo": 0, "hi": MAX_INT}  # bounds of a setting holding iterations (each kind checks them against T)
ADVANCED = {"advanced": True}  # a setting the app's form keeps under "more settings"
EVAL_HELP = "the first n test points evaluate B and D (chaos) or the accuracy (linear); 0: the whole test set"


@dataclass(frozen=True)
class ExperimentConfig:
    """An experiment's settings: the training run it reads (`train`) and the kind's own fields, each declared
    with `setting(...)`. A kind subclasses it (frozen dataclass), names itself in `kind` (the name results,
    jobs and the CLI use) and says which base checkpoints it reads and what its units of work are.

    `validate` checks every field by its spec, then calls `check()` for what relates fields."""

    kind: ClassVar[str] = ""
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        """Raise ConfigError for the first relation between fields that does not hold (each field alone has
        passed its spec's check already)."""

    def base_checkpoints(self) -> set[int]:
        """The iterations of the base run the experiment reads (trained once, shared by every experiment on
        the same trajectory)."""
        return {self.train.iterations}

    def unit_keys(self) -> list[int]:
        """The units of work after the base run, by key (an iteration): run one after another here, or as
        one task each on Ray, with the same result."""
        return []


# ---------------------------------------------------------------------------------------------
# The settings of a kind, flat: experiment fields and the nested TrainConfig's, names unique


# a config of either kind: an experiment's, or the training run's alone
Config = TypeVar("Config", bound="ExperimentConfig | TrainConfig")
Exp = TypeVar("Exp", bound="ExperimentConfig")


def settings_of(cls: type) -> dict[str, tuple[Spec, bool]]:
    """name -> (spec, is a TrainConfig field), the experiment's own fields first."""
    own = {f.name: (spec_of(f), False) for f in fields(cls) if f.name != "train"}
    if cls is TrainConfig:
        return {n: (s, True) for n, (s, _) in own.items()}
    return {**own, **{f.name: (spec_of(f), True) for f in fields(TrainConfig)}}


def flat(cfg: ExperimentConfig | TrainConfig) -> dict[str, Any]:
    """Every setting of an experiment config by name (train fields lifted out of `.train`)."""
    d = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "train"}
    if not isinstance(cfg, TrainConfig):
        d.update({f.name: getattr(cfg.train, f.name) for f in fields(TrainConfig)})
    return d


# ---------------------------------------------------------------------------------------------
# Canonical form and hashing


def to_dict(cfg: ExperimentConfig | TrainConfig) -> dict[str, Any]:
    """Plain, JSON-ready dict (tuples become lists)."""

    def conv(v: object) -> object:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        return v

    return {f.name: conv(getattr(cfg, f.name)) for f in fields(cfg)}


def from_dict(cls: type[Config], d: object) -> Config:
    """Inverse of `to_dict`, strict: unknown or missing keys are a ConfigError (a typo, or a dict from
    elsewhere, must not silently take defaults); values are checked by `validate`, not coerced."""
    if not isinstance(d, dict):
        raise ConfigError(cls.__name__, d, "must be a dict of settings (as config.to_dict writes)")
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in d if k not in known]
    if unknown:
        raise ConfigError(str(unknown[0]), d[unknown[0]], f"unknown setting; known: {', '.join(sorted(known))}")
    missing = [k for k in known if k not in d]
    if missing:
        raise ConfigError(cls.__name__, ", ".join(missing), "missing settings: give every field, or start from a "
                          "preset and change what differs (config.replace)")
    kwargs: dict[str, Any] = {}  # each setting's own type, checked by `validate`
    for k, v in d.items():
        if k == "train":
            v = from_dict(TrainConfig, v)
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def digest(obj: object) -> str:
    """20 hex digits of the sha256 of canonical JSON: the key of configs, trajectories and branches."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def kind_of(cfg: object) -> str:
    """The experiment's kind ('chaos', ...): its config class says it."""
    kind = getattr(type(cfg), "kind", "") if isinstance(cfg, ExperimentConfig) else ""
    if not kind:
        raise TypeError(f"not an experiment config: {type(cfg).__name__}")
    return kind


def by_base_run(configs: Iterable[Exp]) -> dict[str, list[Exp]]:
    """Experiments grouped by the base run they share (their trajectory key), in first-seen order."""
    groups: dict[str, list[Exp]] = {}
    for cfg in configs:
        groups.setdefault(cfg.train.trajectory_key(), []).append(cfg)
    return groups


def plugin_identity(train: TrainConfig) -> dict[str, dict[str, str]]:
    """What the keys hold of a model or dataset from outside the package (`plugins.identity`: its code's digest
    or declared version; a dataset's data root too, which it reads); {} for built-ins, so their keys never move."""
    own: dict[str, dict[str, str]] = {}
    if train.model not in MODELS:
        own["model"] = plugins.identity("model", train.model)
    if train.dataset not in DATASETS:
        own["dataset"] = {**plugins.identity("dataset", train.dataset), "root": train.data_root}
    return own


def config_hash(cfg: ExperimentConfig) -> str:
    """Stable key of a config: sha256 of its canonical JSON, the kind and the schema version (and the identity
    of a model or dataset from outside the package, `plugin_identity`)."""
    own = plugin_identity(cfg.train)
    return digest({"schema": SCHEMA, "kind": kind_of(cfg), "config": to_dict(cfg), **({"plugins": own} if own else {})})


# ---------------------------------------------------------------------------------------------
# Steps: users think in epochs, the science counts iterations

TRAIN_SIZES = {"digits": 1437, "mnist1d": 4000, "cifar10": 50000, "synthetic": 256, "mnist": 60000,
               "fashion_mnist": 60000, "cifar100": 50000, "svhn": 73257}
# (input shape, classes) of the built-in datasets: what a plugin model is tried on before anything runs
SHAPES = {"digits": ((1, 8, 8), 10), "mnist1d": ((1, 40), 10), "cifar10": ((3, 32, 32), 10),
          "synthetic": ((3, 8, 8), 4), "mnist": ((1, 28, 28), 10), "fashion_mnist": ((1, 28, 28), 10),
          "cifar100": ((3, 32, 32), 100), "svhn": ((3, 32, 32), 10)}
AUGMENTABLE = ("cifar10", "synthetic", "mnist", "fashion_mnist", "cifar100", "svhn")  # image data: crop and flip
IMAGE_MODELS = ("resnet20", "vgg16_bn", "vgg16_bn_fc")  # built-ins for 2-D images (C, H, W) only


def data_facts(cfg: TrainConfig) -> tuple[int, tuple[int, ...], int]:
    """(training points, input shape, classes) of the config's dataset: a built-in's from the tables above, without
    loading it; a plugin's loaded (once per process) and checked."""
    if cfg.dataset in DATASETS:
        return TRAIN_SIZES[cfg.dataset], *SHAPES[cfg.dataset]
    a = plugins.load_dataset(cfg.dataset, cfg.data_root)
    return len(a.x_train), a.input_shape, a.classes


def iterations_per_epoch(cfg: TrainConfig) -> int:
    """SGD steps per epoch (the last partial batch is dropped), without loading a built-in dataset."""
    if not isinstance(cfg.dataset, str) or not cfg.dataset:
        raise ConfigError("dataset", cfg.dataset, f"choose one of {', '.join(DATASETS)}")
    n = cfg.train_size or data_facts(cfg)[0]
    return max(1, n // cfg.batch_size)


# ---------------------------------------------------------------------------------------------
# Validation: the one place


def _check_fields(cfg: ExperimentConfig | TrainConfig) -> None:
    for f in fields(cfg):
        if f.name != "train":
            check(f.name, spec_of(f), getattr(cfg, f.name))


def validate_train(c: TrainConfig) -> None:
    if not isinstance(c, TrainConfig):
        raise ConfigError("train", c, "must be a TrainConfig (a dict of training settings in from_dict)")
    _check_fields(c)
    if c.dataset == "mnist1d" and c.model in IMAGE_MODELS:
        raise ConfigError("model", c.model, "mnist1d is 1-D: use mlp or cnn")
    n, shape, classes = data_facts(c)
    if c.model in IMAGE_MODELS and len(shape) != 3:
        raise ConfigError("model", c.model, f"needs 2-D images (C, H, W); {c.dataset}'s inputs have shape {shape}")
    if c.model == "cnn" and len(shape) not in (2, 3):
        raise ConfigError("model", c.model, f"needs inputs (C, L) or (C, H, W); {c.dataset}'s have shape {shape}")
    if c.model not in MODELS:
        plugins.check_model(c.model, shape, classes, c.width, c.dropout)
    if c.augment and c.dataset not in AUGMENTABLE and not (c.dataset not in DATASETS and len(shape) == 3):
        raise ConfigError("augment", c.augment, "crop/flip augmentation is for image data (C, H, W)")
    if c.train_size > n:
        raise ConfigError("train_size", c.train_size, f"{c.dataset} has {n} training points")
    if c.batch_size > (c.train_size or n):
        raise ConfigError("batch_size", c.batch_size, f"must be at most the training set ({c.train_size or n} points)")
    if c.checkpoint_every > c.iterations:
        raise ConfigError("checkpoint_every", c.checkpoint_every, f"must be at most iterations ({c.iterations})")


def check_in_run(name: str, v: tuple[int, ...], lo: int, hi: int, T: int) -> None:
    """Every iteration in `v` lies in [lo, hi] of a run of T iterations (the message names T)."""
    for t in v:
        if not lo <= t <= hi:
            raise ConfigError(name, v, f"every value must be in [{lo}, {hi}] (iterations T = {T}), got {t}")


def validate(cfg: object) -> None:
    """Raise ConfigError for the first invalid setting of an experiment (or training) config: every field by
    its spec, then the kind's relations between fields (`ExperimentConfig.check`)."""
    if isinstance(cfg, TrainConfig):
        validate_train(cfg)
        return
    if not isinstance(cfg, ExperimentConfig) or not type(cfg).kind:
        raise ConfigError("config", cfg, "must be an experiment config (a ChaosConfig, ConeConfig, LinearConfig or a "
                          "registered kind's)")
    validate_train(cfg.train)
    _check_fields(cfg)
    cfg.check()


def with_settings(cfg: Config, values: Mapping[str, object]) -> Config:
    """`cfg` with settings given by name, as typed text (CLI, form) or as values; validated.

    The one way user input becomes a config: each value is parsed by its setting's type and checked
    at once (so '0' for batch_size is named before anything divides by it); steps written in epochs
    ('2ep') are converted with the iterations per epoch of the resolved training run.
    """
    specs = settings_of(type(cfg))
    for name in values:
        if name not in specs:
            raise ConfigError(name, values[name], f"is not a setting of {type(cfg).__name__}")
    steps = {"step", "steps", "window"}
    typed: dict[str, object] = {}
    for name, v in values.items():
        spec = specs[name][0]
        if spec.type not in steps:
            typed[name] = parse_text(name, spec, v)
            check(name, spec, typed[name])
    cfg = replace(cfg, **typed)
    train = cfg if isinstance(cfg, TrainConfig) else cfg.train
    ipe: int | None = None
    if any(specs[n][0].type in steps and isinstance(v, str) and "ep" in v for n, v in values.items()):
        ipe = iterations_per_epoch(train)
    typed = {}
    for name, v in values.items():
        spec = specs[name][0]
        if spec.type in steps:
            typed[name] = parse_text(name, spec, v, ipe)
            check(name, spec, typed[name])
    cfg = replace(cfg, **typed)
    validate(cfg)
    return cfg


def replace(cfg: Config, **changes: Any) -> Config:
    """dataclasses.replace that also reaches into .train for TrainConfig fields."""
    if isinstance(cfg, TrainConfig):
        return dataclasses.replace(cfg, **changes)
    train_names = {f.name for f in fields(TrainConfig)}
    own = {f.name for f in fields(cfg)}
    mine = {k: v for k, v in changes.items() if k in own}
    theirs = {k: v for k, v in changes.items() if k not in own}
    for k in theirs:
        if k not in train_names:
            raise ConfigError(k, theirs[k], f"is not a setting of {type(cfg).__name__}")
    if theirs:
        base = mine.pop("train", cfg.train)
        mine["train"] = dataclasses.replace(base, **theirs)
    return dataclasses.replace(cfg, **mine)
