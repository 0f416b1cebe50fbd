"""Results: arrays plus metadata, stored and read back without torch.

A `Result` is what an experiment returns and what a page draws; its kind's module documents the axes of its
arrays and gives its forms: `to_dataframe()` the long, labelled form for notebooks, `to_json()` the CLI's JSON.
This module imports neither torch nor Streamlit, so the app's process can read every result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from twophase_core.experiments import registry
from twophase_core.storage.store import Store

if TYPE_CHECKING:
    import pandas as pd


Nested = float | None | list["Nested"]  # an array as JSON: nested lists of floats, None for NaN


@dataclass
class Result:
    """Arrays plus metadata; `meta` holds config, hash, version, timings and realized norms."""

    kind: str
    config: dict[str, Any]
    hash: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return registry.get(self.kind).to_json(self)

    def to_dataframe(self) -> pd.DataFrame:
        """Long format, one row per measured value: chaos (seed, t0, t1, C, B, D, ...), cone (t_i, t_j, S),
        linear (switch, acc_linear, ...)."""
        return registry.get(self.kind).to_frame(self)


def result_key(kind: str, h: str, partial: bool = False) -> str:
    return f"{'partial' if partial else 'result'}/{kind}/{h}"


def save_result(store: Store, r: Result, partial: bool = False) -> None:
    meta = {**r.meta, "kind": r.kind, "config": r.config, "hash": r.hash}
    store.put_arrays(result_key(r.kind, r.hash, partial), r.arrays, meta)


def load_result(store: Store, kind: str, h: str, partial: bool = False) -> Result | None:
    """The stored result, or None (a corrupt entry has been removed and must be recomputed)."""
    got = store.get_arrays(result_key(kind, h, partial))
    if got is None:
        return None
    arrays, meta = got
    meta.pop("kind", None)  # stored beside config and hash (save_result): the Result holds it as its kind
    return Result(kind, meta.pop("config"), meta.pop("hash"), arrays, meta)


def nested(a: ArrayLike) -> Nested:
    """Nested lists of floats with None for NaN (JSON has no NaN)."""
    arr = np.asarray(a, dtype=float)
    if arr.ndim == 0:
        v = float(arr)
        return None if math.isnan(v) else v
    return [nested(x) for x in arr]
