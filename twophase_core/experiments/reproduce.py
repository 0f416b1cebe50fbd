"""The command line that reproduces a run or a sweep: shown next to every figure in the app, printed by the CLI,
and the source of a run's default name, so all three always agree.

A run is written as the preset nearest to its config and a flag for every setting that differs from it.
"""

from __future__ import annotations

import shlex

from twophase_core.experiments.presets import PRESETS, preset
from twophase_core.experiments.sweep import DEFAULT_SEEDS, LIST_TYPES, Sweep
from twophase_core.settings import config as conf
from twophase_core.settings.spec import format_value


def nearest_preset(cfg: conf.ExperimentConfig) -> str:
    """The preset that differs from `cfg` in the fewest settings (the shortest reproduce command)."""
    kind, mine = conf.kind_of(cfg), conf.flat(cfg)

    def differences(name: str) -> int:
        ref = conf.flat(preset(name, kind))
        return sum(mine[k] != ref[k] for k in mine)

    return min(PRESETS, key=differences)


def preset_differences(cfg: conf.ExperimentConfig, preset_name: str | None = None) -> tuple[str, dict[str, object]]:
    """(preset, {setting: value} of every setting where `cfg` differs from it), against the given preset or
    the nearest one. One answer for the reproduce command and a run's default name, so they never disagree."""
    kind = conf.kind_of(cfg)
    preset_name = preset_name or nearest_preset(cfg)
    ref = conf.flat(preset(preset_name, kind))
    return preset_name, {name: v for name, v in conf.flat(cfg).items() if v != ref[name]}


def command_for(cfg: conf.ExperimentConfig, preset_name: str | None = None, json_out: str | None = "out.json") -> str:
    """The CLI line that reproduces `cfg` exactly: the preset (given, or the nearest one) and a flag for every
    setting that differs from it."""
    kind = conf.kind_of(cfg)
    preset_name, changed = preset_differences(cfg, preset_name)
    specs = conf.settings_of(type(cfg))
    parts = ["twophase", kind, "--preset", preset_name]
    for name, v in changed.items():
        spec = specs[name][0]
        if spec.type == "bool":
            parts.append(spec.flag(name) if v else "--no-" + spec.flag(name)[2:])
        else:
            parts += [spec.flag(name), format_value(spec, v)]
    if json_out:
        parts += ["--json", json_out]
    return " ".join(shlex.quote(p) for p in parts)


def sweep_command(sweep: Sweep, preset_name: str | None = None, json_out: str = "sweep.json",
                  refine: float | None = None) -> str:
    """The `twophase sweep ...` line that reproduces the sweep (its base as `command_for` writes it), with
    `--refine BUDGET` when it was refined."""
    base = shlex.split(command_for(sweep.base, preset_name, json_out=None))
    specs = conf.settings_of(type(sweep.base))
    parts = ["twophase", "sweep", *base[1:]]
    for name, values in sweep.vary:
        sep = "|" if specs[name][0].type in LIST_TYPES else ","
        parts += ["--vary", f"{name}={sep.join(format_value(specs[name][0], v) for v in values)}"]
    if tuple(sweep.seeds) != DEFAULT_SEEDS:
        for s in sweep.seeds:
            parts += ["--seeds", s]
    if sweep.replicates != 1:
        parts += ["--replicates", str(sweep.replicates)]
    if refine is not None:
        parts += ["--refine", str(int(refine)) if float(refine).is_integer() else repr(float(refine))]
    parts += ["--json", json_out]
    return " ".join(shlex.quote(p) for p in parts)
