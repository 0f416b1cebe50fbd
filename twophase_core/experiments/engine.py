"""The three experiments: config in, `Result` out, served from the store when already computed.

Each takes a progress callback (fraction in [0, 1], stage text), a cancel token and a callback for
partial results, so the app can drive it from a worker process. Nothing here imports Streamlit.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from twophase_core import __version__
from twophase_core.execution.placement import resolve_executor
from twophase_core.experiments.result import Result, load_result, save_result
from twophase_core.science import lockstep
from twophase_core.science.data import stratified_subset
from twophase_core.science.train import CancelToken, Training
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store, task_store

ProgressCallback = Callable[[float, str], None]
Out = TypeVar("Out")


def _served_from_store(compute: Callable[..., Result]) -> Callable[..., Result]:
    """Validate, answer from the store if the result is there, else compute and store it."""

    @functools.wraps(compute)
    def run(cfg: Any, store: Store | None = None, progress: ProgressCallback | None = None,
            cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None,
            executor: str = "local") -> Result:
        conf.validate(cfg)
        resolve_executor(executor)  # local or ray, for every kind (on Ray: rows, kernels, switch times, points)
        store = store or Store()
        cached = load_result(store, conf.kind_of(cfg), conf.config_hash(cfg))
        if cached is None:
            store.check_storage()
            extra = {"executor": executor} if executor != "local" else {}
            cached = compute(cfg, store, progress, cancel, partial, **extra)
            save_result(store, cached)
        if progress:
            progress(1.0, "done")
        return cached

    del run.__wrapped__  # the public signature is the wrapper's: store defaults to Store()
    run.compute = compute  # type: ignore[attr-defined]  # the body alone: a remote task computes, the driver stores
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


class _Live:
    """The base run as it trains: its training loss at every step and its test accuracy at every
    checkpoint it writes. Sent with partial results (the first at the first step, then about once a
    second), so a page shows a moving curve within seconds of Run. The final result keeps the curve
    as read back from the base run's checkpoints (each holds the losses of the steps that led to it),
    so it is the same whichever process trained which part: `train_t`, `train_loss` up to the last
    checkpoint the experiment needs, and `acc_t`, `acc` (test accuracy on the experiment's evaluation
    set at those checkpoints)."""

    def __init__(self, run: Training, x: torch.Tensor, y: torch.Tensor, send: Callable[[], None] | None):
        self.run, self.x, self.y, self.send = run, x, y, send
        self.acc: dict[int, float] = {}
        self.curve: dict[int, float] | None = None  # from the checkpoints, once the base run is complete
        self._last = 0.0  # the first step is sent at once: the curve appears as soon as training starts
        run.on_save = self._saved

    def _saved(self, key: str, t: int, model: torch.nn.Module) -> None:
        if key == self.run.key:
            from twophase_core.science.metrics import evaluate

            self.acc[t] = evaluate(model, self.x, self.y)[1]

    def step(self, add: Callable[[float], None]) -> Callable[[int], None]:
        """An on_step callback: progress, then (at most once a second) a partial result."""

        def on_step(n: int) -> None:
            add(n)
            if self.send is not None and time.time() - self._last > 1.0:
                self._last = time.time()
                self.send()

        return on_step

    def finish(self, needed: list[int]) -> None:
        """Accuracy at every needed checkpoint not measured while training, and the curve read back."""
        from twophase_core.science.metrics import evaluate

        self.run.on_save = None
        run, key, wanted = self.run, self.run.key, set(needed)
        curve: dict[int, float] = {}

        def read(t: int) -> dict[str, Any] | None:
            ckpt = run.store.load_checkpoint(key, t, map_location=run.device)
            if ckpt is not None and "loss_t" in ckpt:
                curve.update(zip(ckpt["loss_t"].tolist(), ckpt["loss"].tolist(), strict=True))
            elif ckpt is not None and ckpt.get("train_loss") is not None:  # from before losses were kept
                curve[t] = float(ckpt["train_loss"])
            return ckpt

        for t in run.store.checkpoints(key):  # each checkpoint read once: its losses, and its accuracy if missing
            if not (0 < t <= max(wanted) or (t in wanted and t not in self.acc)):
                continue
            ckpt = read(t)
            if ckpt is not None and t in wanted and t not in self.acc:
                model = run.unpack(ckpt).model
                model.eval()
                self.acc[t] = evaluate(model, self.x, self.y)[1]
        base = run.base()
        for t in sorted(wanted - set(self.acc)):  # unreadable above: retrained from the nearest good one
            self.acc[t] = evaluate(base.model(t), self.x, self.y)[1]
            read(t)  # and the retrained segment's losses
        self.acc = {t: self.acc[t] for t in sorted(wanted)}
        self.curve = curve

    def arrays(self) -> dict[str, np.ndarray]:
        log = self.curve if self.curve is not None else dict(self.run.losses.get(self.run.key, []))
        ts, acc_t = sorted(log), sorted(self.acc)
        return {"train_t": np.array(ts, dtype=np.int64), "train_loss": np.array([log[t] for t in ts], dtype=float),
                "acc_t": np.array(acc_t, dtype=np.int64), "acc": np.array([self.acc[t] for t in acc_t])}


def _waiting(prog: _Progress) -> Callable[[], None]:
    """Say so while another job trains the same base run (the store's per-trajectory lock)."""
    return lambda: prog.set_stage("base run: waiting for another job that trains it")


def _meta(cfg: Any, started: float, run: Training, **extra: Any) -> dict[str, Any]:
    return {"version": __version__, "seconds": round(time.time() - started, 3), "device": str(run.device),
            "sgd_steps": run.steps_done, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}


def _eval_set(run: Training, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = run.ds.x_test, run.ds.y_test
    return (x[:n], y[:n]) if n else (x, y)


# ---------------------------------------------------------------------------------------------
# Chaos


@_served_from_store
def run_chaos(cfg: conf.ChaosConfig, store: Store, progress: ProgressCallback | None = None,
              cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None,
              executor: str = "local", plan: dict[str, Any] | None = None,
              units: dict[int, dict[str, np.ndarray]] | None = None) -> Result:
    """C, B, D over (t0, t1), one branch per (t0, seed), the base run as the control.

    The base run trains first; then each t0 is one unit of work (`chaos_row`), run here one after
    another, or as Ray tasks with executor="ray" (twophase_core.ray_exec), with the same result bit
    for bit: a row is a pure function of the config, t0 and the stored checkpoints. `plan` and
    `units` (the rows by t0, computed elsewhere with that plan: a Ray sweep) only assemble them.
    """

    h = conf.config_hash(cfg)
    started = time.time()
    run = Training(cfg.train, store)
    t0s, t1s, seeds = sorted(cfg.t0), sorted(cfg.t1), list(cfg.perturb_seeds)
    base = run.base()
    later = {t0: [t1 for t1 in t1s if t1 > t0] for t0 in t0s}
    how = (plan or chaos_plan(run, cfg, executor))["how"]
    total = base.steps_needed(t0s + t1s) + sum(_row_units(run, cfg, t0, later[t0], how) for t0 in t0s)
    prog = _Progress(progress, total)
    prog.set_stage("base run")
    x, y = _eval_set(run, cfg.eval_size)
    shape = (len(seeds), len(t0s), len(t1s))
    live = _Live(run, x, y, lambda: send(0))

    def send(rows: int) -> None:  # a partial result: the cells so far and the base run's curve
        meta = _meta(cfg, started, run, partial=True, rows_done=rows, lockstep=how)
        r = _chaos_result(cfg, h, t0s, t1s, seeds, out, path, alphas, realized, acc_base, meta)
        r.arrays = {**{k: np.array(v, copy=True) for k, v in r.arrays.items()}, **live.arrays()}  # a snapshot
        if partial is not None:
            partial(r)

    out = {k: np.full(shape, np.nan) for k in ("C", "B", "D", "acc_branch")}
    path = np.full(shape + (cfg.n_alpha,), np.nan)
    alphas = np.linspace(0.0, 1.0, cfg.n_alpha)
    realized = np.zeros(shape[:2])
    acc_base = np.full(len(t1s), np.nan)
    base.ensure(t0s + t1s, live.step(prog.add), cancel, on_wait=_waiting(prog))
    live.finish(t0s + t1s)
    acc_base = np.array([live.acc[t1] for t1 in t1s])  # the base checkpoints' accuracy, measured once
    rows_done: set[int] = set()
    last_partial = 0.0

    def place(i: int, row: dict[str, np.ndarray], final: bool) -> None:
        nonlocal last_partial
        for k in out:
            out[k][:, i, :] = row[k]
        path[:, i, :] = row["path"]
        realized[:, i] = row["realized"]
        if final:
            rows_done.add(i)
        if partial is not None and (final or time.time() - last_partial > 1.0):
            last_partial = time.time()  # cells appear as they finish
            send(len(rows_done))

    task_steps = 0  # SGD steps the rows took in other processes
    if units is not None:
        for t0 in t0s:
            place(t0s.index(t0), units[t0], True)
            task_steps += int(units[t0].get("sgd_steps", 0))
    elif executor == "ray":
        from twophase_core.execution.on_ray import unit_results

        prog.set_stage(f"{len(t0s)} rows as Ray tasks")
        for n, (t0, row) in enumerate(unit_results(cfg, {"how": how}, store.files, cancel, prog.add), 1):
            place(t0s.index(t0), row, True)
            task_steps += int(row.get("sgd_steps", 0))
            prog.set_stage(f"{len(t0s)} rows as Ray tasks: {n} done")
    elif executor == "local":
        for i, t0 in enumerate(t0s):
            row = chaos_row(run, cfg, t0, how, x, y, prog, cancel, on_cell=lambda r, i=i: place(i, r, False))
            place(i, row, True)
    else:
        raise conf.ConfigError("executor", executor, "choose local or ray")
    meta = _meta(cfg, started, run, lockstep=how, executor=executor)
    meta["sgd_steps"] += task_steps
    result = _chaos_result(cfg, h, t0s, t1s, seeds, out, path, alphas, realized, acc_base, meta)
    result.arrays.update(live.arrays())
    return result


def chaos_plan(run: Training, cfg: conf.ChaosConfig, executor: str = "local") -> dict[str, Any]:
    """What every row of one chaos run must share: the lockstep path (loop or stack)."""
    how = cfg.lockstep if cfg.lockstep != "auto" else lockstep.choose_path(run, len(cfg.perturb_seeds),
                                                                           with_control=True)
    if executor == "ray" and cfg.lockstep == "auto" and run.device.type != "cpu":
        how = "stack"  # rows may land on other GPUs than the base run's: the control trains beside its copies
    return {"how": how}


def _row_units(run: Training, cfg: conf.ChaosConfig, t0: int, later: list[int], how: str) -> float:
    """Work of one row in progress units: its branches' SGD steps (and the stacked control's) plus the
    evaluations of its cells."""
    steps = sum(run.branch(t0, cfg.eps, cfg.eps_mode, s).steps_needed(later) for s in cfg.perturb_seeds)
    if how == "stack":  # the stack trains its own control: the base run went through the plain path
        steps += lockstep.control_branch(run, t0).steps_needed(later)
    return steps + len(later) * len(cfg.perturb_seeds) * (2.0 + cfg.n_alpha / 10)


def chaos_row(run: Training, cfg: conf.ChaosConfig, t0: int, how: str, x: torch.Tensor, y: torch.Tensor,
              prog: Any = None, cancel: CancelToken | None = None,
              on_cell: Callable[[dict[str, np.ndarray]], None] | None = None) -> dict[str, np.ndarray]:
    """One t0 of the chaos grid, every perturbation seed and every t1 > t0: the unit of work.

    Trains the branches from the base checkpoint at t0 (stacked with their own control, or one by
    one against the base run as control, as `how` says) and measures each cell. Returns arrays over
    (seed, t1) on the config's whole t1 grid, NaN where t1 <= t0: C, B, D, acc_branch; path (seed,
    t1, alpha); realized (seed,). Needs the base run's checkpoints at t0 and at every t1.
    """
    from twophase_core.science import metrics

    prog = prog or Units(None)
    t1s, seeds = sorted(cfg.t1), list(cfg.perturb_seeds)
    later = [t1 for t1 in t1s if t1 > t0]
    train_x = run.ds.x_train if cfg.bn == "reset" else None
    row = {k: np.full((len(seeds), len(t1s)), np.nan) for k in ("C", "B", "D", "acc_branch")}
    row["path"] = np.full((len(seeds), len(t1s), cfg.n_alpha), np.nan)
    row["realized"] = np.zeros(len(seeds))
    branches = [run.branch(t0, cfg.eps, cfg.eps_mode, s) for s in seeds]
    if how == "stack":
        prog.set_stage(f"branches t0={t0} ({len(seeds) + 1} copies stacked)")
        branches = lockstep.ensure_branches_stacked(run, branches, later, True, prog.add, cancel)
        control = lockstep.control_branch(run, t0)
    else:
        control = run.base()
    for si, (seed, br) in enumerate(zip(seeds, branches, strict=True)):
        if how != "stack":
            prog.set_stage(f"branch t0={t0} seed={seed}")
            br.ensure(later, prog.add, cancel)
        row["realized"][si] = run.perturbation_norms(t0, cfg.eps, cfg.eps_mode, seed)["realized"]
        prog.set_stage(f"metrics t0={t0}")
        for t1 in later:
            if cancel is not None:
                cancel.check()
            j = t1s.index(t1)
            pm = metrics.pair_metrics(control.model(t1), br.model(t1), x, y, cfg.n_alpha, cfg.bn, train_x)
            for k in ("C", "B", "D"):
                row[k][si, j] = pm[k]
            row["acc_branch"][si, j] = pm["acc_b"]
            row["path"][si, j] = pm["losses"]
            prog.add(2.0 + cfg.n_alpha / 10)
            if on_cell is not None:
                on_cell(row)
    return row


class Units:
    """A task's progress: units done so far, told to `report(units)` at most once a second and at the end."""

    def __init__(self, report: Callable[[float], None] | None):
        self.report, self.done, self._last = report, 0.0, 0.0

    def add(self, units: float) -> None:
        self.done += units
        if self.report is not None and time.time() - self._last > 1.0:
            self._last = time.time()
            self.report(self.done)

    def set_stage(self, stage: str) -> None: ...


def chaos_row_from_store(cfg_dict: dict[str, Any], t0: int, how: str, files: Any,
                         report: Callable[[float], None] | None = None) -> dict[str, np.ndarray]:
    """`chaos_row` from plain arguments, for a task in another process (Ray), with the SGD steps it
    took (`sgd_steps`)."""

    def row(run: Training, cfg: conf.ChaosConfig, units: Units) -> dict[str, np.ndarray]:
        out = chaos_row(run, cfg, t0, how, *_eval_set(run, cfg.eval_size), prog=units)
        out["sgd_steps"] = np.array(run.steps_done)
        return out

    return _unit_in_task(conf.ChaosConfig, cfg_dict, files, report, row)


def _unit_in_task(cls: type, cfg_dict: dict[str, Any], files: Any, report: Callable[[float], None] | None,
                  work: Callable[[Training, Any, Units], Out]) -> Out:
    """A unit of work in a task's process (Ray): one torch thread, the config rebuilt from plain data,
    the run on the driver's storage root `files`; `report(units)` hears its progress, last at the end."""
    from twophase_core.science.train import configure_threads

    configure_threads()
    cfg = conf.from_dict(cls, cfg_dict)
    units = Units(report)
    with task_store(files) as store:
        out = work(Training(cfg.train, store), cfg, units)
    if report is not None:
        report(units.done)
    return out


def _chaos_result(cfg, h, t0s, t1s, seeds, out, path, alphas, realized, acc_base, meta) -> Result:
    arrays = {"t0": np.array(t0s), "t1": np.array(t1s), "seeds": np.array(seeds), "alphas": alphas,
              "path": path, "realized_eps_norm": realized, "acc_base": acc_base, **out}
    return Result("chaos", conf.to_dict(cfg), h, arrays, meta)


# ---------------------------------------------------------------------------------------------
# Cone


@_served_from_store
def run_cone(cfg: conf.ConeConfig, store: Store, progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None,
             executor: str = "local", plan: dict[str, Any] | None = None,
             units: dict[int, str] | None = None) -> Result:
    """Kernels at every checkpoint, their Gram matrix once, and every view derived from it. With
    executor="ray" each checkpoint's kernel is a task (the path the automatic choice takes on the first
    checkpoint, here, is used by every task). `plan` and `units` (kernel files by checkpoint, written
    elsewhere with that plan: a Ray sweep) only assemble them."""
    from twophase_core.science import ntk

    h = conf.config_hash(cfg)
    started = time.time()
    run = Training(cfg.train, store)
    its = sorted(cfg.checkpoints)
    base = run.base()
    prog = _Progress(progress, base.steps_needed(its) + KERNEL_UNITS * len(its))
    prog.set_stage("base run")
    xt, yt = run.ds.x_test, run.ds.y_test

    def send() -> None:  # a partial result: only the base run's curve until the kernels are done
        if partial is not None:
            partial(Result("cone", conf.to_dict(cfg), h, live.arrays(), _meta(cfg, started, run, partial=True)))

    live = _Live(run, xt, yt, send)
    base.ensure(its, live.step(prog.add), cancel, on_wait=_waiting(prog))
    live.finish(its)
    plan = plan or cone_plan(run, cfg)
    subset, entk_method = plan["subset"], plan["method"]  # one path for every checkpoint
    idx = torch.as_tensor(subset, device=run.device)
    x = run.ds.x_train[idx]

    acc = [live.acc[t] for t in its]
    prog.set_stage("kernels")
    t_kernel, reused = time.time(), 0
    if units is not None or executor == "ray":
        from twophase_core.execution.on_ray import unit_results

        names = units if units is not None else dict(unit_results(cfg, plan, store.files, cancel, prog.add))
        kernels = []
        for t in its:  # written by the tasks beside the checkpoints; recomputed here if it did not read back
            k = store.load_kernel(run.key, names[t])
            kernels.append(torch.as_tensor(k) if k is not None else
                           torch.as_tensor(cone_kernel(run, cfg, t, x, subset, entk_method)[0]))
    else:
        kernels = []
        for t in its:
            if cancel is not None:
                cancel.check()
            k, was_stored = cone_kernel(run, cfg, t, x, subset, entk_method)
            kernels.append(torch.as_tensor(k))
            reused += was_stored
            prog.add(KERNEL_UNITS)
    t_kernel = time.time() - t_kernel
    R = ntk.gram(kernels)
    del kernels
    G = ntk.normalized_gram(R)
    S = ntk.distance_matrix(G)
    arrays: dict[str, np.ndarray] = {
        **live.arrays(), "iters": np.array(its), "R": R, "G": G, "S": S, "test_acc": np.array(acc),
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
    meta = _meta(cfg, started, run, kernel_seconds=round(t_kernel, 3), entk_method=entk_method, kernels_reused=reused,
                 cone_angle_deg=ntk.cone_angle(G, win_idx, 0),
                 early_angle_deg=ntk.cone_angle(G, early_idx, 0) if len(early_idx) >= 2 else None,
                 subset=idx.cpu().tolist(), n_outputs=run.ds.num_classes)
    return Result("cone", conf.to_dict(cfg), h, arrays, meta)


# ---------------------------------------------------------------------------------------------
# Linearised training


LIN_UNITS = 3.0  # a linearised step costs about three plain ones
KERNEL_UNITS = 10.0  # one checkpoint's eNTK, in SGD steps of progress (small nets: about that)


@_served_from_store
def run_linear(cfg: conf.LinearConfig, store: Store, progress: ProgressCallback | None = None,
               cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None,
               executor: str = "local", plan: dict[str, Any] | None = None,
               units: dict[int, float] | None = None) -> Result:
    """Test accuracy at T of the model linearised at each switch time t, beside full training.

    The base run trains first; then each switch time is one unit of work (`linear_switch`), run here
    one after another or as Ray tasks with executor="ray", with the same result. `units` (accuracies
    by switch time, computed elsewhere: a Ray sweep) only assemble them."""
    h = conf.config_hash(cfg)
    started = time.time()
    run = Training(cfg.train, store)
    T = cfg.train.iterations
    ts = sorted(cfg.switch)
    base = run.base()
    prog = _Progress(progress, base.steps_needed(ts + [T]) + LIN_UNITS * sum(T - t for t in ts))
    prog.set_stage("base run")
    x, y = _eval_set(run, cfg.eval_size)
    acc_lin = np.full(len(ts), np.nan)
    acc_full, acc_switch = np.nan, np.full(len(ts), np.nan)

    def result(**meta: Any) -> Result:
        arrays = {**live.arrays(), "switch": np.array(ts), "acc_linear": acc_lin.copy(), "acc_at_switch": acc_switch,
                  "acc_full": np.array(acc_full)}
        return Result("linear", conf.to_dict(cfg), h, arrays, _meta(cfg, started, run, **meta))

    live = _Live(run, x, y, lambda: partial(result(partial=True)) if partial is not None else None)
    base.ensure(ts + [T], live.step(prog.add), cancel, on_wait=_waiting(prog))
    live.finish(ts + [T])
    acc_full = live.acc[T]
    acc_switch = np.array([live.acc[t] for t in ts])

    if units is not None:
        got = ((t, units[t]) for t in ts)
    elif executor == "ray":
        from twophase_core.execution.on_ray import unit_results

        prog.set_stage(f"{len(ts)} switch times as Ray tasks")
        got = unit_results(cfg, {}, store.files, cancel, prog.add)
    elif executor == "local":
        got = ((t, linear_switch(run, cfg, t, x, y, prog, cancel)) for t in ts)
    else:
        raise conf.ConfigError("executor", executor, "choose local or ray")
    for n, (t, acc) in enumerate(got, 1):
        acc_lin[ts.index(t)] = acc
        if executor == "ray":
            prog.set_stage(f"{len(ts)} switch times as Ray tasks: {n} done")
        if partial is not None:
            partial(result(partial=True))
    return result(executor=executor)


def linear_switch(run: Training, cfg: conf.LinearConfig, t: int, x: torch.Tensor, y: torch.Tensor, prog: Any = None,
                  cancel: CancelToken | None = None) -> float:
    """One switch time: the model linearised at theta_t, trained to T; its test accuracy. The unit of
    work of a linear run (needs the base checkpoint at t)."""
    from twophase_core.science.linearised import linear_accuracy, train_linearised

    prog = prog or Units(None)
    prog.set_stage(f"linearised from t={t}")
    lin, params = train_linearised(run, run.base().state(t), cfg.train.iterations, cfg.bn_stats,
                                   lambda n: prog.add(LIN_UNITS * n), cancel)
    return linear_accuracy(lin, params, x, y)


def linear_switch_from_store(cfg_dict: dict[str, Any], t: int, files: Any,
                             report: Callable[[float], None] | None = None) -> float:
    """`linear_switch` from plain arguments, for a task in another process (Ray)."""
    return _unit_in_task(conf.LinearConfig, cfg_dict, files, report,
                         lambda run, cfg, units: linear_switch(run, cfg, t, *_eval_set(run, cfg.eval_size), units))


RUNNERS = {"chaos": run_chaos, "cone": run_cone, "linear": run_linear}


def cone_plan(run: Training, cfg: conf.ConeConfig) -> dict[str, Any]:
    """What every kernel of one cone run must share: the samples and the eNTK path (the automatic
    choice, made on the first checkpoint, which must be stored)."""
    from twophase_core.science import ntk

    idx = stratified_subset(run.ds.y_train, cfg.n_samples, cfg.subset_seed).to(run.device)
    model = run.base().model(min(cfg.checkpoints))
    return {"subset": idx.cpu().tolist(), "method": ntk.choose_method(model, run.ds.x_train[idx], cfg.kernel)}


def kernel_name(cfg: conf.ConeConfig, run: Training, t: int, subset: list[int], method: str) -> str:
    """The file of one checkpoint's eNTK: everything its values depend on besides the checkpoint (the
    samples, the kernel, the path, the device, the code's schema)."""
    samples = conf.digest(subset)
    return f"t{t:09d}-{cfg.kernel}-{method}-{run.device.type}-n{len(subset)}-{samples}-s{conf.SCHEMA}.npy"


def cone_kernel(run: Training, cfg: conf.ConeConfig, t: int, x: torch.Tensor, subset: list[int],
                method: str) -> tuple[np.ndarray, bool]:
    """The eNTK at checkpoint t on the samples `subset` (= x): read from the storage root if a run
    before computed it, else computed and written there. (kernel, whether it was read)."""
    from twophase_core.science import ntk

    name = kernel_name(cfg, run, t, subset, method)
    stored = run.store.load_kernel(run.key, name)
    if stored is not None:
        return stored, True
    k = ntk.empirical_ntk(run.base().model(t), x, cfg.kernel, method=method).cpu().numpy()
    run.store.save_kernel(run.key, name, k)
    return k, False


def cone_kernel_from_store(cfg_dict: dict[str, Any], t: int, subset: list[int], method: str, files: Any,
                           report: Callable[[float], None] | None = None) -> str:
    """One checkpoint's eNTK from plain arguments, for a task in another process (Ray): written to the
    storage root beside the checkpoints; the name of its file goes back to the driver."""

    def kernel(run: Training, cfg: conf.ConeConfig, units: Units) -> str:
        cone_kernel(run, cfg, t, run.ds.x_train[torch.as_tensor(subset, device=run.device)], subset, method)
        units.add(KERNEL_UNITS)
        return kernel_name(cfg, run, t, subset, method)

    return _unit_in_task(conf.ConeConfig, cfg_dict, files, report, kernel)


def units_of(run: Training, cfg: Any) -> float:
    """Progress units (SGD steps and their equivalents) the units of one experiment will take, its base
    run aside: for a sweep's bar and ETA. Chaos rows are counted on the loop path (the plan is not
    made yet); the stacked path adds one control per row."""
    kind = conf.kind_of(cfg)
    if kind == "chaos":
        return sum(_row_units(run, cfg, t0, [t1 for t1 in cfg.t1 if t1 > t0], "loop") for t0 in cfg.t0)
    if kind == "cone":
        return KERNEL_UNITS * len(cfg.checkpoints)
    return LIN_UNITS * sum(cfg.train.iterations - t for t in cfg.switch)


def sweep_units(configs: list[Any], store: Store) -> float:
    """Progress units of running these experiments from what the store holds: each base run once (the
    checkpoints all its points read) plus every point's units."""
    total = 0.0
    for members in conf.by_base_run(configs).values():
        run = Training(members[0].train, store)
        total += run.base().steps_needed(set().union(*(conf.base_checkpoints(c) for c in members)))
        total += sum(units_of(run, c) for c in members)
    return total


# What the units of one experiment share, made once where its base run is (a Ray sweep's prepare task).
PLANS = {"chaos": lambda run, cfg: chaos_plan(run, cfg, "ray"), "cone": cone_plan, "linear": lambda run, cfg: {}}


def compute_experiment(cfg: Any, store: Store, **given: Any) -> Result:
    """The experiment computed, not looked up nor stored: what a remote task runs (reading and writing
    checkpoints under the store's storage root) before it hands the result back to the driver.
    `given`: plan= and units= when its units were computed by other tasks."""
    conf.validate(cfg)
    return RUNNERS[conf.kind_of(cfg)].compute(cfg, store, None, None, None, **given)


def run_experiment(cfg: Any, store: Store | None = None, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None, partial: Callable[[Result], None] | None = None,
                   executor: str = "local") -> Result:
    return RUNNERS[conf.kind_of(cfg)](cfg, store, progress, cancel, partial, executor)
