"""Our eNTK against neural-tangents' best on the same weights, one thread, side by side.

    python -m twophase_core.bench.versus_nt [--models mlp,cnn,cnn2d,resnet20] [--kernels full,trace]

Needs jax and neural-tangents, which twophase does not depend on: run it from a throwaway
environment that also sees torch and this package (docs/benchmarks.md, "Against neural-tangents",
says how). Each torch model of `models()` is copied into a plain jax function with the same weights
(eval-mode BatchNorm as its per-channel affine map; dense weights (in, out) and channels-last
convolutions, as stax lays them out), and neural-tangents' three implementations (Jacobian
contraction, NTK-vector products, structured derivatives) are jitted with vmap over samples. Ours
is `empirical_ntk(..., "auto")` after its choice is made. Every variant runs once to warm up (jax
compiles, ours calibrates), then all run in interleaved rounds, the order rotating, until each has
run `--rounds` times and for `--min-seconds` in all; the minimum is kept. One thread on both sides:
torch.set_num_threads(1), and XLA_FLAGS with Eigen's thread pool off, set before jax is imported.
The kernels are checked against each other (relative Frobenius difference) so a faster wrong answer
cannot pass.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
NT_IMPLEMENTATIONS = {1: "jacobian", 2: "ntvp", 3: "structured"}
# An implementation whose first timed run is this many times the fastest one's is not timed further.
DROP_AFTER = 3.0


def models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """The bench's eNTK models (`entk_models`: MLP 20-64-64-10, demo CNN, ResNet-20 at n = 16) plus a
    small 2-D CNN (the registry's cnn at width 0.25 on 3x16x16 images), all at n = 32."""
    from twophase_core.bench.suite import entk_models
    from twophase_core.science.models import cnn

    out = {name: (model, x) for name, model, x in entk_models()}
    torch.manual_seed(0)
    out["cnn2d"] = (cnn((3, 16, 16), 10, 0.25, 0.0).eval(), torch.randn(32, 3, 16, 16))
    resnet, x = out["resnet20"]
    out["resnet20"] = (resnet, torch.randn(32, *x.shape[1:], generator=torch.Generator().manual_seed(0)))
    return out


def _import_jax() -> tuple[Any, Any, Any]:
    """(jax, jax.numpy, neural_tangents), or exit 2 saying how to get them."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + XLA_ONE_THREAD).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        jax = importlib.import_module("jax")
        nt = importlib.import_module("neural_tangents")
    except ImportError as e:
        sys.exit(f"versus_nt needs jax and neural-tangents ({e}); twophase does not depend on them. In a throwaway "
                 "environment: python3 -m venv /tmp/ntenv && /tmp/ntenv/bin/pip install neural-tangents==0.6.5 "
                 "'jax[cpu]==0.4.25' 'numpy<2' 'scipy<1.14', then make it see torch and twophase "
                 "(docs/benchmarks.md, 'Against neural-tangents').")
    return jax, importlib.import_module("jax.numpy"), nt


def jax_function(model: nn.Module, jax: Any, jnp: Any) -> tuple[Callable[[Any, Any], Any], dict[str, Any]]:
    """(f(params, x channels-last) -> logits, params): the torch model in jax with its weights.

    Covers the modules of `models()`: Sequential, Linear, Conv1d/2d (one group, numeric zero padding),
    eval-mode BatchNorm, ReLU, Tanh, Flatten, Dropout, Identity, the ResNet-20 and its blocks.
    """
    from twophase_core.science.models import BasicBlock, ResNet20

    lax = jax.lax
    params: dict[str, Any] = {}
    for k, p in model.named_parameters():
        a = p.detach().numpy()
        if a.ndim == 2:  # dense (out, in) -> (in, out), as stax lays it out: y = x @ W. With x @ W.T,
            # the transpose on the parameter kept neural-tangents' structured derivatives from their
            # dense rule (MLP: 25 ms against 1.4 ms, full kernel)
            a = a.T
        elif a.ndim == 3:  # conv1d (out, in, k) -> (k, in, out)
            a = a.transpose(2, 1, 0)
        elif a.ndim == 4:  # conv2d (out, in, kh, kw) -> (kh, kw, in, out)
            a = a.transpose(2, 3, 1, 0)
        params[k] = jnp.asarray(a)
    consts = {k: jnp.asarray(b.detach().numpy()) for k, b in model.named_buffers()}

    def conv(m: nn.Conv1d | nn.Conv2d, name: str, p: dict[str, Any], x: Any) -> Any:
        two = isinstance(m, nn.Conv2d)
        pad = m.padding
        assert not isinstance(pad, str) and m.groups == 1
        dims = ("NHWC", "HWIO", "NHWC") if two else ("NWC", "WIO", "NWC")
        y = lax.conv_general_dilated(x, p[name + "weight"], tuple(m.stride), [(q, q) for q in pad],
                                     rhs_dilation=tuple(m.dilation), dimension_numbers=dims)
        return y + p[name + "bias"] if m.bias is not None else y

    def run(m: nn.Module, name: str, p: dict[str, Any], x: Any) -> Any:
        if isinstance(m, nn.Sequential):
            for child_name, child in m.named_children():
                x = run(child, f"{name}{child_name}.", p, x)
            return x
        if isinstance(m, nn.Linear):
            y = x @ p[name + "weight"]
            return y + p[name + "bias"] if m.bias is not None else y
        if isinstance(m, nn.Conv1d | nn.Conv2d):
            return conv(m, name, p, x)
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            y = (x - consts[name + "running_mean"]) * jax.lax.rsqrt(consts[name + "running_var"] + m.eps)
            if m.weight is not None:
                y = y * p[name + "weight"]
            return y + p[name + "bias"] if m.bias is not None else y
        if isinstance(m, nn.ReLU):
            return jax.nn.relu(x)
        if isinstance(m, nn.Tanh):
            return jnp.tanh(x)
        if isinstance(m, nn.Flatten):  # torch flattens channel-major: back to channels-first first
            return jnp.moveaxis(x, -1, 1).reshape(x.shape[0], -1) if x.ndim > 2 else x
        if isinstance(m, nn.Dropout | nn.Identity):
            return x
        if isinstance(m, BasicBlock):
            out = jax.nn.relu(run(m.bn1, name + "bn1.", p, run(m.conv1, name + "conv1.", p, x)))
            out = run(m.bn2, name + "bn2.", p, run(m.conv2, name + "conv2.", p, out))
            return jax.nn.relu(out + run(m.shortcut, name + "shortcut.", p, x))
        if isinstance(m, ResNet20):
            x = jax.nn.relu(run(m.bn, "bn.", p, run(m.conv, "conv.", p, x)))
            x = run(m.blocks, "blocks.", p, x)
            return run(m.fc, "fc.", p, x.mean(axis=(1, 2)))
        raise NotImplementedError(f"versus_nt has no jax copy of {type(m).__name__}")

    return (lambda p, x: run(model, "", p, x)), params


def _channels_last(x: torch.Tensor) -> Any:
    a = x.detach().numpy()
    return a if a.ndim == 2 else a.transpose(0, *range(2, a.ndim), 1)


def _interleaved(variants: dict[str, Callable[[], object]], rounds: int, min_seconds: float) -> dict[str, float]:
    """Minimum seconds per variant over interleaved rounds (the order rotating)."""
    names = list(variants)
    best = dict.fromkeys(names, float("inf"))
    spent = dict.fromkeys(names, 0.0)
    r = 0
    while True:
        todo = [m for m in names if r < rounds or spent[m] < min_seconds]
        if not todo:
            return best
        for m in todo[r % len(todo):] + todo[:r % len(todo)]:
            t = time.perf_counter()
            variants[m]()
            dt = time.perf_counter() - t
            best[m], spent[m] = min(best[m], dt), spent[m] + dt
        r += 1


def compare(name: str, model: nn.Module, x: torch.Tensor, kernel: str, rounds: int, min_seconds: float,
            jax: Any, jnp: Any, nt: Any) -> dict[str, Any]:
    """Ours and neural-tangents' implementations on one model and kernel: milliseconds, the kernels' agreement."""
    from twophase_core.science import ntk

    f, params = jax_function(model, jax, jnp)
    xj = jnp.asarray(_channels_last(x))
    n = x.shape[0]
    chosen = ntk.choose_method(model, x, kernel)
    ours = ntk.empirical_ntk(model, x, kernel).double()
    with torch.no_grad():
        outputs = model(x[:1]).numel()
    variants: dict[str, Callable[[], object]] = {"ours": lambda: ntk.empirical_ntk(model, x, kernel)}
    first: dict[str, float] = {}
    worst_diff = 0.0
    for impl, label in NT_IMPLEMENTATIONS.items():
        fn = jax.jit(nt.empirical_ntk_fn(f, trace_axes=() if kernel == "full" else (-1,), vmap_axes=0,
                                         implementation=impl))

        def call(fn: Any = fn) -> Any:
            return fn(xj, None, params).block_until_ready()

        theirs = torch.from_numpy(jax.device_get(call()).copy()).double()
        if kernel == "full":  # (N, N, O, O) -> ours, sample-major (N O, N O)
            theirs = theirs.permute(0, 2, 1, 3).reshape(ours.shape)
        else:  # neural-tangents' trace is the mean over logits, ours the sum
            theirs = theirs * outputs
        worst_diff = max(worst_diff, float((theirs - ours).norm() / ours.norm()))
        t = time.perf_counter()
        call()
        first[label] = time.perf_counter() - t
        variants[f"nt_{label}"] = call
    fastest = min(first.values())
    for label, t in first.items():
        if t > DROP_AFTER * fastest:
            del variants[f"nt_{label}"]
    times = _interleaved(variants, rounds, min_seconds)
    nt_best = min((v, k) for k, v in times.items() if k != "ours")
    return {"model": name, "kernel": kernel, "n": n, "ours_method": chosen, "ours_ms": 1e3 * times["ours"],
            "nt_ms": 1e3 * nt_best[0], "nt_best": nt_best[1][3:], "ratio": times["ours"] / nt_best[0],
            "rel_diff": worst_diff, **{f"{k}_ms": 1e3 * v for k, v in times.items()}}


def _load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m twophase_core.bench.versus_nt", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,cnn,cnn2d,resnet20")
    ap.add_argument("--kernels", default="full,trace")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds at least (default 30)")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="seconds each variant runs at least (default 2)")
    args = ap.parse_args(argv)
    # torch.func imports torch._dynamo on first use; imported after jax and neural-tangents it crashed
    # the process (SIGSEGV, torch 2.14.1 with jax 0.4.25), so it comes first.
    importlib.import_module("torch._dynamo")
    jax, jnp, nt = _import_jax()
    torch.set_num_threads(1)
    zoo = models()
    print(f"torch {torch.__version__}, jax {jax.__version__}, neural-tangents "
          f"{importlib.metadata.version('neural-tangents')}, one thread; load average {_load()}", flush=True)
    print("| model | kernel | n | ours (path) | neural-tangents best | ours / theirs | kernels differ by | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        model, x = zoo[name]
        for kernel in args.kernels.split(","):
            r = compare(name, model, x, kernel, args.rounds, args.min_seconds, jax, jnp, nt)
            print(f"| {name} | {kernel} | {r['n']} | {r['ours_ms']:.3g} ms ({r['ours_method']}) | {r['nt_ms']:.3g} ms "
                  f"({r['nt_best']}) | {r['ratio']:.2f} | {r['rel_diff']:.1e} | {_load()} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
