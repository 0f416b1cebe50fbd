"""The three experiments: config in, `Result` out, served from the store when already computed.

Each takes a progress callback (fraction in [0, 1], stage text), a cancel token and a callback for
partial results, so the app can drive it from a worker process. Nothing here imports Streamlit.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from . import __version__, lockstep
from . import config as C
from .data import stratified_subset
from .results import Result, load_result, save_result
from .store import Store
from .train import CancelToken, Run

ProgressCallback = Callable[[float, str], None]


def _served_from_store(compute: Callable[..., Result]) -> Callable[..., Result]:
    """Validate, answer from the store if the result is there, else compute and store it."""

    @functools.wraps(compute)
    def run(cfg: Any, store: Store | None = None, progress: ProgressCallback | None = None,
            cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None) -> Result:
        C.validate(cfg)
        store = store or Store()
        cached = load_result(store, C.kind_of(cfg), C.config_hash(cfg))
        if cached is None:
            cached = compute(cfg, store, progress, cancel, partial)
            save_result(store, cached)
        if progress:
            progress(1.0, "done")
        return cached

    del run.__wrapped__  # the public signature is the wrapper's: store defaults to Store()
    return run


class _Progress:
    """Maps work units (SGD steps, evaluations) to a fraction and a stage."""

    def __init__(self, cb: ProgressCallback | None, total: float):
        self.cb, self.total, self.done, self.stage = cb, max(total, 1.0), 0.0, ""
        self._last = 0.0

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        self._emit(force=True)

    def add(self, units: float) -> None:
        self.done += units
        self._emit()

    def _emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.cb is not None and (force or now - self._last > 0.1):
            self._last = now
            self.cb(min(self.done / self.total, 0.999), self.stage)


def _meta(cfg: Any, started: float, run: Run, **extra: Any) -> dict[str, Any]:
    return {"version": __version__, "seconds": round(time.time() - started, 3), "device": str(run.device),
            "sgd_steps": run.steps_done, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}


def _eval_set(run: Run, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = run.ds.x_test, run.ds.y_test
    return (x[:n], y[:n]) if n else (x, y)


# ---------------------------------------------------------------------------------------------
# Chaos


@_served_from_store
def run_chaos(cfg: C.ChaosConfig, store: Store, progress: ProgressCallback | None = None,
              cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None) -> Result:
    """C, B, D over (t0, t1), one branch per (t0, seed), the base run as the control."""
    from . import metrics

    h = C.config_hash(cfg)
    started = time.time()
    run = Run(cfg.train, store)
    t0s, t1s, seeds = sorted(cfg.t0), sorted(cfg.t1), list(cfg.perturb_seeds)
    base = run.base()
    branches = {(t0, s): run.branch(t0, cfg.eps, cfg.eps_mode, s) for t0 in t0s for s in seeds}
    later = {t0: [t1 for t1 in t1s if t1 > t0] for t0 in t0s}
    how = cfg.lockstep if cfg.lockstep != "auto" else lockstep.choose_path(run, len(seeds), with_control=True)
    stacked = how == "stack"
    n_cells = sum(len(v) for v in later.values()) * len(seeds)
    eval_units = 2.0 + cfg.n_alpha / 10
    total = (base.steps_needed(t0s + t1s) + sum(b.steps_needed(later[t0]) for (t0, _), b in branches.items())
             + n_cells * eval_units)
    if stacked:  # the stack trains its own control: the base run went through the plain path
        total += sum(lockstep.control_branch(run, t0).steps_needed(later[t0]) for t0 in t0s)
    prog = _Progress(progress, total)
    prog.set_stage("base run")
    base.ensure(t0s + t1s, prog.add, cancel)

    x, y = _eval_set(run, cfg.eval_size)
    train_x = run.ds.x_train if cfg.bn == "reset" else None
    shape = (len(seeds), len(t0s), len(t1s))
    out = {k: np.full(shape, np.nan) for k in ("C", "B", "D", "acc_branch")}
    path = np.full(shape + (cfg.n_alpha,), np.nan)
    alphas = np.linspace(0.0, 1.0, cfg.n_alpha)
    realized = np.zeros(shape[:2])
    acc_base = np.zeros(len(t1s))
    base_models = {t1: base.model(t1) for t1 in t1s}
    for j, t1 in enumerate(t1s):
        acc_base[j] = metrics.evaluate(base_models[t1], x, y)[1]
    last_partial = 0.0
    for i, t0 in enumerate(t0s):
        controls = base_models
        if stacked:
            prog.set_stage(f"branches t0={t0} ({len(seeds) + 1} copies stacked)")
            twins = lockstep.ensure_branches_stacked(run, [branches[(t0, s)] for s in seeds], later[t0], True,
                                                     prog.add, cancel)
            branches.update({(t0, s): tw for s, tw in zip(seeds, twins, strict=True)})
            control = lockstep.control_branch(run, t0)
            controls = {t1: control.model(t1) for t1 in later[t0]}
        for si, seed in enumerate(seeds):
            br = branches[(t0, seed)]
            if not stacked:
                prog.set_stage(f"branch t0={t0} seed={seed}")
                br.ensure(later[t0], prog.add, cancel)
            realized[si, i] = run.perturbation_norms(t0, cfg.eps, cfg.eps_mode, seed)["realized"]
            prog.set_stage(f"metrics t0={t0}")
            for t1 in later[t0]:
                if cancel is not None:
                    cancel.check()
                j = t1s.index(t1)
                a, b = controls[t1], br.model(t1)
                pm = metrics.pair_metrics(a, b, x, y, cfg.n_alpha, cfg.bn, train_x)
                for k in ("C", "B", "D"):
                    out[k][si, i, j] = pm[k]
                out["acc_branch"][si, i, j] = pm["acc_b"]
                path[si, i, j] = pm["losses"]
                prog.add(eval_units)
                row_done = si == len(seeds) - 1 and t1 == later[t0][-1]
                if partial is not None and (row_done or time.time() - last_partial > 1.0):
                    last_partial = time.time()  # cells appear as they finish
                    meta = _meta(cfg, started, run, partial=True, rows_done=i + int(row_done), lockstep=how)
                    partial(_chaos_result(cfg, h, t0s, t1s, seeds, out, path, alphas, realized, acc_base, meta))
    return _chaos_result(cfg, h, t0s, t1s, seeds, out, path, alphas, realized, acc_base,
                         _meta(cfg, started, run, lockstep=how))


def _chaos_result(cfg, h, t0s, t1s, seeds, out, path, alphas, realized, acc_base, meta) -> Result:
    arrays = {"t0": np.array(t0s), "t1": np.array(t1s), "seeds": np.array(seeds), "alphas": alphas,
              "path": path, "realized_eps_norm": realized, "acc_base": acc_base, **out}
    return Result("chaos", C.to_dict(cfg), h, arrays, meta)


# ---------------------------------------------------------------------------------------------
# Cone


@_served_from_store
def run_cone(cfg: C.ConeConfig, store: Store, progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None) -> Result:
    """Kernels at every checkpoint, their Gram matrix once, and every view derived from it."""
    from . import ntk

    h = C.config_hash(cfg)
    started = time.time()
    run = Run(cfg.train, store)
    its = sorted(cfg.checkpoints)
    base = run.base()
    kernel_units = 10.0
    prog = _Progress(progress, base.steps_needed(its) + kernel_units * len(its))
    prog.set_stage("base run")
    base.ensure(its, prog.add, cancel)
    idx = stratified_subset(run.ds.y_train, cfg.n_samples, cfg.subset_seed).to(run.device)
    x = run.ds.x_train[idx]
    xt, yt = run.ds.x_test, run.ds.y_test
    from .metrics import evaluate

    kernels, acc = [], []
    prog.set_stage("kernels")
    t_kernel = 0.0
    for t in its:
        if cancel is not None:
            cancel.check()
        m = base.model(t)
        tk = time.time()
        kernels.append(ntk.empirical_ntk(m, x, cfg.kernel))
        t_kernel += time.time() - tk
        acc.append(evaluate(m, xt, yt)[1])
        prog.add(kernel_units)
    R = ntk.gram(kernels)
    del kernels
    G = ntk.normalized_gram(R)
    S = ntk.distance_matrix(G)
    arrays: dict[str, np.ndarray] = {
        "iters": np.array(its), "R": R, "G": G, "S": S, "test_acc": np.array(acc),
        "references": np.array(cfg.references), "ref_curves": ntk.reference_curves(S, its, cfg.references),
        "dts": np.array(cfg.dts),
    }
    for dt, (ts, vals) in zip(cfg.dts, ntk.neighbour_curves(S, its, cfg.dts), strict=True):
        arrays[f"neigh_t_{dt}"] = np.asarray(ts)
        arrays[f"neigh_s_{dt}"] = np.asarray(vals)
    for method in ("pca", "mds"):
        for dim in (2, 3):
            arrays[f"{method}{dim}"] = ntk.project(G, method, dim, seed=cfg.subset_seed)
    window = cfg.cone_window if cfg.cone_window != (0, 0) else (its[len(its) // 2], its[-1])
    early = (its[1], window[0]) if window[0] > its[1] else (its[1], its[1])
    win_idx = [i for i, t in enumerate(its) if window[0] <= t <= window[1] and t != 0]
    early_idx = [i for i, t in enumerate(its) if early[0] <= t <= early[1] and t != 0]
    arrays["cone_window"] = np.array(window)
    arrays["early_window"] = np.array(early)
    meta = _meta(cfg, started, run, kernel_seconds=round(t_kernel, 3),
                 cone_angle_deg=ntk.cone_angle(G, win_idx, 0),
                 early_angle_deg=ntk.cone_angle(G, early_idx, 0) if len(early_idx) >= 2 else None,
                 subset=idx.cpu().tolist(), n_outputs=run.ds.num_classes)
    return Result("cone", C.to_dict(cfg), h, arrays, meta)


# ---------------------------------------------------------------------------------------------
# Linearised training


@_served_from_store
def run_linear(cfg: C.LinearConfig, store: Store, progress: ProgressCallback | None = None,
               cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None) -> Result:
    """Test accuracy at T of the model linearised at each switch time t, beside full training."""
    from .linear import linear_accuracy, train_linearised
    from .metrics import evaluate

    h = C.config_hash(cfg)
    started = time.time()
    run = Run(cfg.train, store)
    T = cfg.train.iterations
    ts = sorted(cfg.switch)
    base = run.base()
    lin_units = 3.0  # a linearised step costs about three plain ones
    prog = _Progress(progress, base.steps_needed(ts + [T]) + lin_units * sum(T - t for t in ts))
    prog.set_stage("base run")
    base.ensure(ts + [T], prog.add, cancel)
    x, y = _eval_set(run, cfg.eval_size)
    acc_full = evaluate(base.model(T), x, y)[1]
    acc_switch = np.array([evaluate(base.model(t), x, y)[1] for t in ts])
    acc_lin = np.full(len(ts), np.nan)

    def result(**meta: Any) -> Result:
        arrays = {"switch": np.array(ts), "acc_linear": acc_lin.copy(), "acc_at_switch": acc_switch,
                  "acc_full": np.array(acc_full)}
        return Result("linear", C.to_dict(cfg), h, arrays, _meta(cfg, started, run, **meta))

    for i, t in enumerate(ts):
        prog.set_stage(f"linearised from t={t}")
        lin, params = train_linearised(run, base.state(t), T, cfg.bn_stats, lambda n: prog.add(lin_units * n), cancel)
        acc_lin[i] = linear_accuracy(lin, params, x, y)
        if partial is not None:
            partial(result(partial=True))
    return result()


RUNNERS = {"chaos": run_chaos, "cone": run_cone, "linear": run_linear}


def run_experiment(cfg: Any, store: Store | None = None, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None) -> Result:
    return RUNNERS[C.kind_of(cfg)](cfg, store, progress, cancel, partial)
