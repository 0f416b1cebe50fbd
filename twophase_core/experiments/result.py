"""Results: arrays plus metadata, stored and read back without torch.

A `Result` is what an experiment returns and what a page draws. Axes are fixed per kind (below);
`to_dataframe()` gives the long, labelled form for notebooks and `to_json()` the CLI's JSON.
This module imports neither torch nor Streamlit, so the app's process can read every result.

Axes of `arrays`:
- chaos: `C`, `B`, `D`, `acc_branch`: (perturbation seed, t0, t1), NaN where t1 <= t0;
  `path`: (seed, t0, t1, alpha); `realized_eps_norm`: (seed, t0); `acc_base`: (t1,).
- cone: `S`, `G`, `R`: (checkpoint, checkpoint); `ref_curves`: (reference, checkpoint);
  `neigh_t_<dt>`, `neigh_s_<dt>`: the t and S(theta_t, theta_t+dt) of the pairs dt apart;
  `pca2`, `pca3`, `mds2`, `mds3`: (checkpoint, dim).
- linear: `switch`, `acc_linear`, `acc_at_switch`: (switch time,); `acc_full`: a scalar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from twophase_core.storage.store import Store

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Result:
    """Arrays plus metadata; `meta` holds config, hash, version, timings and realized norms."""

    kind: str
    config: dict[str, Any]
    hash: str
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return TO_JSON[self.kind](self)

    def to_dataframe(self) -> pd.DataFrame:
        """Long format, one row per measured value: chaos (seed, t0, t1, C, B, D, ...), cone (t_i, t_j, S),
        linear (switch, acc_linear, ...)."""
        return TO_FRAME[self.kind](self)


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
    return Result(kind, meta.pop("config"), meta.pop("hash"), arrays, meta)


def nested(a: Any) -> Any:
    """Nested lists of floats with None for NaN (JSON has no NaN)."""
    a = np.asarray(a, dtype=float)
    if a.ndim == 0:
        v = float(a)
        return None if math.isnan(v) else v
    return [nested(x) for x in a]


def _chaos_json(r: Result) -> dict[str, Any]:
    a = r.arrays
    mean = lambda k: np.nanmean(a[k], axis=0) if a[k].shape[0] > 1 else a[k][0]
    with np.errstate(all="ignore"):
        return {
            "t0": a["t0"].tolist(), "t1": a["t1"].tolist(),
            "C": nested(mean("C")), "B": nested(mean("B")), "D": nested(mean("D")),
            "config": r.config, "hash": r.hash,
            "realized_eps_norm": a["realized_eps_norm"].mean(axis=0).tolist(),
            "acc_base": a["acc_base"].tolist(),
            "per_seed": {"seeds": a["seeds"].tolist(), "C": nested(a["C"]), "B": nested(a["B"]),
                         "D": nested(a["D"]), "realized_eps_norm": a["realized_eps_norm"].tolist()},
            "meta": r.meta,
        }


def _cone_json(r: Result) -> dict[str, Any]:
    a = r.arrays
    dts = a["dts"].tolist()
    return {
        "iters": a["iters"].tolist(), "S": a["S"].tolist(), "test_acc": a["test_acc"].tolist(),
        "references": a["references"].tolist(), "ref_curves": a["ref_curves"].tolist(),
        "neighbours": {str(dt): {"t": a[f"neigh_t_{dt}"].tolist(), "S": a[f"neigh_s_{dt}"].tolist()} for dt in dts},
        "projections": {k: a[k].tolist() for k in ("pca2", "pca3", "mds2", "mds3")},
        "cone_window": a["cone_window"].tolist(), "cone_angle_deg": r.meta.get("cone_angle_deg"),
        "early_window": a["early_window"].tolist(), "early_angle_deg": r.meta.get("early_angle_deg"),
        "config": r.config, "hash": r.hash, "meta": r.meta,
    }


def _linear_json(r: Result) -> dict[str, Any]:
    a = r.arrays
    return {"switch": a["switch"].tolist(), "acc_linear": nested(a["acc_linear"]),
            "acc_at_switch": a["acc_at_switch"].tolist(), "acc_full": float(a["acc_full"]),
            "config": r.config, "hash": r.hash, "meta": r.meta}


def _chaos_frame(r: Result) -> pd.DataFrame:
    import pandas as pd

    a = r.arrays
    seeds, t0s, t1s = a["seeds"], a["t0"], a["t1"]
    s, i, j = np.meshgrid(np.arange(len(seeds)), np.arange(len(t0s)), np.arange(len(t1s)), indexing="ij")
    keep = (t1s[j] > t0s[i]).ravel()  # cells with t1 <= t0 do not exist; NaN elsewhere: not computed yet
    s, i, j = s.ravel()[keep], i.ravel()[keep], j.ravel()[keep]
    return pd.DataFrame({"seed": seeds[s], "t0": t0s[i], "t1": t1s[j],
                         **{k: a[k][s, i, j] for k in ("C", "B", "D", "acc_branch")},
                         "acc_base": a["acc_base"][j], "realized_eps_norm": a["realized_eps_norm"][s, i]})


def _cone_frame(r: Result) -> pd.DataFrame:
    import pandas as pd

    its = r.arrays["iters"]
    i, j = np.meshgrid(np.arange(len(its)), np.arange(len(its)), indexing="ij")
    return pd.DataFrame({"t_i": its[i.ravel()], "t_j": its[j.ravel()], "S": r.arrays["S"].ravel(),
                         "G": r.arrays["G"].ravel()})


def _linear_frame(r: Result) -> pd.DataFrame:
    import pandas as pd

    a = r.arrays
    return pd.DataFrame({"switch": a["switch"], "acc_linear": a["acc_linear"], "acc_at_switch": a["acc_at_switch"],
                         "acc_full": float(a["acc_full"])})


TO_JSON = {"chaos": _chaos_json, "cone": _cone_json, "linear": _linear_json}
TO_FRAME = {"chaos": _chaos_frame, "cone": _cone_frame, "linear": _linear_frame}
