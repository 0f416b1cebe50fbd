"""The Cone Effect (paper Fig. 4-5): the empirical NTK along training, and where its path goes.

The kernel at every chosen checkpoint on one fixed subset of training inputs, their Gram matrix once, and every
view derived from it: the kernel distance S between checkpoints, S against references and between neighbours,
PCA and MDS projections, and the cone angle over a window seen from H(theta_0). The unit of work is one
checkpoint's kernel, written beside the checkpoint (self-verifying; the next cone on the same checkpoints and
samples reads it). Definitions: docs/science.md.

Axes of the result's arrays: `S`, `G`, `R`: (checkpoint, checkpoint); `ref_curves`: (reference, checkpoint);
`neigh_t_<dt>`, `neigh_s_<dt>`: the t and S(theta_t, theta_t+dt) of the pairs dt apart; `pca2`, `pca3`,
`mds2`, `mds3`: (checkpoint, dim).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

import numpy as np

from twophase_core.experiments import registry
from twophase_core.experiments.kind import Kind, band
from twophase_core.experiments.registry import Plan
from twophase_core.experiments.result import Result, nested
from twophase_core.experiments.running import Live, Tracker
from twophase_core.science.cone import APEXES, ConeReport, cone_report
from twophase_core.settings import config as conf
from twophase_core.settings.spec import MAX_INT, MAX_SEED, ConfigError, setting

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from twophase_core.science.train import CancelToken, Training

KERNEL_UNITS = 10.0  # one checkpoint's eNTK, in SGD steps of progress (small nets: about that)


@dataclass(frozen=True)
class ConeConfig(conf.ExperimentConfig):
    """The empirical NTK along the base run at chosen checkpoints."""

    kind: ClassVar[str] = "cone"
    checkpoints: tuple[int, ...] = setting((0, 100, 200, 500, 1000), "iterations with a kernel (must include 0)",
                                           "steps", **conf.STEPS)
    n_samples: int = setting(50, "training inputs n of the kernel", "int", lo=2, hi=5000, label="inputs n")
    kernel: str = setting("full", "full: (n O x n O); trace: n x n, summed over logits", "choice", choices=conf.KERNELS)
    subset_seed: int = setting(0, "seed of the stratified input subset", "int", lo=0, hi=MAX_SEED, **conf.ADVANCED)
    references: tuple[int, ...] = setting((0,), "checkpoints tau for S(theta_t, theta_tau) versus t", "steps",
                                          label="references tau", **conf.STEPS)
    dts: tuple[int, ...] = setting((100,), "steps dt for the kernel velocity S(theta_t, theta_t+dt)", "steps", lo=1,
                                   hi=MAX_INT, label="neighbour steps dt")
    cone_window: tuple[int, int] = setting((0, 0), "start,end iterations of the cone-angle window; 0,0: the second "
                                           "half of the checkpoints", "window", label="cone window", **conf.STEPS)

    def check(self) -> None:
        T = self.train.iterations
        conf.check_in_run("checkpoints", self.checkpoints, 0, T, T)
        if len(self.checkpoints) < 3:
            raise ConfigError("checkpoints", self.checkpoints, "needs at least 3 checkpoints for a trajectory")
        if 0 not in self.checkpoints:
            raise ConfigError("checkpoints", self.checkpoints, "must include 0: H(theta_0) is the apex of the cone")
        for tau in self.references:
            if tau not in self.checkpoints:
                raise ConfigError("references", self.references, f"{tau} is not one of the checkpoints")
        ck = set(self.checkpoints)
        for dt in self.dts:
            if not any(t + dt in ck for t in ck):
                raise ConfigError("dts", self.dts, f"no pair of checkpoints is {dt} iterations apart")
        w = self.cone_window
        if w != (0, 0):
            inside = [t for t in self.checkpoints if w[0] <= t <= w[1]]
            if w[0] >= w[1] or len(inside) < 3:
                raise ConfigError("cone_window", w, "needs start < end with >= 3 checkpoints inside")

    def base_checkpoints(self) -> set[int]:
        return set(self.checkpoints)

    def unit_keys(self) -> list[int]:
        return sorted(self.checkpoints)


def kernel_name(cfg: ConeConfig, training: Training, t: int, subset: list[int], method: str) -> str:
    """The file of one checkpoint's eNTK: everything its values depend on besides the checkpoint (the samples,
    the kernel, the path, the device, the code's schema)."""
    samples = conf.digest(subset)
    return f"t{t:09d}-{cfg.kernel}-{method}-{training.device.type}-n{len(subset)}-{samples}-s{conf.SCHEMA}.npy"


def cone_kernel(training: Training, cfg: ConeConfig, t: int, subset: list[int], method: str) -> tuple[np.ndarray, bool]:
    """The eNTK at checkpoint t on the samples `subset`: read from the storage root if a run before computed it,
    else computed and written there. (kernel, whether it was read)."""
    import torch

    from twophase_core.science import ntk

    name = kernel_name(cfg, training, t, subset, method)
    stored = training.store.load_kernel(training.key, name)
    if stored is not None:
        return stored, True
    x = training.ds.x_train[torch.as_tensor(subset, device=training.device)]
    k = ntk.empirical_ntk(training.base().model(t), x, cfg.kernel, method=method).cpu().numpy()
    training.store.save_kernel(training.key, name, k)
    return k, False


class Kernel(TypedDict):
    """A unit: one checkpoint's kernel, written beside it."""

    name: str  # its file
    reused: bool  # it was there already
    seconds: float


class Cone(Kind[ConeConfig, Kernel]):
    name = "cone"
    title = "Cone Effect"
    help = "Cone Effect: the eNTK along training"
    config = ConeConfig
    metrics = ("S",)
    page = "pages/cone.py"
    icon = ":material/change_history:"
    settings_title = "Kernels"
    unit_word = "kernel"
    show_units = False  # the views need every kernel: partial results carry only the live curve

    def eval_data(self, training: Training, cfg: ConeConfig) -> tuple[torch.Tensor, torch.Tensor]:
        return training.ds.x_test, training.ds.y_test

    def plan(self, training: Training, cfg: ConeConfig, executor: str) -> Plan:
        """What every kernel of one cone run shares: the samples and the eNTK path (the automatic choice, made on
        the first checkpoint: theta_0, built here before any training and without the trajectory's lock, which
        another job may hold while it trains the base run)."""
        from twophase_core.science import ntk
        from twophase_core.science.data import stratified_subset

        idx = stratified_subset(training.ds.y_train, cfg.n_samples, cfg.subset_seed).to(training.device)
        model = training.initial().model  # theta_0: every cone's checkpoints include 0 (ConeConfig.check)
        model.eval()
        return {"subset": idx.cpu().tolist(), "method": ntk.choose_method(model, training.ds.x_train[idx], cfg.kernel)}

    def unit_cost(self, training: Training, cfg: ConeConfig, plan: Plan | None = None) -> float:
        return KERNEL_UNITS * len(cfg.checkpoints)

    def run_unit(self, training: Training, cfg: ConeConfig, key: int, plan: Plan, tracker: Tracker,
                 cancel: CancelToken | None = None, on_part: Callable[[Kernel], None] | None = None) -> Kernel:
        """The kernel at checkpoint `key`, written beside it: its file's name, whether it was there already, and
        how long it took."""
        started = time.time()
        _, reused = cone_kernel(training, cfg, key, plan["subset"], plan["method"])
        tracker.add(KERNEL_UNITS)
        return {"name": kernel_name(cfg, training, key, plan["subset"], plan["method"]), "reused": reused,
                "seconds": time.time() - started}

    def assemble(self, training: Training, cfg: ConeConfig, plan: Plan, done: Mapping[int, Kernel], live: Live,
                 final: bool) -> dict[str, np.ndarray]:
        """The Gram matrix of the kernels (read back from their files; one missing or damaged is recomputed
        here), every view derived from it, and the cone angles (`meta`)."""
        import torch

        from twophase_core.science import ntk

        if not final:
            return {}
        its = sorted(cfg.checkpoints)
        kernels = []
        for t in its:
            k = training.store.load_kernel(training.key, done[t]["name"])
            kernels.append(torch.as_tensor(k if k is not None else
                                           cone_kernel(training, cfg, t, plan["subset"], plan["method"])[0]))
        R = ntk.gram(kernels)
        del kernels
        G = ntk.normalized_gram(R)
        S = ntk.distance_matrix(G)
        arrays: dict[str, np.ndarray] = {
            "iters": np.array(its), "R": R, "G": G, "S": S, "test_acc": np.array([live.acc[t] for t in its]),
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
        arrays["cone_window"] = np.array(window)
        arrays["early_window"] = np.array(early)
        return arrays

    def final_meta(self, training: Training, cfg: ConeConfig, plan: Plan, done: Mapping[int, Kernel],
                   arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """What only the Gram matrix tells (the cone angle over the window and early, seen from H(theta_0)), and
        the kernels' path, samples, cost and reuse."""
        from twophase_core.science import ntk

        its, window, early = sorted(cfg.checkpoints), arrays["cone_window"], arrays["early_window"]
        win_idx = [i for i, t in enumerate(its) if window[0] <= t <= window[1] and t != 0]
        early_idx = [i for i, t in enumerate(its) if early[0] <= t <= early[1] and t != 0]
        return {"kernel_seconds": round(sum(u["seconds"] for u in done.values()), 3), "entk_method": plan["method"],
                "kernels_reused": sum(bool(u["reused"]) for u in done.values()),
                "cone_angle_deg": ntk.cone_angle(arrays["G"], win_idx, 0),
                "early_angle_deg": ntk.cone_angle(arrays["G"], early_idx, 0) if len(early_idx) >= 2 else None,
                "subset": plan["subset"], "n_outputs": training.ds.num_classes}

    # -- forms --------------------------------------------------------------------------------
    def to_json(self, r: Result) -> dict[str, Any]:
        a = r.arrays
        dts = a["dts"].tolist()
        return {
            "iters": a["iters"].tolist(), "S": a["S"].tolist(), "test_acc": a["test_acc"].tolist(),
            "references": a["references"].tolist(), "ref_curves": a["ref_curves"].tolist(),
            "neighbours": {str(dt): {"t": a[f"neigh_t_{dt}"].tolist(), "S": a[f"neigh_s_{dt}"].tolist()}
                           for dt in dts},
            "projections": {k: a[k].tolist() for k in ("pca2", "pca3", "mds2", "mds3")},
            "cone_window": a["cone_window"].tolist(), "cone_angle_deg": r.meta.get("cone_angle_deg"),
            "early_window": a["early_window"].tolist(), "early_angle_deg": r.meta.get("early_angle_deg"),
            "cone": {apex: rep.to_dict() for apex, rep in cone_reports(r).items()},
            "config": r.config, "hash": r.hash, "meta": r.meta,
        }

    def to_frame(self, r: Result) -> pd.DataFrame:
        """One row per pair of checkpoints: (t_i, t_j, S, G)."""
        import pandas as pd

        its = r.arrays["iters"]
        i, j = np.meshgrid(np.arange(len(its)), np.arange(len(its)), indexing="ij")
        return pd.DataFrame({"t_i": its[i.ravel()], "t_j": its[j.ravel()], "S": r.arrays["S"].ravel(),
                             "G": r.arrays["G"].ravel()})

    def summary(self, r: Result) -> str:
        S = r.arrays["S"]
        m = len(r.arrays["iters"])
        h = m // 2
        rep = cone_reports(r)
        seen = "; ".join(f"from t={x.apex_iteration} {x.angle_deg:.1f} deg against a random walk's "
                         f"{x.null_mean_deg:.1f} [{x.null_low_deg:.1f}, {x.null_high_deg:.1f}]" for x in rep.values())
        return (f"cone {r.hash} ({r.meta.get('seconds')}s): {m} kernels; mean S early block {S[:h, :h].mean():.4f}, "
                f"late block {S[h:, h:].mean():.4f}, early-late {S[:h, h:].mean():.4f}; cone angle over "
                f"t={rep['start'].window[0]}..{rep['start'].window[1]}: {seen} (early {r.meta.get('early_angle_deg')})")

    def summarize(self, done: list[Result], n_boot: int, seed: int) -> dict[str, Any]:
        """S's mean and band per pair of checkpoints, and the kernel velocity at the smallest dt by replicate,
        with the transition fitted to it."""
        from twophase_core.science.transition import estimate_kernel_transition, replicate_band, transition_json

        a0 = done[0].arrays
        entry: dict[str, Any] = {"iters": np.asarray(a0["iters"]).tolist(),
                                 "S": band(np.stack([np.asarray(r.arrays["S"], dtype=float) for r in done]),
                                           n_boot, seed)}
        dt = int(min(a0["dts"]))
        t = np.asarray(a0[f"neigh_t_{dt}"])
        s = np.stack([np.asarray(r.arrays[f"neigh_s_{dt}"], dtype=float) for r in done])
        entry["velocity"] = {"dt": dt, "t": t.tolist(), "replicates": nested(s), **band(s, n_boot, seed)}
        entry["cone_angle"] = {}
        every = [cone_reports(r) for r in done]
        for apex in APEXES:  # the angle over replicates with its interval, beside the null's
            reps = [x[apex] for x in every]
            angles = np.array([x.angle_deg for x in reps])
            mean, lo, hi = replicate_band(angles[:, None], n_boot=n_boot, seed=seed)
            entry["cone_angle"][apex] = {
                "window": list(reps[0].window), "apex_iteration": reps[0].apex_iteration,
                "replicates": angles.tolist(), "mean": float(mean[0]), "ci_low": float(lo[0]), "ci_high": float(hi[0]),
                "null_mean": float(np.mean([x.null_mean_deg for x in reps])),
                "null_low": float(min(x.null_low_deg for x in reps)),
                "null_high": float(max(x.null_high_deg for x in reps))}
        est = estimate_kernel_transition(t, s, n_boot=n_boot, seed=seed)
        entry["transition"] = transition_json({"S": est})
        entry["estimates"] = {"S": est.to_dict()}
        return entry


def kernel_entries(r: Result) -> int:
    """Entries of one kernel of the result: (n O)^2 for full kernels, n^2 for trace: the null walk's dimension."""
    n = int(r.config["n_samples"])
    o = int(r.meta.get("n_outputs") or 1)
    return (n * o) ** 2 if r.config.get("kernel") == "full" else n * n


def cone_report_of(r: Result, apex: str) -> ConeReport:
    """The cone angle over the result's window seen from `apex` (H(theta_0), the default; the window's first
    kernel), beside its random-walk null (`science.cone`). From G alone: stored results get it too."""
    its = [int(t) for t in r.arrays["iters"]]
    w = (int(r.arrays["cone_window"][0]), int(r.arrays["cone_window"][1]))
    return cone_report(r.arrays["G"], its, w, kernel_entries(r), apex)


def cone_reports(r: Result) -> dict[str, ConeReport]:
    """`cone_report_of` from every apex."""
    return {apex: cone_report_of(r, apex) for apex in APEXES}


CONE = registry.register(Cone())
