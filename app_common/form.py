"""The settings form, generated from the config specs: one widget per setting of the experiment.

The same specs give the CLI its flags, so the form and the CLI accept the same text ('0, 100 2ep'),
check it the same way (`config.with_settings`), and name the same field in an error: every bad field at
once, each under its widget (`with_all_settings`). A choice is a
selectbox, a bool a checkbox, everything else a text field (a cleared field is an error, never a
silent default). The form starts from a preset or, when a run is open, from that run's settings:
change one field, press Run, and the new run starts while the old one stays.

Models and datasets: the built-ins and the names packages register (entry points), never an import path: the
app may be open to a network and importing a module runs its code. A run made from the CLI with one shows it,
and Run refuses it under its field (settings/plugins.py refuses it in the app's process too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from twophase_core.experiments import registry
from twophase_core.experiments.presets import PRESETS, preset
from twophase_core.settings import config as conf
from twophase_core.settings import plugins
from twophase_core.settings.spec import Spec, format_value
from twophase_core.storage.errors import StoreError

from .runs import job_manager, open_run

THIS_RUN = "this run"
COLUMNS = 4


def _widget(name: str, spec: Spec, value: Any, key: str) -> Any:
    label = spec.label or name.replace("_", " ")
    if spec.type == "choice":
        opts = plugins.names(spec.plugin) if spec.plugin else list(spec.choices)
        if spec.plugin and value not in opts:  # this run's import path: shown as it is, refused on Run
            opts.append(value)
        return st.selectbox(label, opts, index=opts.index(value) if value in opts else 0, key=key, help=spec.help)
    if spec.type == "bool":
        return st.checkbox(label, value=bool(value), key=key, help=spec.help)
    hint = " Steps: 500, 500it, 2ep, 2ep50it." if spec.type in ("step", "steps", "window") else ""
    hint += " Separate values by commas or spaces." if spec.type in ("steps", "ints") else ""
    return st.text_input(label, value=format_value(spec, value), key=key, help=spec.help + hint)


def _grid(names: list[str], specs: dict[str, tuple[Spec, bool]], values: dict[str, Any], prefix: str,
          out: dict[str, Any], slots: dict[str, Any]) -> None:
    """Widgets in rows of COLUMNS, each with an empty slot under it for its error."""
    for start in range(0, len(names), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, name in zip(cols, names[start:start + COLUMNS], strict=False):
            with col:
                out[name] = _widget(name, specs[name][0], values[name], f"{prefix}.{name}")
                slots[name] = st.empty()


def _widgets(kind: str, base: conf.ExperimentConfig, prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    specs = conf.settings_of(registry.get(kind).config)
    values = conf.flat(base)
    out: dict[str, Any] = {}
    slots: dict[str, Any] = {}
    train = [n for n, (s, t) in specs.items() if t and not s.advanced]
    train_more = [n for n, (s, t) in specs.items() if t and s.advanced]
    exp = [n for n, (s, t) in specs.items() if not t and not s.advanced]
    exp_more = [n for n, (s, t) in specs.items() if not t and s.advanced]
    st.markdown("**Training run**")
    _grid(train, specs, values, prefix, out, slots)
    with st.expander("More training settings"):
        _grid(train_more, specs, values, prefix, out, slots)
    st.markdown(f"**{registry.get(kind).settings_title}**")
    _grid(exp, specs, values, prefix, out, slots)
    if exp_more:
        with st.expander("More settings"):
            _grid(exp_more, specs, values, prefix, out, slots)
    return out, slots


def with_all_settings(base: conf.ExperimentConfig, values: Mapping[str, Any]
                      ) -> tuple[conf.ExperimentConfig | None, list[conf.ConfigError]]:
    """`conf.with_settings(base, values)`, or every bad field rather than only the first: a field the engine refuses
    is put back to `base`'s value and the rest is checked again, so each field is judged beside the others as
    entered. Returns (the config, []) or (None, one error per bad field, in the engine's order)."""
    left = dict(values)
    errors: list[conf.ConfigError] = []
    while True:
        try:
            cfg = conf.with_settings(base, left)
        except conf.ConfigError as e:
            if e.field in {x.field for x in errors}:  # refused again with its base value: a relation already named
                return None, errors
            errors.append(e)
            if e.field not in left:  # not one of the fields given: nothing left to take back
                return None, errors
            del left[e.field]
        else:
            return (cfg, []) if not errors else (None, errors)


def _refuse_import_paths(values: Mapping[str, Any]) -> tuple[None, list[conf.ConfigError]] | None:
    """(None, an error per model or dataset given as an import path), before the engine sees (and imports) it;
    None when every one is a registered name."""
    errors = [conf.ConfigError(name, values[name], plugins.REFUSAL.format(name))
              for name in plugins.GROUPS if name in values and values[name] not in plugins.names(name)]
    return (None, errors) if errors else None


def settings_form(kind: str, run_config: conf.ExperimentConfig | None = None, run_id: str | None = None,
                  expanded: bool = True) -> None:
    """Preset (or this run's settings) plus the form; Run validates with the engine and queues a job
    (or attaches to the same settings' job)."""
    names = ([THIS_RUN] if run_config is not None else []) + list(PRESETS)
    with st.expander("Settings", expanded=expanded):
        choice = st.selectbox("Start from", names, key=f"preset_{kind}",
                              format_func=lambda n: f"this run's settings ({run_id})" if n == THIS_RUN
                              else f"preset {n}: {PRESETS[n][0]}",
                              help="fills the form below; change what you like, then Run starts a new run "
                                   "(the open one is kept)")
        base = run_config if choice == THIS_RUN and run_config is not None else preset(choice, kind)
        prefix = f"{kind}.{run_id if choice == THIS_RUN else choice}"
        with st.form(f"form_{kind}", border=False):
            values, slots = _widgets(kind, base, prefix)
            general = st.empty()
            submitted = st.form_submit_button("Run", type="primary", icon=":material/play_arrow:")
    if not submitted:
        return
    cfg, errors = _refuse_import_paths(values) or with_all_settings(base, values)
    if cfg is None:  # each bad field under its widget, the others (not a field of the form) here
        named = [e for e in errors if e.field in slots]
        for e in named:
            slots[e.field].error(str(e), icon=":material/error:")
        others = [f"- {e}" for e in errors if e.field not in slots]
        fix = f"fix {', '.join(f'**{e.field}**' for e in named)} above." if named else ""
        if others:
            general.error("\n".join([f"Nothing was started: {fix}", *others]), icon=":material/error:")
        else:
            general.warning(f"Nothing was started: {fix}", icon=":material/warning:")
        return
    try:
        rec = job_manager().submit(cfg)
    except (conf.ConfigError, StoreError) as e:  # a full or damaged store: said as such, never a traceback
        general.error(f"Nothing was started: {e}", icon=":material/error:")
        return
    open_run(kind, rec.id, switch=False)
    st.rerun()
