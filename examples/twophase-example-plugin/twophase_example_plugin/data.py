"""A dataset loader for twophase: called as loader(root), returns (x_train, y_train, x_test, y_test)."""

from __future__ import annotations

import numpy as np

ARMS = 3


def _draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % ARMS
    r = rng.uniform(0.1, 1.0, n)
    angle = 2 * np.pi * (y / ARMS + 0.75 * r) + rng.normal(0.0, 0.15, n)
    x = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1) * 2.0
    return x.astype(np.float32), y.astype(np.int64)


def spirals(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Three interleaved spiral arms in the plane, 3 classes (600 train / 300 test), generated from a fixed seed:
    nothing is read from root or downloaded."""
    rng = np.random.default_rng(20250519)
    x_train, y_train = _draw(rng, 600)
    x_test, y_test = _draw(rng, 300)
    return x_train, y_train, x_test, y_test
