"""A model factory for twophase: called as factory(in_shape, classes, **options), returns a torch.nn.Module."""

from __future__ import annotations

import math

from torch import nn


def tanh_mlp(in_shape: tuple[int, ...], classes: int, width: float = 1.0) -> nn.Module:
    """Two tanh hidden layers of 64*width units with LayerNorm between them: smooth, small, any input shape."""
    d = math.prod(in_shape)
    h = max(1, round(64 * width))
    return nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.Tanh(), nn.LayerNorm(h), nn.Linear(h, h), nn.Tanh(),
                         nn.Linear(h, classes))
