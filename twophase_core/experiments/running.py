"""What every experiment's run shares: progress, the base run's live curve, the result's metadata, and a unit of
work rebuilt in another process (a Ray task).

Nothing here knows a kind; `kind.Kind` strings these together into an experiment's run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from twophase_core import __version__
from twophase_core.settings import config as conf
from twophase_core.storage.files import CheckpointFiles
from twophase_core.storage.store import task_store

if TYPE_CHECKING:
    import torch

    from twophase_core.science.train import Training

ProgressCallback = Callable[[float, str], None]
Out = TypeVar("Out")
Cfg = TypeVar("Cfg", bound=conf.ExperimentConfig)


class Tracker(Protocol):
    """Where a unit of work tells its progress (SGD steps and their equivalents) and what it is doing: the run's
    bar (`Progress`) in this process, a task's tally (`Units`) on Ray."""

    def add(self, units: float) -> None: ...

    def set_stage(self, stage: str) -> None: ...


class Progress:
    """Work units (SGD steps, evaluations) mapped to a fraction of `total` and a stage, told to `cb` at most
    ten times a second (and at once when the stage changes)."""

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


class Units:
    """A task's progress: units done so far, told to `report(units)` at most once a second and at the end."""

    def __init__(self, report: Callable[[float], None] | None):
        self.report, self.done, self._last = report, 0.0, 0.0

    def add(self, units: float) -> None:
        self.done += units
        if self.report is not None and time.time() - self._last > 1.0:
            self._last = time.time()
            self.report(self.done)

    def set_stage(self, stage: str) -> None:
        """A task's stage is not shown (the driver's bar says which tasks run)."""


class Live:
    """The base run as it trains: its training loss at every step and its test accuracy at every checkpoint it
    writes. Sent with partial results (the first at the second step, then about once a second), so a page shows a
    moving curve within seconds of Run. The final result keeps the curve as read back from the base run's
    checkpoints (each holds the losses of the steps that led to it), so it is the same whichever process trained
    which part: `train_t`, `train_loss` up to the last checkpoint the experiment needs, and `acc_t`, `acc` (test
    accuracy on the experiment's evaluation set at those checkpoints)."""

    def __init__(self, training: Training, x: torch.Tensor, y: torch.Tensor, send: Callable[[], None] | None):
        self.training, self.x, self.y, self.send = training, x, y, send
        self.acc: dict[int, float] = {}
        self.curve: dict[int, float] | None = None  # from the checkpoints, once the base run is complete
        self._last = 0.0  # the first two steps are sent at once: the curve appears as soon as training starts
        training.on_save = self._saved

    def _saved(self, key: str, t: int, model: torch.nn.Module) -> None:
        if key == self.training.key:
            from twophase_core.science.metrics import evaluate

            self.acc[t] = evaluate(model, self.x, self.y)[1]

    def step(self, add: Callable[[float], None]) -> Callable[[int], None]:
        """An on_step callback: progress, then (at most once a second) a partial result."""

        def on_step(n: int) -> None:
            add(n)
            if self.send is not None and time.time() - self._last > 1.0 and self._drawable():
                self._last = time.time()
                self.send()

        return on_step

    def _drawable(self) -> bool:
        """Two points at least: a curve of one point is drawn as nothing, and the first send is what a page waits
        on (it would then show an empty chart for the second it takes to send the next)."""
        return self._last > 0.0 or len(self.training.losses.get(self.training.key, ())) >= 2

    def finish(self, needed: list[int]) -> None:
        """Accuracy at every needed checkpoint not measured while training, and the curve read back."""
        from twophase_core.science.metrics import evaluate

        self.training.on_save = None
        training, key, wanted = self.training, self.training.key, set(needed)
        curve: dict[int, float] = {}

        def read(t: int) -> dict[str, Any] | None:
            ckpt = training.store.load_checkpoint(key, t, map_location=training.device)
            if ckpt is not None and "loss_t" in ckpt:
                curve.update(zip(ckpt["loss_t"].tolist(), ckpt["loss"].tolist(), strict=True))
            elif ckpt is not None and ckpt.get("train_loss") is not None:  # from before losses were kept
                curve[t] = float(ckpt["train_loss"])
            return ckpt

        for t in training.store.checkpoints(key):  # each checkpoint read once: its losses, and its accuracy if missing
            if not (0 < t <= max(wanted) or (t in wanted and t not in self.acc)):
                continue
            ckpt = read(t)
            if ckpt is not None and t in wanted and t not in self.acc:
                model = training.unpack(ckpt).model
                model.eval()
                self.acc[t] = evaluate(model, self.x, self.y)[1]
        base = training.base()
        for t in sorted(wanted - set(self.acc)):  # unreadable above: retrained from the nearest good one
            self.acc[t] = evaluate(base.model(t), self.x, self.y)[1]
            read(t)  # and the retrained segment's losses
        self.acc = {t: self.acc[t] for t in sorted(wanted)}
        self.curve = curve

    def arrays(self) -> dict[str, np.ndarray]:
        log = self.curve if self.curve is not None else dict(self.training.losses.get(self.training.key, []))
        ts, acc_t = sorted(log), sorted(self.acc)
        return {"train_t": np.array(ts, dtype=np.int64), "train_loss": np.array([log[t] for t in ts], dtype=float),
                "acc_t": np.array(acc_t, dtype=np.int64), "acc": np.array([self.acc[t] for t in acc_t])}


def waiting(prog: Progress) -> Callable[[], None]:
    """Say so while another job trains the same base run (the store's per-trajectory lock)."""
    return lambda: prog.set_stage("base run: waiting for another job that trains it")


def meta(started: float, training: Training, **extra: object) -> dict[str, Any]:
    """What every result's metadata holds: the engine's version, wall time, device, SGD steps taken, when."""
    return {"version": __version__, "seconds": round(time.time() - started, 3), "device": str(training.device),
            "sgd_steps": training.steps_done, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}


def eval_set(training: Training, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test points (all when n is 0): where B, D and accuracies are measured."""
    x, y = training.ds.x_test, training.ds.y_test
    return (x[:n], y[:n]) if n else (x, y)


def in_task(cls: type[Cfg], cfg_dict: dict[str, object], files: CheckpointFiles,
            report: Callable[[float], None] | None, work: Callable[[Training, Cfg, Units], Out]) -> Out:
    """A unit of work in a task's process (Ray): one torch thread, the config rebuilt from plain data, the base run
    on the driver's storage root `files`; `report(units)` hears its progress, last at the end."""
    from twophase_core.science.train import Training, configure_threads

    configure_threads()
    cfg = conf.from_dict(cls, cfg_dict)
    units = Units(report)
    with task_store(files) as store:
        out = work(Training(cfg.train, store), cfg, units)
    if report is not None:
        report(units.done)
    return out
