"""Lockstep copies: K copies of one model trained as ONE stacked model under the same SGD noise.

The Chaos Effect trains, from the base checkpoint at t0, one copy per perturbation seed (plus,
here, an unperturbed control). Every copy sees the identical batch, augmentation and dropout mask
at every step, so the K forward/backward passes differ only in their parameters: they can run as
one vmapped model (torch.func.stack_module_state + functional_call + vmap) with parameters,
BatchNorm buffers and momentum buffers stacked along dim 0, and ONE torch.optim.SGD over the
stacked tensors. The loss is the sum over copies of each copy's mean cross-entropy, so the gradient
of copy k is exactly its own (the other terms do not depend on its parameters) and the SGD update,
being elementwise, is exactly the per-copy update.

What is and is not exact (docs/science.md, "controls that make the experiment honest"):
- the stacked path agrees with the plain path (`Run.step`, one copy at a time) only to rounding:
  vmap turns convolutions into grouped ones and matmuls into batched ones, which sum in another
  order. In the chaotic phase such differences grow like any perturbation, so compare the two paths
  over a few steps only;
- inside ONE stack, copies with identical parameters stay bitwise identical: an eps = 0 copy equals
  the stacked control bit for bit. That is why `ensure_branches_stacked` trains its own control in
  the stack (key `run.branch(t0, 0.0, "per-coordinate", 0).key`) instead of reusing the base run,
  which went through the plain path, and why a stack's checkpoints are always (re)written together;
- for the same reason stacked branches live under their own keys (`stacked`): a checkpoint written
  by one path is never read as the other's.

Cost (per stacked step, K copies, P parameters, A activation memory of one copy at the batch size):
- FLOPs: K times one copy's forward+backward, plus vmap's reshapes of activations (about one copy of
  each activation) and the optimizer's elementwise update over K*P numbers;
- memory: K*(2P) for parameters and momentum (+K*P gradients), K*A for activations: the stack is a
  K-times-wider model, so on a GPU K is bounded by memory;
- Python/dispatcher overhead: one model's worth instead of K, which is what wins on a GPU (small
  models are launch-bound: the K-wide kernels cost about as much as one). On the CPU the work is
  already compute-bound and grouped convolutions are slower per FLOP than plain ones, so the loop
  usually wins or ties (measured 0.5x-1.4x); `choose_path` decides by timing a few steps;
- checkpoints: each save unstacks every copy into one reusable template module and optimizer
  (a copy of P numbers per copy, then torch.save), the same bytes the plain path writes.

Past 350 lines on purpose: stacking, the stacked step and the path chooser must stay together to
stay interchangeable with the plain path bit for bit where that is promised.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Hashable, Iterable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from twophase_core.science.train import CancelToken, State, StepCallback, Training, TrainingDiverged, Trajectory, lr_at
from twophase_core.settings import config as conf

CONTROL_MODE = "per-coordinate"  # the control: an eps = 0 branch (the mode and seed do not matter at eps 0)


def stacked(traj: Trajectory) -> Trajectory:
    """The stacked-path twin of a branch: same start state, its own checkpoint key.

    The two paths agree only to rounding, and the chaotic phase amplifies that like any perturbation
    (demo model, t0 = 3: a max parameter difference of 0.07 after 27 steps). So their checkpoints must
    never mix: a branch trained in a stack and compared with the base run (the loop path's control), or
    an eps = 0 loop branch served from a stacked control's checkpoints, would break the eps = 0 control
    of docs/science.md. The twin's key is derived from the branch's, so every stacked trajectory is still
    a pure function of the config.
    """
    return traj.with_key(conf.digest({"lockstep": "stack", "of": traj.key}))


def control_branch(training: Training, t0: int) -> Trajectory:
    """The unperturbed control of the stacked path at t0: the stacked twin of the eps = 0 branch
    `run.branch(t0, 0.0, "per-coordinate", 0)`."""
    return stacked(training.branch(t0, 0.0, CONTROL_MODE, 0))


# ---------------------------------------------------------------------------------------------
# Stacking and unstacking


def _trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _momentum_buffers(s: State) -> dict[str, torch.Tensor | None]:
    """Momentum buffer of each trainable parameter, by name (None before the first step)."""
    out: dict[str, torch.Tensor | None] = {}
    for n, p in s.model.named_parameters():
        if p.requires_grad:
            out[n] = s.opt.state.get(p, {}).get("momentum_buffer")
    return out


class _Stack:
    """K copies as stacked tensors: params (leaf, trainable ones in the optimizer), buffers, SGD."""

    def __init__(self, training: Training, starts: list[State]):
        self.training = training
        self.k = len(starts)
        models = [s.model for s in starts]
        self.names = _trainable_names(models[0])
        params, buffers = stack_module_state(models)
        self.params: dict[str, torch.Tensor] = params
        self.buffers: dict[str, torch.Tensor] = buffers
        for n, p in self.params.items():
            p.requires_grad_(n in self.names)
        self.base = copy.deepcopy(models[0]).to("meta")
        cfg = training.cfg
        self.opt = torch.optim.SGD([self.params[n] for n in self.names], lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        self.lr = starts[0].opt.param_groups[0]["lr"]  # what a save before any step records
        if cfg.momentum != 0:
            bufs = [_momentum_buffers(s) for s in starts]
            for n in self.names:
                got = [b[n] for b in bufs]
                if all(g is None for g in got):
                    continue  # no step yet: SGD initialises the buffer from the first gradient, as the loop does
                ref = self.params[n]
                mom = torch.stack([g.detach() if g is not None else torch.zeros_like(ref[0]) for g in got])
                self.opt.state[ref]["momentum_buffer"] = mom
        self._template: State | None = None

        def loss_one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(functional_call(self.base, (p, b), (x,)), y)

        self._losses = vmap(loss_one, in_dims=(0, 0, None, None), randomness="same")

    def step(self, t: int) -> torch.Tensor:
        """Stacked SGD step t (batch t, lr_at(t), dropout seed of t); the K losses, detached."""
        training = self.training
        x, y, dropout_seed = training.schedule.batch(training.ds, t)
        self.lr = lr_at(training.cfg, t)
        for g in self.opt.param_groups:
            g["lr"] = self.lr
        training.generator.manual_seed(dropout_seed)
        self.base.train()
        self.opt.zero_grad(set_to_none=True)
        losses = self._losses(self.params, self.buffers, x, y)  # BN buffers are updated in place, per copy
        losses.sum().backward()
        self.opt.step()
        training.steps_done += self.k
        return losses.detach()

    @torch.no_grad()
    def unstack(self, k: int, t: int) -> State:
        """Copy k as a normal module and optimizer (a template reused between saves: pack it at once)."""
        if self._template is None:
            model = self.training.new_model()
            self._template = State(model, self.training.new_optimizer(model), t)
        s = self._template
        s.t = t
        for n, p in s.model.named_parameters():
            p.copy_(self.params[n][k])
        for n, b in s.model.named_buffers():
            b.copy_(self.buffers[n][k])
        for g in s.opt.param_groups:
            g["lr"] = self.lr
        named = dict(s.model.named_parameters())
        for n in self.names:
            buf = self.opt.state.get(self.params[n], {}).get("momentum_buffer")
            if buf is not None:
                s.opt.state[named[n]]["momentum_buffer"] = buf[k].clone()
        return s


def train_stacked(training: Training, starts: list[State], t_end: int, save_at: Iterable[int], keys: list[str],
                  on_step: StepCallback | None = None, cancel: CancelToken | None = None) -> None:
    """Train K copies from their common start iteration to t_end as one stacked model.

    `starts[k]` is copy k's state (model, optimizer with its momentum buffers, t); all share t.
    Copy k's checkpoint at every iteration in `save_at` (within [t, t_end]) is written under
    `keys[k]` in `run.pack` format, overwriting one already there: a stack's checkpoints are written
    together. `on_step(n)` receives copy-steps (K per stacked step), the unit of the loop path's
    progress, and `run.steps_done` grows by K per stacked step. A non-finite loss of any copy raises
    `TrainingDiverged` at its first bad iteration (earlier checkpoints stay). The start states'
    modules are not modified. Cost: see the module docstring.
    """
    if not starts:
        return
    if len(keys) != len(starts):
        raise ValueError(f"{len(starts)} start states but {len(keys)} keys")
    t = starts[0].t
    if any(s.t != t for s in starts):
        raise ValueError(f"stacked copies must start at one iteration, got {sorted({s.t for s in starts})}")
    if t_end < t:
        raise ValueError(f"t_end={t_end} precedes the start {t}")
    targets = {m for m in save_at if t <= m <= t_end}
    st = _Stack(training, starts)

    def save(losses: torch.Tensor | None) -> None:
        for k, key in enumerate(keys):
            loss = None if losses is None else float(losses[k])
            training.store.save_checkpoint(key, t, training.pack(st.unstack(k, t), loss))

    if t in targets:
        save(None)
    buf: list[torch.Tensor] = []
    last: torch.Tensor | None = None
    while t < t_end:
        if cancel is not None:
            cancel.check()
        buf.append(st.step(t))
        t += 1
        saving = t in targets
        if len(buf) >= training.check_every or saving or t == t_end:
            window = torch.stack(buf)  # (steps, K)
            finite = torch.isfinite(window).all(dim=1)
            if not bool(finite.all()):
                first = t - len(buf) + int((~finite).nonzero()[0, 0])
                raise TrainingDiverged(first, lr_at(training.cfg, first))
            last = window[-1]
            if on_step is not None:
                on_step(int(window.numel()))
            buf = []
        if saving:
            save(last)


# ---------------------------------------------------------------------------------------------
# Branches of the Chaos Effect


def _load_all(training: Training, keys: list[str], t: int) -> list[State] | None:
    states = []
    for key in keys:
        ckpt = training.store.load_checkpoint(key, t, map_location=training.device)
        if ckpt is None:
            return None
        states.append(training.unpack(ckpt))
    return states


def ensure_branches_stacked(training: Training, branches: list[Trajectory], needed: list[int], include_control: bool,
                            on_step: StepCallback | None = None,
                            cancel: CancelToken | None = None) -> list[Trajectory]:
    """Checkpoints at every needed iteration for branches sharing t0, trained as one stack.

    `branches` are plain branches (`run.branch(...)`); their stacked copies are written under the keys
    of their twins `stacked(branch)`, returned in the same order: read the results from those. With
    `include_control` the stack also holds the unperturbed control (`control_branch(run, t0)`): in the
    stacked path the control must go through the same code path as the perturbed copies (docs/science.md),
    so it cannot be the base run. Nothing is trained when every copy has every needed checkpoint.
    Otherwise the stack resumes from the latest iteration at which EVERY copy has a readable
    checkpoint (else from each branch's start state, the base checkpoint at t0 plus eps) and writes
    all copies at every needed iteration after it (and at every multiple of `checkpoint_every`), so
    checkpoints of one iteration always come from one stack. A branch equal to the control
    (eps = 0, per-coordinate, seed 0) is trained once.

    Cost: (max(needed) - resume point) stacked steps of K = len(branches) (+1) copies; see the module
    docstring for what one stacked step costs.
    """
    twins = [stacked(b) for b in branches]
    if not branches:
        return twins
    t0 = branches[0].start
    if any(b.start != t0 for b in branches):
        raise ValueError(f"stacked branches must share t0, got {sorted({b.start for b in branches})}")
    for m in needed:
        if m < t0:
            raise ValueError(f"checkpoint {m} precedes the start {t0} of the branches")
    trajs: dict[str, Trajectory] = {}
    for b in twins + ([control_branch(training, t0)] if include_control else []):
        trajs.setdefault(b.key, b)
    keys = list(trajs)
    if not any(set(needed) - set(training.store.checkpoints(k)) for k in keys):
        return twins
    with contextlib.ExitStack() as locks:  # every copy's lock, in one order: another process waits, then reads
        for k in sorted(keys):
            locks.enter_context(training.store.trajectory_lock(k, wait=cancel.check if cancel is not None else None))
        _train_missing_stacked(training, trajs, keys, needed, on_step, cancel)
    return twins


def _train_missing_stacked(training: Training, trajs: dict[str, Trajectory], keys: list[str], needed: list[int],
                           on_step: StepCallback | None, cancel: CancelToken | None) -> None:
    """The body of `ensure_branches_stacked`, run with every copy's trajectory lock held."""
    have = [set(training.store.checkpoints(k)) for k in keys]
    missing = set().union(*(set(needed) - h for h in have))
    if not missing:
        return
    first, t_end = min(missing), max(missing)
    common = sorted((h for h in set.intersection(*have) if h <= first), reverse=True)
    starts: list[State] | None = None
    for h in common:
        starts = _load_all(training, keys, h)
        if starts is not None:
            break
    if starts is None:
        starts = [trajs[k].start_state() for k in keys]
    t = starts[0].t
    every = training.cfg.checkpoint_every
    save_at = {m for m in needed if t <= m <= t_end}
    if t in save_at and all(t in h for h in have):
        save_at.discard(t)  # resumed from it: already written by this stack
    if every:
        save_at |= set(range((t // every + 1) * every, t_end + 1, every))
    train_stacked(training, starts, t_end, sorted(save_at), keys, on_step, cancel)


# ---------------------------------------------------------------------------------------------
# Loop or stack?

_CHOICE: dict[tuple[Hashable, ...], str] = {}
_TIMINGS: dict[tuple[Hashable, ...], dict[str, float]] = {}
CALIBRATION_STEPS = 5
STACK_MARGIN = 1.05  # stack only when this much faster: at a tie the loop (the base run is its control) wins
SLOW_STEP_S = 2.0  # a plain step slower than this on the CPU: skip calibrating, loop


def _cache_key(training: Training, k: int, with_control: bool) -> tuple[Hashable, ...]:
    c = training.cfg
    return (c.model, c.width, c.dataset, c.batch_size, c.dropout, c.train_size, training.device.type, k, with_control)


def time_paths(training: Training, k_loop: int, k_stack: int, steps: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per step of k_loop copies one by one and of k_stack copies stacked, timed alternately step
    by step (so that a change of machine load hits both), after untimed warm-up steps (the stack's first
    steps are slow); from theta_0, batches 0, 1, ..."""
    states = [training.initial() for _ in range(k_loop)]
    st = _Stack(training, [training.initial() for _ in range(k_stack)])

    def loop_step(t: int) -> None:
        for s in states:
            training.step(s.model, s.opt, t)

    times: dict[str, list[float]] = {"loop": [], "stack": []}
    for t in range(warmup + steps):
        order = [("loop", loop_step), ("stack", st.step)]
        for name, fn in order if t % 2 else order[::-1]:
            _sync(training)
            t_start = time.perf_counter()
            fn(t)
            _sync(training)
            if t >= warmup:
                times[name].append(time.perf_counter() - t_start)
    return times


def median(v: list[float]) -> float:
    v = sorted(v)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2


def _sync(training: Training) -> None:
    if training.device.type == "cuda":
        torch.cuda.synchronize(training.device)


def choose_path(training: Training, k: int, with_control: bool = False) -> str:
    """"loop" or "stack" for K copies of this run's model, cached per (model, data, device, K).

    `with_control`: the stacked path trains K + 1 copies (its own control) where the loop trains K
    (the base run is its control), as in `run_chaos`; the comparison is then loop(K) vs stack(K + 1).
    Rule: a single loop copy (K <= 1) loops. On CUDA: stack (small models are launch-bound, so K copies
    cost about one; a big model is compute-bound and stacking costs little; memory is K times one
    copy's). Elsewhere a calibration times CALIBRATION_STEPS steps each way, interleaved (after two
    warm-up steps), from theta_0, and stacks only when its median step is STACK_MARGIN times faster:
    about 2*K*(CALIBRATION_STEPS + 2) plain steps of work (about 2 s for the demo model at K = 8 on one
    thread), once per process. If one plain step takes more than SLOW_STEP_S the calibration stops
    there and picks the loop (stacking never paid much on the CPU). Calibration steps do not count in
    `run.steps_done`; they reseed the global RNG like every training step does.
    """
    if k <= 1:
        return "loop"
    key = _cache_key(training, k, with_control)
    if key in _CHOICE:
        return _CHOICE[key]
    if training.device.type == "cuda":
        _CHOICE[key] = "stack"
        return "stack"
    done = training.steps_done
    try:
        probe = training.initial()
        t_start = time.perf_counter()
        training.step(probe.model, probe.opt, 0)
        one = time.perf_counter() - t_start
        if one > SLOW_STEP_S:
            choice, times = "loop", {"loop": one * k, "stack": float("nan")}
        else:
            got = time_paths(training, k, k + int(with_control), CALIBRATION_STEPS)
            times = {name: median(v) for name, v in got.items()}
            choice = "stack" if times["stack"] * STACK_MARGIN < times["loop"] else "loop"
    finally:
        training.steps_done = done
    _CHOICE[key], _TIMINGS[key] = choice, times
    return choice
