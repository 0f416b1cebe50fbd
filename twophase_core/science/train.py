"""Training with branches: the base run, perturbed branches, checkpoints and resumption.

A trajectory is a key, a start iteration and the state at that start. The base run starts at 0
from theta_0; a branch starts at t0 from the base checkpoint plus eps. Both advance with the same
`Run.step`, so a branch with eps = 0 reproduces the base run bit for bit: that is what lets the
base run serve as the unperturbed control (docs/science.md: same code path). Checkpoint t is the
state after t SGD steps; step t uses batch t of the schedule and lr_at(t).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import optimizer as torch_optimizer

from twophase_core.science.data import BatchSchedule, Dataset, get_dataset
from twophase_core.science.models import build_model, trainable
from twophase_core.science.perturb import perturb_, perturbation_seed
from twophase_core.settings import config as conf
from twophase_core.settings.spec import Spec, from_env
from twophase_core.storage.errors import StoreError
from twophase_core.storage.store import Store

StepCallback = Callable[[int], None]  # called with the number of SGD steps just done


class Cancelled(Exception):
    """The caller asked the computation to stop; finished checkpoints stay usable."""


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; checkpoints before it stay, no result is stored."""

    def __init__(self, iteration: int, lr: float):
        self.iteration = iteration
        super().__init__(
            f"training loss became non-finite at iteration {iteration} (lr={lr:g}): the learning rate is "
            "probably too high for this model; lower lr (or add lr_milestones) and run again"
        )


class CancelToken:
    """A flag the engine polls between steps; `poll` lets a worker read it from elsewhere."""

    def __init__(self, poll: Callable[[], bool] | None = None, every_s: float = 0.5):
        self._set = False
        self._poll = poll
        self._every = every_s
        self._last = 0.0

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        if not self._set and self._poll is not None and time.monotonic() - self._last >= self._every:
            self._last = time.monotonic()
            self._set = bool(self._poll())
        return self._set

    def check(self) -> None:
        if self.is_set():
            raise Cancelled("cancelled")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise conf.ConfigError("device", name, "no CUDA device is visible here; use device=cpu")
    return torch.device(name)


def configure_determinism(device: torch.device) -> None:
    """Bitwise-reproducible kernels on CUDA: eps = 0 must give exactly 0 (docs/science.md).

    On the CPU every op the engine uses is already deterministic on a fixed thread count (the
    eps = 0 and resume tests check it bit for bit), and torch.use_deterministic_algorithms costs
    seconds of imports per process, so it is only switched on for CUDA.
    """
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

ENV_THREADS = "TWOPHASE_THREADS"
THREADS_SPEC = Spec("int", "CPU threads for torch", lo=1, hi=1024)


def configure_threads() -> int:
    """CPU threads for torch: TWOPHASE_THREADS, default 1.

    Measured on 2 shared cores: the demo's small models step faster on one thread, and two threads
    under any competing load (a second job, the app server) slow a step by 10x or more.
    """
    n = int(from_env(ENV_THREADS, THREADS_SPEC, 1))
    torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def engine_threads() -> Iterator[int]:
    """`configure_threads` for the duration of a computation, then the caller's count back.

    A notebook or script may run torch on any number of threads, and a reduction's order (so its bits)
    can depend on it; a result stored under a config's hash must not depend on who called.
    """
    before = torch.get_num_threads()
    try:
        yield configure_threads()
    finally:
        torch.set_num_threads(before)


def lr_at(cfg: conf.TrainConfig, t: int) -> float:
    """Step schedule on absolute iterations, so the trajectory to t never depends on T."""
    return cfg.lr * cfg.lr_gamma ** sum(1 for m in cfg.lr_milestones if t >= m)


# Every module of a model whose modules all keep nn.Module's own train(), by model: `train_mode`'s walk
_MODULES: weakref.WeakKeyDictionary[nn.Module, tuple[nn.Module, ...]] = weakref.WeakKeyDictionary()


def train_mode(model: nn.Module) -> None:
    """model.train(), skipped when every module is already in train mode (after the first step, always).

    model.train() walks and sets every module each step (43 us on the demo-sweep MLP, 4% of its step); reading
    the flags of the modules found once is 1 us. A model with a module of its own train() is always switched.
    """
    mods = _MODULES.get(model)
    if mods is None:
        mods = tuple(model.modules())
        if any(type(m).train is not nn.Module.train for m in mods):
            mods = ()
        _MODULES[model] = mods
    if not mods or not all(m.training for m in mods):
        model.train()


def _plain_sgd(opt: torch.optim.Optimizer) -> bool:
    """Whether `sgd_update` reproduces opt.step(): torch's SGD on the CPU (the single-tensor path), no momentum
    variants, no step hooks."""
    if type(opt) is not torch.optim.SGD or "step" in vars(opt):  # (an LR scheduler wraps opt.step)
        return False
    hooks = (getattr(opt, "_optimizer_step_pre_hooks", None), getattr(opt, "_optimizer_step_post_hooks", None),
             getattr(torch_optimizer, "_global_optimizer_pre_hooks", None),
             getattr(torch_optimizer, "_global_optimizer_post_hooks", None))
    if any(hooks):
        return False
    for g in opt.param_groups:
        if g.get("nesterov") or g.get("maximize") or g.get("differentiable") or g.get("foreach") or g.get("fused"):
            return False
        for p in g["params"]:
            if p.device.type != "cpu" or (p.grad is not None and p.grad.is_sparse):
                return False
    return True


def sgd_update(opt: torch.optim.Optimizer) -> None:
    """opt.step() of the engine's SGD, bit for bit, in four foreach calls instead of four ops per tensor.

    The same arithmetic as torch's single-tensor SGD on the CPU (its path there): grad + wd * param, then
    buf = buf * momentum + grad (a clone of that at the first step), then param - lr * buf, each op on each
    tensor as before (the CPU's foreach ops apply the per-tensor kernel to each); the momentum buffers stay in
    opt.state, so checkpoints are unchanged. Skips torch's per-call wrappers (profiler records, dynamo guards,
    hooks: none are set here): 155 to 75 us a step on the demo-sweep MLP. Anything else is left to opt.step().
    """
    if not _plain_sgd(opt):
        opt.step()
        return
    with torch.no_grad():
        for g in opt.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            grads: list[torch.Tensor] = [p.grad for p in params if p.grad is not None]
            if g["weight_decay"] != 0:
                grads = list(torch._foreach_add(grads, params, alpha=g["weight_decay"]))
            if g["momentum"] != 0:
                state = opt.state
                bufs = [state[p].get("momentum_buffer") for p in params]
                if all(b is not None for b in bufs):
                    kept = [b for b in bufs if b is not None]
                    torch._foreach_mul_(kept, g["momentum"])
                    torch._foreach_add_(kept, grads, alpha=1 - g["dampening"])
                else:  # a first step (for some tensors): the buffer starts as the gradient
                    kept = []
                    for p, b, d in zip(params, bufs, grads, strict=True):
                        if b is None:
                            b = torch.clone(d).detach()
                            state[p]["momentum_buffer"] = b
                        else:
                            b.mul_(g["momentum"]).add_(d, alpha=1 - g["dampening"])
                        kept.append(b)
                grads = kept
            torch._foreach_add_(params, grads, alpha=-g["lr"])


@dataclass
class State:
    model: nn.Module
    opt: torch.optim.Optimizer
    t: int


class Training:
    """Everything a training config needs in one process: data on the device, schedule, builders."""

    def __init__(self, cfg: conf.TrainConfig, store: Store | None = None):
        conf.validate_train(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        configure_determinism(self.device)
        self.store = store if store is not None else Store()
        self.ds: Dataset = get_dataset(cfg, cache_dir=self.store.root / "data").to(self.device)
        self.schedule = BatchSchedule(len(self.ds.x_train), cfg.batch_size, cfg.data_seed, cfg.augment)
        self.key = cfg.trajectory_key()
        self.steps_done = 0  # SGD steps this object ran (tests count them)
        # (iteration, training loss) of every step this object ran, per trajectory key: the live curve
        self.losses: dict[str, list[tuple[int, float]]] = {}
        # called as on_save(key, t, model) after each checkpoint is written (live test accuracy)
        self.on_save: Callable[[str, int, nn.Module], None] | None = None
        self.check_every = 1 if self.device.type == "cpu" else 25
        # per trajectory key, the last checkpoint this object read, as (iteration, model and optimizer state with
        # tensors of its own): read again from here, not from its file (see `keep`, `kept`)
        self._kept: dict[str, tuple[int, dict[str, Any]]] = {}
        # Dropout draws from the device's default generator; seeding only that one is ~100x cheaper
        # than torch.manual_seed, which also walks every lazy accelerator backend on each call.
        self.generator = (torch.default_generator if self.device.type == "cpu"
                          else torch.cuda.default_generators[self.device.index or 0])

    # -- building blocks --------------------------------------------------------------------
    def new_model(self) -> nn.Module:
        return build_model(self.cfg, self.ds.input_shape, self.ds.num_classes, self.device)

    def new_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(trainable(model), lr=self.cfg.lr, momentum=self.cfg.momentum,
                               weight_decay=self.cfg.weight_decay)

    def step(self, model: nn.Module, opt: torch.optim.Optimizer, t: int) -> torch.Tensor:
        """SGD step t: batch t, lr_at(t), dropout masks seeded by the schedule."""
        x, y, dropout_seed = self.schedule.batch(self.ds, t)
        lr = lr_at(self.cfg, t)
        for g in opt.param_groups:
            g["lr"] = lr
        self.generator.manual_seed(dropout_seed)
        train_mode(model)
        for g in opt.param_groups:  # opt.zero_grad(set_to_none=True) without its wrappers
            for p in g["params"]:
                p.grad = None
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        sgd_update(opt)
        self.steps_done += 1
        return loss.detach()

    def pack(self, s: State, loss: float | None, losses: list[tuple[int, float]] | None = None) -> dict[str, Any]:
        """A checkpoint. `losses`: (iteration, training loss) of the steps trained since the state this
        run started from or last saved, so the base run's whole loss curve can be read back from its
        checkpoints, whichever process trained which part (results stay a function of the config)."""
        ckpt = {"model": s.model.state_dict(), "optimizer": s.opt.state_dict(), "iteration": s.t, "train_loss": loss}
        if losses:
            ckpt["loss_t"] = torch.tensor([t for t, _ in losses], dtype=torch.int64)
            ckpt["loss"] = torch.tensor([v for _, v in losses], dtype=torch.float64)
        return ckpt

    def keep(self, key: str, t: int, ckpt: dict[str, Any]) -> None:
        """Hold checkpoint t of trajectory `key` in memory, as its file has just been read, in place of the one held
        before: a chaos cell reads the branch it has just trained to measure it, then resumes it at the next t1,
        and every branch of a row starts from the same base checkpoint, 3-9 ms a read. Only what was read is
        held, never what was written: the first read of each file is what proves the store keeps what it is
        given (a disk that does not says so: `state`). Its tensors are copied: the state handed out is trained
        on in place. On the CPU (elsewhere a read is the device's copy, and memory there is the scarcer)."""
        if self.device.type == "cpu":
            self._kept[key] = (t, {"model": _own(ckpt["model"]), "optimizer": _own(ckpt["optimizer"]),
                                   "iteration": int(ckpt["iteration"])})

    def kept(self, key: str, t: int) -> State | None:
        """A new state from checkpoint t of `key` if this object holds it (`keep`), else None: the same state as
        `unpack` of its file (the same values, which load_state_dict copies into a new model), with tensors of its
        own again (the optimizer's load_state_dict keeps the momentum it is given, which training then updates
        in place)."""
        held = self._kept.get(key)
        if held is None or held[0] != t:
            return None
        # (the model's values are copied by load_state_dict; the optimizer's momentum must be copied here)
        return self.unpack({"model": held[1]["model"], "optimizer": _own(held[1]["optimizer"]),
                            "iteration": held[1]["iteration"]})

    def unpack(self, ckpt: dict[str, Any]) -> State:
        model = self.new_model()
        model.load_state_dict(ckpt["model"])
        opt = self.new_optimizer(model)
        opt.load_state_dict(ckpt["optimizer"])
        return State(model, opt, int(ckpt["iteration"]))

    def initial(self) -> State:
        model = self.new_model()
        return State(model, self.new_optimizer(model), 0)

    # -- trajectories -----------------------------------------------------------------------
    def base(self) -> Trajectory:
        return Trajectory(self, self.key, 0, self.initial)

    def branch(self, t0: int, eps: float, mode: str, seed: int) -> Trajectory:
        key = conf.digest({"base": self.key, "t0": t0, "eps": eps, "mode": mode, "seed": seed})

        def start() -> State:
            s = self.base().state(t0)
            perturb_(s.model, eps, mode, perturbation_seed(seed, t0))
            return s

        return Trajectory(self, key, t0, start)

    def perturbation_norms(self, t0: int, eps: float, mode: str, seed: int) -> dict[str, float]:
        """Realized |theta' - theta| of a branch (re-derived: the perturbation is a pure function)."""
        s = self.base().state(t0)
        return perturb_(s.model, eps, mode, perturbation_seed(seed, t0))


def _own(x: Any) -> Any:
    """`x` (a state dict, nested dicts and lists of tensors) with every tensor copied; an OrderedDict keeps its
    `_metadata` (module versions, which load_state_dict reads), as torch.save and torch.load keep it."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        out = type(x)((k, _own(v)) for k, v in x.items())
        if hasattr(x, "_metadata"):
            out._metadata = copy.deepcopy(x._metadata)  # type: ignore[attr-defined]
        return out
    if isinstance(x, list | tuple):
        return type(x)(_own(v) for v in x)
    return x


def checkpoint_size_estimate(training: Training, s: State) -> int:
    """Bytes one checkpoint of this model takes on disk (weights, buffers and momentum), without writing one."""
    model = sum(v.numel() * v.element_size() for v in s.model.state_dict().values())
    grads = sum(p.numel() * p.element_size() for p in trainable(s.model))
    return model + (grads if training.cfg.momentum else 0) + 16 * 1024  # + the zip's records (measured: 5-10 KB)


def _waiter(cancel: CancelToken | None, on_wait: Callable[[], None] | None) -> Callable[[], None]:
    """What a process blocked on a trajectory lock does every poll: tell once, honour a cancel."""
    told: list[bool] = []

    def wait() -> None:
        if on_wait is not None and not told:
            told.append(True)
            on_wait()
        if cancel is not None:
            cancel.check()

    return wait


class Trajectory:
    """A run from `start` whose checkpoints live in the store under `key`.

    Checkpoints are a cache: one that is missing or fails its checksum is trained again from the
    nearest earlier good one (on the CPU, bit for bit the one that was lost). Training holds the
    store's lock on `key`, so two processes needing the same trajectory train it once: the second
    waits, then reads what the first wrote.
    """

    def __init__(self, training: Training, key: str, start: int, start_state: Callable[[], State]):
        self.training, self.key, self.start, self._make_start = training, key, start, start_state

    def start_state(self) -> State:
        """A fresh copy of the state at `start` (theta_0, or the base checkpoint at t0 plus eps)."""
        return self._make_start()

    def with_key(self, key: str) -> Trajectory:
        """The same start state under another checkpoint key (lockstep's stacked twins)."""
        return Trajectory(self.training, key, self.start, self._make_start)

    def steps_needed(self, needed: Iterable[int]) -> int:
        """SGD steps `ensure(needed)` would run now (for progress and ETA)."""
        have = set(self.training.store.checkpoints(self.key))
        pos, total = None, 0
        for m in sorted(set(needed) - have):
            s = max([h for h in have if h <= m], default=self.start)
            if pos is None or s > pos:
                pos = s
            total += m - pos
            pos = m
        return total

    def ensure(self, needed: Iterable[int], on_step: StepCallback | None = None,
               cancel: CancelToken | None = None, on_wait: Callable[[], None] | None = None) -> None:
        """Make sure checkpoints exist at every needed iteration, training only what is missing.

        Each missing checkpoint is reached from the latest stored one at or before it (or the
        trajectory's start), so extending a grid trains only the new part. Before training, the disk
        must hold every checkpoint it will write (StoreFull otherwise, with nothing trained). While
        another process trains this trajectory, `on_wait()` is called once and this one waits
        (cancellable), then trains only what the other did not write.
        """
        store = self.training.store
        needed = sorted(set(needed))
        for m in needed:
            if m < self.start:
                raise ValueError(f"checkpoint {m} precedes the start {self.start} of trajectory {self.key}")
        if not set(needed) - set(store.checkpoints(self.key)):
            return
        with store.trajectory_lock(self.key, wait=_waiter(cancel, on_wait)):
            self._train_missing(needed, on_step, cancel)  # another process may have trained them meanwhile

    def _saves(self, missing: list[int], have: set[int]) -> int:
        every = self.training.cfg.checkpoint_every
        extra = set(range((self.start // every + 1) * every, missing[-1] + 1, every)) if every else set()
        return len((set(missing) | extra) - have)

    def _train_missing(self, needed: list[int], on_step: StepCallback | None, cancel: CancelToken | None) -> None:
        store, training = self.training.store, self.training
        have = set(store.checkpoints(self.key))
        missing = sorted(set(needed) - have)
        if not missing:
            return
        targets = set(missing)
        every = training.cfg.checkpoint_every
        s: State | None = None
        segment: list[tuple[int, float]] = []  # losses since `s` was loaded or last saved
        for m in missing:
            if m in have:
                continue
            best = max([h for h in have if h <= m], default=None)
            if s is None or (best is not None and best > s.t):
                first = s is None
                s = self._load_or_start(best)
                segment = []
                if first:
                    one = store.checkpoint_bytes(self.key) or checkpoint_size_estimate(training, s)
                    n = self._saves(missing, have)
                    store.require_space(n * one, f"training {n} checkpoints of {self.key}")
                if s.t == m:  # the start itself was asked for
                    store.save_checkpoint(self.key, m, training.pack(s, None))
                    have.add(m)
                    if training.on_save is not None:
                        training.on_save(self.key, m, s.model)
                    continue
            buf: list[torch.Tensor] = []
            while s.t < m:
                if cancel is not None:
                    cancel.check()
                buf.append(training.step(s.model, s.opt, s.t))
                s.t += 1
                save = s.t in targets or (every and s.t % every == 0 and s.t not in have)
                if len(buf) >= training.check_every or save or s.t == m:
                    # one read of the window (one sync on a GPU), checked here: on the CPU's window of one
                    # step, a stack, isfinite and all() cost more than the value itself
                    values: list[float] = [buf[0].item()] if len(buf) == 1 else torch.stack(buf).tolist()
                    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
                    if bad is not None:
                        first_bad = s.t - len(buf) + bad
                        raise TrainingDiverged(first_bad, lr_at(training.cfg, first_bad))
                    last_loss = values[-1]
                    steps = list(zip(range(s.t - len(values) + 1, s.t + 1), values, strict=True))
                    training.losses.setdefault(self.key, []).extend(steps)
                    segment.extend(steps)
                    buf = []
                    if on_step is not None:
                        on_step(len(values))
                if save:
                    store.save_checkpoint(self.key, s.t, training.pack(s, last_loss, segment))
                    segment = []
                    have.add(s.t)
                    if training.on_save is not None:
                        training.on_save(self.key, s.t, s.model)

    def _read(self, t: int) -> State | None:
        """Checkpoint t as a new state: from memory if this process has read it before, else from its file (then
        held); None if the file is missing or corrupt (dropped by the store)."""
        held = self.training.kept(self.key, t)
        if held is not None:
            return held
        ckpt = self.training.store.load_checkpoint(self.key, t, map_location=self.training.device)
        if ckpt is None:
            return None
        self.training.keep(self.key, t, ckpt)
        return self.training.unpack(ckpt)

    def _load_or_start(self, t: int | None) -> State:
        """The state at stored checkpoint t, or at the nearest earlier good one, or the start."""
        while t is not None:
            s = self._read(t)
            if s is not None:
                return s
            # missing or corrupt (now dropped): fall back to the one before it
            t = max((h for h in self.training.store.checkpoints(self.key) if h < t), default=None)
        return self.start_state()

    def state(self, t: int, on_step: StepCallback | None = None, cancel: CancelToken | None = None) -> State:
        """The state at t (trained now if missing; a missing or corrupt file is recomputed, never used)."""
        for _ in range(2):
            self.ensure([t], on_step, cancel)  # its file is there (or trained now): then it may come from memory
            s = self._read(t)
            if s is not None:
                return s
        path = self.training.store.checkpoint_path(self.key, t)
        raise StoreError(f"checkpoint {t} of {self.key} was written twice to {path} but did not read back intact "
                         "either time: the disk may be failing (see `twophase cache check`)")

    def model(self, t: int) -> nn.Module:
        m = self.state(t).model
        m.eval()
        return m
