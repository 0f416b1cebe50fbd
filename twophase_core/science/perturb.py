"""The perturbation eps of the Chaos Effect, in the three modes of docs/science.md.

The paper's "||eps||_0 = 1e-7" cannot be literal, so the mode is a visible option. The noise is
drawn in float64 on the CPU from its own generator (identical on every device), added in
float64 and cast back; the realized |theta' - theta|_2 is measured after that cast, because a
tiny total norm rounds to no change in most float32 weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from twophase_core.science.models import trainable
from twophase_core.settings.config import EPS_MODES, ConfigError


def perturbation_seed(seed: int, t0: int) -> int:
    """The noise of seed s at t0: its own stream, so grids over t0 do not share one direction."""
    return int(np.random.SeedSequence([seed, t0, 3]).generate_state(1, dtype=np.uint64)[0] >> 1)


@torch.no_grad()
def perturb_(model: nn.Module, eps: float, mode: str, seed: int) -> dict[str, float]:
    """Add eps to the trainable parameters in place; return realized and nominal norms.

    per-coordinate: eps ~ N(0, eps^2 I); total-l2: |eps|_2 = eps; relative: |eps|_2 = eps |theta|_2.
    eps = 0 leaves every bit unchanged.
    """
    if mode not in EPS_MODES:
        raise ConfigError("eps_mode", mode, f"choose one of {', '.join(EPS_MODES)}")
    params = trainable(model)
    g = torch.Generator().manual_seed(seed)
    noise = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    noise_norm = math.sqrt(sum(float((n * n).sum()) for n in noise))
    theta_norm = math.sqrt(sum(float((p.double() ** 2).sum()) for p in params))
    if mode == "per-coordinate":
        scale = eps
    elif mode == "total-l2":
        scale = eps / noise_norm
    else:
        scale = eps * theta_norm / noise_norm
    realized_sq = 0.0
    for p, n in zip(params, noise, strict=True):
        old = p.detach().to("cpu", torch.float64)
        new = (old + scale * n).to(p.dtype)
        realized_sq += float(((new.double() - old) ** 2).sum())
        p.copy_(new.to(p.device))
    return {"realized": math.sqrt(realized_sq), "nominal": scale * noise_norm, "theta_norm": theta_norm}
