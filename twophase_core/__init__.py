"""twophase: the two-phase learning dynamics of neural networks (Chaos and Cone effects).

The notebook API, importable without Streamlit::

    from twophase_core import run_chaos, preset, replace, Store
    result = run_chaos(replace(preset("demo", "chaos"), eps=1e-6))  # cached: a second call is instant
    result.to_dataframe()  # one row per (seed, t0, t1): C, B, D, accuracies

Experiments load torch on first use (the names below are resolved lazily), so importing this
package, as the app's process does, never loads torch. Definitions: docs/science.md.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# cuBLAS needs this before CUDA starts to be deterministic (docs/science.md); harmless on CPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

__version__ = "0.1.0"

_EXPORTS = {
    "run_chaos": "execution.run", "run_cone": "execution.run", "run_linear": "execution.run",
    "run_experiment": "execution.run",
    "ChaosConfig": "experiments.chaos", "ConeConfig": "experiments.cone", "LinearConfig": "experiments.linear",
    "TrainConfig": "settings.config", "ConfigError": "settings.config", "replace": "settings.config",
    "validate": "settings.config", "config_hash": "settings.config",
    "preset": "experiments.presets", "PRESETS": "experiments.presets",
    "Store": "storage.store", "Result": "experiments.result", "load_result": "experiments.result",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """PEP 562: import the module that holds `name` only when it is first asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'twophase_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
