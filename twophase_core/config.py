"""Typed, validated, hashable configuration: one object drives the CLI, the app and the tests.

Every experiment config holds the `TrainConfig` of its base run. `validate` is the single place
where settings are checked; it raises `ConfigError` naming the field, the bad value and what is
allowed. `config_hash` keys the result store; `TrainConfig.trajectory_key` keys checkpoints, and
leaves out what cannot change the trajectory (the run length, where checkpoints are saved, where
the data lives), so that every experiment on the same training run shares one base run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from typing import Any

SCHEMA = 1  # bump when a change of code changes results for the same config

DATASETS = ("digits", "mnist1d", "cifar10", "synthetic")
MODELS = ("mlp", "cnn", "resnet20", "vgg16_bn", "vgg16_bn_fc")
EPS_MODES = ("per-coordinate", "total-l2", "relative")
BN_MODES = ("interpolate", "reset")
KERNELS = ("full", "trace")  # eNTK kernel: (N O x N O) or summed over logits (N x N)
PROJECTIONS = ("pca", "mds")
DEVICES = ("cpu", "cuda", "auto")
LINEAR_BN_STATS = ("recompute", "checkpoint")


class ConfigError(ValueError):
    """A setting is invalid; the message names the field, the value and what is allowed."""

    def __init__(self, field_name: str, value: Any, allowed: str):
        self.field = field_name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field_name}={value!r} is invalid: {allowed}")


@dataclass(frozen=True)
class TrainConfig:
    """The base training run: data, model, optimiser and SGD noise."""

    dataset: str = "mnist1d"
    model: str = "cnn"
    width: float = 1.0
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_milestones: tuple[int, ...] = ()  # iterations where lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    batch_size: int = 128
    iterations: int = 1000  # T, SGD iterations
    checkpoint_every: int = 0  # 0: only the checkpoints experiments ask for
    init_seed: int = 0
    data_seed: int = 0
    augment: bool = False  # random crop + flip (image datasets only)
    dropout: float = 0.5  # vgg16_bn_fc's dropout rate; models without dropout layers ignore it
    train_size: int = 0  # 0: the full training set; else the first n points
    device: str = "cpu"
    data_root: str = ""  # cifar10: folder holding cifar-10-batches-py
    download: bool = False  # cifar10: fetch from the internet if missing

    # Fields that cannot change the trajectory theta_0..theta_t: not part of its key.
    _NOT_TRAJECTORY = ("iterations", "checkpoint_every", "data_root", "download")

    def trajectory_key(self) -> str:
        d = {k: v for k, v in to_dict(self).items() if k not in self._NOT_TRAJECTORY}
        return _digest({"kind": "trajectory", **d})


@dataclass(frozen=True)
class ChaosConfig:
    """Perturb at t0, train perturbed copies under the base run's SGD noise, compare at t1."""

    train: TrainConfig = field(default_factory=TrainConfig)
    t0: tuple[int, ...] = (0, 100, 500)
    t1: tuple[int, ...] = (200, 600, 1000)
    eps: float = 1e-7
    eps_mode: str = "per-coordinate"
    perturb_seeds: tuple[int, ...] = (0,)
    n_alpha: int = 30
    bn: str = "interpolate"
    eval_size: int = 0  # test points for B and D; 0: the whole test set
    lockstep: str = "auto"  # "auto" | "loop" | "stack": how perturbed copies are trained


@dataclass(frozen=True)
class ConeConfig:
    """The empirical NTK along the base run at chosen checkpoints."""

    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoints: tuple[int, ...] = (0, 100, 200, 500, 1000)
    n_samples: int = 50
    kernel: str = "full"
    subset_seed: int = 0
    references: tuple[int, ...] = (0,)
    dts: tuple[int, ...] = (100,)
    cone_window: tuple[int, int] = (0, 0)  # (start, end) iterations; (0, 0): the second half


@dataclass(frozen=True)
class LinearConfig:
    """Train normally to t, then the first-order Taylor model at theta_t until T."""

    train: TrainConfig = field(default_factory=TrainConfig)
    switch: tuple[int, ...] = (0, 100, 500)
    bn_stats: str = "recompute"  # BN statistics of the linearised model at theta_t
    eval_size: int = 0


ExperimentConfig = ChaosConfig | ConeConfig | LinearConfig
KINDS = {"chaos": ChaosConfig, "cone": ConeConfig, "linear": LinearConfig}


# ---------------------------------------------------------------------------------------------
# Canonical form and hashing


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON-ready dict (tuples become lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Inverse of `to_dict`; unknown keys are a ConfigError (a typo must not be ignored)."""
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        if k not in known:
            raise ConfigError(k, v, f"unknown setting; known: {', '.join(sorted(known))}")
        if k == "train" and isinstance(v, dict):
            v = from_dict(TrainConfig, v)
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def kind_of(cfg: Any) -> str:
    for name, cls in KINDS.items():
        if isinstance(cfg, cls):
            return name
    raise TypeError(f"not an experiment config: {type(cfg).__name__}")


def config_hash(cfg: Any) -> str:
    """Stable key of a config: sha256 of its canonical JSON, the kind and the schema version."""
    return _digest({"schema": SCHEMA, "kind": kind_of(cfg), "config": to_dict(cfg)})


# ---------------------------------------------------------------------------------------------
# Steps: users think in epochs, the science counts iterations

TRAIN_SIZES = {"digits": 1437, "mnist1d": 4000, "cifar10": 50000, "synthetic": 256}


def iterations_per_epoch(cfg: TrainConfig) -> int:
    """SGD steps per epoch (the last partial batch is dropped), without loading the data."""
    n = cfg.train_size or TRAIN_SIZES.get(cfg.dataset, 0)
    if not n:
        raise ConfigError("dataset", cfg.dataset, f"choose one of {', '.join(DATASETS)}")
    return max(1, n // cfg.batch_size)


_STEP = re.compile(r"^\s*(?:(\d+)\s*ep)?\s*(?:(\d+)\s*(?:it)?)?\s*$")


def parse_step(text: str | int, iterations_per_epoch: int) -> int:
    """'2000', '2000it', '80ep', '2ep50it' -> iterations."""
    if isinstance(text, int):
        return text
    m = _STEP.match(str(text))
    if not m or (m.group(1) is None and m.group(2) is None):
        raise ConfigError("step", text, "write iterations ('500' or '500it'), epochs ('2ep') or both ('2ep50it')")
    return int(m.group(1) or 0) * iterations_per_epoch + int(m.group(2) or 0)


# ---------------------------------------------------------------------------------------------
# Validation: the one place


def _positive_int(name: str, v: Any, minimum: int = 1) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ConfigError(name, v, f"must be a whole number >= {minimum}")


def _iters(name: str, v: Any, lo: int, hi: int, nonempty: bool = True) -> None:
    if not isinstance(v, tuple):
        raise ConfigError(name, v, "must be a list of iterations")
    if nonempty and not v:
        raise ConfigError(name, v, "must not be empty: give at least one iteration")
    for t in v:
        if not isinstance(t, int) or isinstance(t, bool) or t < lo or t > hi:
            raise ConfigError(name, v, f"every value must be a whole number in [{lo}, {hi}], got {t!r}")
    if len(set(v)) != len(v):
        raise ConfigError(name, v, "values must be distinct")


def validate_train(c: TrainConfig) -> None:
    if c.dataset not in DATASETS:
        raise ConfigError("dataset", c.dataset, f"choose one of {', '.join(DATASETS)}")
    if c.model not in MODELS:
        raise ConfigError("model", c.model, f"choose one of {', '.join(MODELS)}")
    if c.dataset == "mnist1d" and c.model in ("resnet20", "vgg16_bn", "vgg16_bn_fc"):
        raise ConfigError("model", c.model, "mnist1d is 1-D: use mlp or cnn")
    if not (isinstance(c.width, int | float) and 0 < c.width <= 16):
        raise ConfigError("width", c.width, "must be a multiplier in (0, 16]")
    if not (isinstance(c.lr, int | float) and 0 < c.lr < float("inf")):
        raise ConfigError("lr", c.lr, "must be a finite number > 0")
    if not (0 <= c.momentum < 1):
        raise ConfigError("momentum", c.momentum, "must be in [0, 1)")
    if not (0 <= c.weight_decay < 1):
        raise ConfigError("weight_decay", c.weight_decay, "must be in [0, 1)")
    if not (0 < c.lr_gamma <= 1):
        raise ConfigError("lr_gamma", c.lr_gamma, "must be in (0, 1]")
    _iters("lr_milestones", c.lr_milestones, 1, 10**9, nonempty=False)
    _positive_int("batch_size", c.batch_size)
    _positive_int("iterations", c.iterations)
    _positive_int("checkpoint_every", c.checkpoint_every, 0)
    _positive_int("init_seed", c.init_seed, 0)
    _positive_int("data_seed", c.data_seed, 0)
    _positive_int("train_size", c.train_size, 0)
    if not (0 <= c.dropout < 1):
        raise ConfigError("dropout", c.dropout, "must be in [0, 1)")
    if c.device not in DEVICES:
        raise ConfigError("device", c.device, f"choose one of {', '.join(DEVICES)}")
    if c.augment and c.dataset not in ("cifar10", "synthetic"):
        raise ConfigError("augment", c.augment, "crop/flip augmentation is for image data (cifar10)")


def validate(cfg: Any) -> None:
    """Raise ConfigError for the first invalid setting of an experiment (or training) config."""
    if isinstance(cfg, TrainConfig):
        validate_train(cfg)
        return
    validate_train(cfg.train)
    T = cfg.train.iterations
    if isinstance(cfg, ChaosConfig):
        _iters("t0", cfg.t0, 0, T - 1)
        _iters("t1", cfg.t1, 1, T)
        if min(cfg.t0) >= max(cfg.t1):
            raise ConfigError("t1", cfg.t1, f"needs at least one t1 > the smallest t0 ({min(cfg.t0)})")
        if not (isinstance(cfg.eps, int | float) and cfg.eps >= 0 and cfg.eps == cfg.eps):
            raise ConfigError("eps", cfg.eps, "must be a number >= 0 (0 is the exactness control)")
        if cfg.eps_mode not in EPS_MODES:
            raise ConfigError("eps_mode", cfg.eps_mode, f"choose one of {', '.join(EPS_MODES)}")
        if not cfg.perturb_seeds:
            raise ConfigError("perturb_seeds", cfg.perturb_seeds, "give at least one seed")
        for s in cfg.perturb_seeds:
            _positive_int("perturb_seeds", s, 0)
        if len(set(cfg.perturb_seeds)) != len(cfg.perturb_seeds):
            raise ConfigError("perturb_seeds", cfg.perturb_seeds, "seeds must be distinct")
        if not isinstance(cfg.n_alpha, int) or cfg.n_alpha < 2:
            raise ConfigError("n_alpha", cfg.n_alpha, "needs >= 2 interpolation points (30 is the paper's)")
        if cfg.bn not in BN_MODES:
            raise ConfigError("bn", cfg.bn, f"choose one of {', '.join(BN_MODES)}")
        _positive_int("eval_size", cfg.eval_size, 0)
        if cfg.lockstep not in ("auto", "loop", "stack"):
            raise ConfigError("lockstep", cfg.lockstep, "choose one of auto, loop, stack")
    elif isinstance(cfg, ConeConfig):
        _iters("checkpoints", cfg.checkpoints, 0, T)
        if len(cfg.checkpoints) < 3:
            raise ConfigError("checkpoints", cfg.checkpoints, "needs at least 3 checkpoints for a trajectory")
        if 0 not in cfg.checkpoints:
            raise ConfigError("checkpoints", cfg.checkpoints, "must include 0: H(theta_0) is the apex of the cone")
        _positive_int("n_samples", cfg.n_samples, 2)
        if cfg.n_samples > 5000:
            raise ConfigError("n_samples", cfg.n_samples, "must be <= 5000")
        if cfg.kernel not in KERNELS:
            raise ConfigError("kernel", cfg.kernel, f"choose one of {', '.join(KERNELS)}")
        _positive_int("subset_seed", cfg.subset_seed, 0)
        for tau in cfg.references:
            if tau not in cfg.checkpoints:
                raise ConfigError("references", cfg.references, f"{tau} is not one of the checkpoints")
        _iters("references", cfg.references, 0, T)
        _iters("dts", cfg.dts, 1, T)
        ck = set(cfg.checkpoints)
        for dt in cfg.dts:
            if not any(t + dt in ck for t in ck):
                raise ConfigError("dts", cfg.dts, f"no pair of checkpoints is {dt} iterations apart")
        w = cfg.cone_window
        if not (isinstance(w, tuple) and len(w) == 2 and all(isinstance(x, int) for x in w)):
            raise ConfigError("cone_window", w, "must be (start, end) iterations")
        if w != (0, 0):
            inside = [t for t in cfg.checkpoints if w[0] <= t <= w[1]]
            if w[0] >= w[1] or len(inside) < 3:
                raise ConfigError("cone_window", w, "needs start < end with >= 3 checkpoints inside")
    elif isinstance(cfg, LinearConfig):
        _iters("switch", cfg.switch, 0, T - 1)
        if cfg.bn_stats not in LINEAR_BN_STATS:
            raise ConfigError("bn_stats", cfg.bn_stats, f"choose one of {', '.join(LINEAR_BN_STATS)}")
        _positive_int("eval_size", cfg.eval_size, 0)
    else:
        raise TypeError(f"not a config: {type(cfg).__name__}")


def replace(cfg: Any, **changes: Any) -> Any:
    """dataclasses.replace that also reaches into .train for TrainConfig fields."""
    train_names = {f.name for f in fields(TrainConfig)}
    own = {f.name for f in fields(cfg)}
    mine = {k: v for k, v in changes.items() if k in own}
    theirs = {k: v for k, v in changes.items() if k not in own}
    for k in theirs:
        if k not in train_names:
            raise ConfigError(k, theirs[k], "unknown setting")
    if theirs:
        base = mine.pop("train", cfg.train)
        mine["train"] = dataclasses.replace(base, **theirs)
    return dataclasses.replace(cfg, **mine)
