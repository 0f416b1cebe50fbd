"""Linearised training (paper Fig. 6): from theta_t on, train the first-order Taylor model.

f_lin(x; theta) = f(x; theta_t) + J(theta_t)(theta - theta_t), evaluated with one torch.func.jvp
per batch (cost about three forward passes), trained with the base run's optimiser state, lr
schedule and batches from t to T. The network is linearised in eval mode: BatchNorm uses fixed
statistics at theta_t (recomputed on training data by default, or the checkpoint's running
statistics) and dropout is off, since a Taylor model of a random function is not defined.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jvp

from twophase_core.science.metrics import recompute_bn_stats
from twophase_core.science.train import CancelToken, State, StepCallback, Training, TrainingDiverged, lr_at


class Linearised:
    """The Taylor model of `model` at its current parameters, as a function of a parameter dict."""

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        self.theta0 = {k: v.detach().clone() for k, v in model.named_parameters()}
        self.buffers = {k: v.detach() for k, v in model.named_buffers()}

    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        delta = {k: params[k] - self.theta0[k] for k in params}
        f = lambda p: functional_call(self.model, (p, self.buffers), (x,))
        out, tangent = jvp(f, (self.theta0,), (delta,))  # type: ignore[misc]  # torch types 3 items, even without has_aux
        return out + tangent


def train_linearised(training: Training, s: State, t_end: int, bn_stats: str = "recompute",
                     on_step: StepCallback | None = None, cancel: CancelToken | None = None) -> tuple[Linearised, dict]:
    """Train the linearisation at s.t until t_end; returns the Taylor model and its parameters."""
    if bn_stats == "recompute":
        recompute_bn_stats(s.model, training.ds.x_train, batch_size=training.cfg.batch_size)
    s.model.eval()
    lin = Linearised(s.model)
    params = {k: v.clone().requires_grad_(True) for k, v in lin.theta0.items()}
    opt = torch.optim.SGD(list(params.values()), lr=training.cfg.lr, momentum=training.cfg.momentum,
                          weight_decay=training.cfg.weight_decay)
    opt.load_state_dict(s.opt.state_dict())  # momentum buffers of theta_t, same parameter order
    for t in range(s.t, t_end):
        if cancel is not None:
            cancel.check()
        x, y, _ = training.schedule.batch(training.ds, t)
        for g in opt.param_groups:
            g["lr"] = lr_at(training.cfg, t)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(lin(params, x), y)
        loss.backward()
        opt.step()
        if not torch.isfinite(loss):
            raise TrainingDiverged(t, lr_at(training.cfg, t))
        if on_step is not None:
            on_step(1)
    return lin, params


@torch.no_grad()
def linear_accuracy(lin: Linearised, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                    batch_size: int = 1000) -> float:
    correct = 0
    detached = {k: v.detach() for k, v in params.items()}
    for i in range(0, len(x), batch_size):
        correct += int((lin(detached, x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(x)
