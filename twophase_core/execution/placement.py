"""Where work runs: the executor (this process, or tasks on Ray) and the device, checked before any
work or record is made.

The executor is the one given (a flag, the app's choice), else $TWOPHASE_EXECUTOR, else local; a bad
value names where it came from (`resolve_executor`). `check_placement` checks the devices and, on Ray,
that the cluster's address can be used at all (offline: `ray_exec.check_address`).

`config.validate` stays machine-independent (a config written on a laptop may be meant for a GPU
cluster), so the device is checked only where work is about to start here: the CLI before it runs,
queues or prints a config, and the job manager before it writes a job record. Without this check a
cuda config on a CPU machine was queued and failed later, in the worker, with exit 1.

Imports no torch at module level: the app's Streamlit process must stay torch-free. When torch is
already loaded it is asked; otherwise one child interpreter asks it, once per process.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterable

from twophase_core.settings.spec import ConfigError, from_env

EXECUTORS = ("local", "ray")
ENV_EXECUTOR = "TWOPHASE_EXECUTOR"

PROBE_TIMEOUT_S = 120.0  # importing torch on a busy machine takes seconds, rarely a minute
_PROBE = "import torch; print(torch.cuda.is_available())"


@functools.cache
def cuda_available() -> bool:
    """Whether torch sees a CUDA device here. A probe that cannot import torch answers False (nothing
    could train here anyway); one that times out answers True, so a slow machine never refuses a GPU it
    has: the engine's own check (`train.resolve_device`) still stops a run that finds none."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return True
    except OSError:
        return False
    lines = r.stdout.strip().splitlines()
    return r.returncode == 0 and bool(lines) and lines[-1] == "True"


def check_device(device: str, executor: str | None = None) -> None:
    """ConfigError unless `device` can be used where the work runs (`executor` None: in this process).

    cpu and auto always can (auto falls back to the CPU). On Ray the work runs on the cluster's
    nodes, not here, so whether this machine has CUDA says nothing: Ray's own checks apply there.
    """
    if device != "cuda" or executor == "ray":
        return
    if not cuda_available():
        raise ConfigError("device", device, "no CUDA device is visible on this machine: use device=cpu, or "
                          "device=auto (cuda where there is one), or run it on Ray (executor ray)")


def resolve_executor(executor: str | None = None) -> str:
    """`executor` if given, else $TWOPHASE_EXECUTOR, else local. A bad value is a ConfigError naming where it
    came from (argparse checks a flag's choices, never a default read from the environment)."""
    if executor is not None:
        if executor not in EXECUTORS:
            raise ConfigError("executor", executor, f"choose one of {', '.join(EXECUTORS)}")
        return executor
    value = os.environ.get(ENV_EXECUTOR, "").strip() or "local"
    if value not in EXECUTORS:
        raise ConfigError(ENV_EXECUTOR, value, f"choose one of {', '.join(EXECUTORS)}, or unset it (local)")
    return value


def check_placement(devices: Iterable[str], executor: str) -> None:
    """Before any work or record: every device usable where `executor` runs it, and on Ray an address that
    can be used (checked offline; an unreachable cluster is named when the work connects)."""
    for device in dict.fromkeys(devices):
        check_device(device, executor)
    if executor == "ray":
        from twophase_core.execution.on_ray import ENV_GPUS, GPUS_SPEC, check_address

        check_address()
        from_env(ENV_GPUS, GPUS_SPEC, 1.0)  # GPUs per task: named now, not when the first task is sent
