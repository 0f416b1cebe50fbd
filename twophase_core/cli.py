"""`twophase chaos|cone|linear|presets|cache|bench`: the same configs as the app, from a terminal.

Bad input exits with status 2 and one line that says what to change.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from typing import Any

from . import config as C
from .presets import PRESETS, preset


def _ints(text: str) -> tuple[str, ...]:
    return tuple(s for s in text.replace(" ", "").split(",") if s)


TRAIN_FLAGS: dict[str, tuple[str, type]] = {
    "--model": ("model", str), "--dataset": ("dataset", str), "--width": ("width", float),
    "--lr": ("lr", float), "--momentum": ("momentum", float), "--weight-decay": ("weight_decay", float),
    "--batch-size": ("batch_size", int), "--iterations": ("iterations", str), "--seed": ("init_seed", int),
    "--data-seed": ("data_seed", int), "--device": ("device", str), "--data-root": ("data_root", str),
    "--train-size": ("train_size", int), "--checkpoint-every": ("checkpoint_every", str),
}
LIST_FLAGS = {"--t0": "t0", "--t1": "t1", "--checkpoints": "checkpoints", "--references": "references",
              "--dts": "dts", "--switch": "switch", "--lr-milestones": "lr_milestones"}
EXP_FLAGS: dict[str, tuple[str, type]] = {
    "--eps": ("eps", float), "--eps-mode": ("eps_mode", str), "--n-alpha": ("n_alpha", int), "--bn": ("bn", str),
    "--eval-size": ("eval_size", int), "--lockstep": ("lockstep", str), "--n-samples": ("n_samples", int),
    "--kernel": ("kernel", str), "--subset-seed": ("subset_seed", int), "--bn-stats": ("bn_stats", str),
}


def build_config(kind: str, args: argparse.Namespace) -> Any:
    """Preset, then overrides; step values accept '500', '500it', '2ep', '2ep50it'."""
    cfg = preset(args.preset, kind)
    changes: dict[str, Any] = {}
    for flag, (name, _) in TRAIN_FLAGS.items():
        v = getattr(args, flag[2:].replace("-", "_"))
        if v is not None:
            changes[name] = v
    if args.download:
        changes["download"] = True
    train = C.replace(cfg, **changes).train if changes else cfg.train
    if train.device == "auto":
        from .train import resolve_device

        train = C.replace(train, device=resolve_device("auto").type)
    ipe = C.iterations_per_epoch(train)
    for name in ("iterations", "checkpoint_every"):
        v = getattr(train, name)
        if isinstance(v, str):
            train = C.replace(train, **{name: C.parse_step(v, ipe)})
    ms = args.lr_milestones
    if ms:
        train = C.replace(train, lr_milestones=tuple(C.parse_step(s, ipe) for s in _ints(ms)))
    cfg = C.replace(cfg, train=train)
    exp: dict[str, Any] = {}
    for flag, name in LIST_FLAGS.items():
        v = getattr(args, flag[2:].replace("-", "_"))
        if v and name != "lr_milestones":
            exp[name] = tuple(C.parse_step(s, ipe) for s in _ints(v))
    for flag, (name, _) in EXP_FLAGS.items():
        v = getattr(args, flag[2:].replace("-", "_"))
        if v is not None:
            exp[name] = v
    if args.perturb_seeds:
        exp["perturb_seeds"] = tuple(int(s) for s in _ints(args.perturb_seeds))
    if args.cone_window:
        lo, hi = _ints(args.cone_window)
        exp["cone_window"] = (C.parse_step(lo, ipe), C.parse_step(hi, ipe))
    for k in exp:
        if k not in {f.name for f in C.fields(type(cfg))}:
            raise C.ConfigError(k, exp[k], f"is not a setting of the {kind} experiment")
    cfg = C.replace(cfg, **exp)
    C.validate(cfg)
    return cfg


def command_for(cfg: Any, preset_name: str = "demo", json_out: str = "out.json") -> str:
    """The CLI line that reproduces `cfg` (shown next to every figure in the app)."""
    kind = C.kind_of(cfg)
    ref = preset(preset_name, kind)
    parts = ["twophase", kind, "--preset", preset_name]
    inv_train = {name: flag for flag, (name, _) in TRAIN_FLAGS.items()}
    inv_exp = {name: flag for flag, (name, _) in EXP_FLAGS.items()}
    inv_list = {name: flag for flag, name in LIST_FLAGS.items()}
    for name, v in C.to_dict(cfg.train).items():
        if v != C.to_dict(ref.train)[name]:
            if name in inv_list:
                parts += [inv_list[name], ",".join(map(str, v))]
            elif name == "download" and v:
                parts.append("--download")
            elif name in inv_train:
                parts += [inv_train[name], str(v)]
    ref_d = C.to_dict(ref)
    for name, v in C.to_dict(cfg).items():
        if name == "train" or v == ref_d[name]:
            continue
        if name in inv_list:
            parts += [inv_list[name], ",".join(map(str, v))]
        elif name == "perturb_seeds":
            parts += ["--perturb-seeds", ",".join(map(str, v))]
        elif name == "cone_window":
            parts += ["--cone-window", ",".join(map(str, v))]
        elif name in inv_exp:
            parts += [inv_exp[name], str(v)]
    parts += ["--json", json_out]
    return " ".join(shlex.quote(p) for p in parts)


class _Bar:
    """A one-line progress bar on stderr."""

    def __init__(self, quiet: bool):
        self.quiet, self.t, self.tty, self.stage = quiet, time.time(), sys.stderr.isatty(), ""

    def __call__(self, frac: float, stage: str) -> None:
        if self.quiet:
            return
        if not self.tty:  # a log file gets one line per stage, not carriage returns
            if stage != self.stage:
                self.stage = stage
                sys.stderr.write(f"{time.time() - self.t:7.1f}s {frac * 100:5.1f}% {stage}\n")
            return
        n = int(frac * 30)
        el = time.time() - self.t
        eta = f" eta {el / frac - el:5.0f}s" if 0.02 < frac < 1 else ""
        sys.stderr.write(f"\r[{'#' * n}{'.' * (30 - n)}] {frac * 100:5.1f}% {el:6.1f}s{eta} {stage[:40]:<40}")
        sys.stderr.flush()
        if frac >= 1:
            sys.stderr.write("\n")


def _experiment_parser(sub: argparse._SubParsersAction, kind: str, help_: str) -> None:
    p = sub.add_parser(kind, help=help_)
    p.add_argument("--preset", default="demo", help=f"one of {', '.join(PRESETS)} (default demo)")
    p.add_argument("--json", metavar="OUT", help="write the result as JSON to OUT ('-' for stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--cache-dir", help="result store (default $TWOPHASE_CACHE_DIR or ./cache)")
    for flag in TRAIN_FLAGS:
        p.add_argument(flag, default=None, type=str if TRAIN_FLAGS[flag][1] is str else TRAIN_FLAGS[flag][1])
    p.add_argument("--download", action="store_true", help="cifar10: download if missing (needs internet)")
    for flag in LIST_FLAGS:
        p.add_argument(flag, default=None, help="comma-separated steps: 500, 500it, 2ep, 2ep50it")
    for flag, (_, typ) in EXP_FLAGS.items():
        p.add_argument(flag, default=None, type=typ)
    p.add_argument("--perturb-seeds", default=None, help="comma-separated perturbation seeds")
    p.add_argument("--cone-window", default=None, help="start,end iterations of the cone-angle window")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twophase", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    _experiment_parser(sub, "chaos", "Chaos Effect: C, B, D over (t0, t1)")
    _experiment_parser(sub, "cone", "Cone Effect: the eNTK along training")
    _experiment_parser(sub, "linear", "linearised training from theta_t")
    sub.add_parser("presets", help="list the presets")
    pc = sub.add_parser("cache", help="inspect or clear the result store")
    pc.add_argument("action", choices=["info", "clear"])
    pc.add_argument("--cache-dir")
    pb = sub.add_parser("bench", help="measure speed against baselines in the same run")
    pb.add_argument("--json", metavar="OUT")
    pb.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)

    from .store import Store
    from .train import configure_threads

    configure_threads()
    try:
        if args.cmd == "presets":
            for name, (desc, _) in PRESETS.items():
                print(f"{name:18s} {desc}")
            return 0
        if args.cmd == "cache":
            store = Store(args.cache_dir)
            if args.action == "clear":
                store.clear()
                print(f"cleared {store.root}")
            else:
                print(json.dumps(store.info(), indent=2))
            return 0
        if args.cmd == "bench":
            from .bench import main as bench_main

            return bench_main(args.json, quick=args.quick)
        cfg = build_config(args.cmd, args)
        from .experiments import run_experiment

        result = run_experiment(cfg, Store(args.cache_dir), progress=_Bar(args.quiet))
        payload = result.to_json()
        if args.json == "-":
            print(json.dumps(payload))
        elif args.json:
            with open(args.json, "w") as f:
                json.dump(payload, f)
            print(f"wrote {args.json}", file=sys.stderr)
        print(summary(result))
        return 0
    except C.ConfigError as e:
        print(f"twophase: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # TrainingDiverged, Cancelled, I/O: one line, not a traceback
        from .train import Cancelled, TrainingDiverged

        if isinstance(e, TrainingDiverged | Cancelled):
            print(f"twophase: error: {e}", file=sys.stderr)
            return 1
        raise


def summary(r: Any) -> str:
    """A few lines a person reads after a run."""

    a = r.arrays
    sec = r.meta.get("seconds")
    if r.kind == "chaos":
        last = {k: a[k].mean(axis=0)[:, -1] for k in ("C", "B", "D")}
        lines = [f"chaos {r.hash} ({sec}s): at t1={int(a['t1'][-1])}"]
        for i, t0 in enumerate(a["t0"]):
            lines.append(f"  t0={int(t0):6d}  C={last['C'][i]:.3e}  B={last['B'][i]:.4f}  D={last['D'][i]:.4f}"
                         f"  |eps|={a['realized_eps_norm'][:, i].mean():.2e}")
        return "\n".join(lines)
    if r.kind == "cone":
        S = a["S"]
        m = len(a["iters"])
        h = m // 2
        return (f"cone {r.hash} ({sec}s): {m} kernels; mean S early block {S[:h, :h].mean():.4f}, "
                f"late block {S[h:, h:].mean():.4f}, early-late {S[:h, h:].mean():.4f}; cone angle "
                f"{r.meta.get('cone_angle_deg'):.1f} deg (early {r.meta.get('early_angle_deg')})")
    return (f"linear {r.hash} ({sec}s): full training {float(a['acc_full']):.3f}; linearised from "
            + ", ".join(f"t={int(t)}: {v:.3f}" for t, v in zip(a["switch"], a["acc_linear"], strict=True)))


if __name__ == "__main__":
    sys.exit(main())
