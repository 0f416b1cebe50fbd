"""Hostile input, generated: the CLI and `from_dict` either accept a valid config or refuse it in one line.

Fast by default (a few hundred examples in `make test`); `TWOPHASE_FUZZ=long make test` (or
`HYPOTHESIS_PROFILE=long`) runs thousands. Only `--print-config` is driven, so nothing ever trains.
"""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twophase_core.experiments import registry
from twophase_core.experiments.chaos import ChaosConfig
from twophase_core.experiments.cone import ConeConfig
from twophase_core.experiments.presets import preset
from twophase_core.interfaces.cli import main
from twophase_core.settings import config as conf

_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]  # capsys is read (so reset) every example
settings.register_profile("fast", max_examples=150, deadline=2000, suppress_health_check=_QUIET)
settings.register_profile("long", max_examples=3000, deadline=5000, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("long" if os.environ.get("TWOPHASE_FUZZ") else "fast"))

KINDS = list(registry.names())
SETTINGS = {kind: sorted(conf.settings_of(registry.get(kind).config)) for kind in KINDS}

hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "-1", "-1e-7", "0", "1e308", "inf", "-inf", "nan", "1" * 40, "2ep", "3ep4it", "0x10",
                     "1,2,3", "1 2", "1;2", ",,", "true", "false", "no", "yes", "None", "null", "[]", "{}", "1.5",
                     "--json", "-", "ép", "\x00", "x" * 5000, "1e-400", "+5", "05", "1_000"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals (an unknown flag) exit 2 after one usage line
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@given(kind=st.sampled_from(KINDS), data=st.data())
def test_cli_refuses_in_one_line_or_prints_a_valid_config(kind, data, capsys):
    name = data.draw(st.sampled_from(SETTINGS[kind]))
    spec = conf.settings_of(registry.get(kind).config)[name][0]
    value = data.draw(hostile_text)
    flag = spec.flag(name)
    argv = [kind, "--preset", "tiny", "--print-config"]
    if spec.type == "bool":
        argv.append(flag if data.draw(st.booleans()) else "--no-" + flag[2:])
    else:
        argv += [f"{flag}={value}"]
    code, out, err = _run(argv, capsys)
    assert "Traceback" not in err
    if code == 0:
        cfg = registry.config_from_dict(kind, json.loads(out))
        conf.validate(cfg)  # what was accepted is valid
    else:
        assert code == 2, (argv, code, err)
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("twophase: error:")]
        assert len(lines) == 1 and len(lines[0]) < 500, err


leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                 st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
                 st.sampled_from(["false", "no", "0", "cpu", "full", "mnist1d"]))
value = st.one_of(leaf, st.lists(leaf, max_size=4), st.dictionaries(st.text(max_size=5), leaf, max_size=3))


@given(kind=st.sampled_from(KINDS), data=st.data())
def test_from_dict_gives_a_valid_config_or_a_config_error(kind, data):
    d = conf.to_dict(preset("tiny", kind))
    for _ in range(data.draw(st.integers(1, 4))):
        name = data.draw(st.sampled_from(SETTINGS[kind]))
        where = d["train"] if conf.settings_of(registry.get(kind).config)[name][1] else d
        if data.draw(st.integers(0, 9)) == 0:
            where.pop(name, None)  # a missing key must not silently take a default
        else:
            where[name] = data.draw(value)
    if data.draw(st.integers(0, 19)) == 0:
        d = data.draw(value)  # not even a dict
    try:
        cfg = registry.config_from_dict(kind, d)
        conf.validate(cfg)
    except conf.ConfigError as e:
        assert len(str(e)) < 500
    else:
        assert conf.to_dict(cfg) == json.loads(json.dumps(conf.to_dict(cfg)))  # a valid config is plain JSON
        conf.config_hash(cfg)


@pytest.mark.parametrize("d, needle", [
    (None, "must be a dict"),
    ({"train": "x"}, "missing"),
])
def test_from_dict_refuses_non_configs(d, needle):
    with pytest.raises(conf.ConfigError, match=needle):
        conf.from_dict(ChaosConfig, d)


@pytest.mark.parametrize("field, v", [("augment", "false"), ("download", "no"), ("init_seed", 2**64),
                                      ("momentum", "0.9"), ("weight_decay", None), ("lr_gamma", None),
                                      ("dropout", "x")])
def test_from_dict_takes_no_truthy_strings_or_none(field, v):
    d = conf.to_dict(preset("tiny", "chaos"))
    d["train"][field] = v
    with pytest.raises(conf.ConfigError, match=field):
        conf.validate(conf.from_dict(ChaosConfig, d))


def test_cone_references_none_is_a_config_error():
    d = conf.to_dict(preset("tiny", "cone"))
    d["references"] = None
    with pytest.raises(conf.ConfigError, match="references"):
        conf.validate(conf.from_dict(ConeConfig, d))


NUMERIC = sorted({(name, spec) for kind in KINDS
                  for name, (spec, _) in conf.settings_of(registry.get(kind).config).items()
                  if spec.type in ("int", "float", "step", "steps", "ints", "window")}, key=lambda x: x[0])
not_plain = st.tuples(st.text(max_size=10), st.one_of(st.just("_"), st.characters(min_codepoint=128)),
                      st.text(max_size=10)).map("".join)


@given(setting=st.sampled_from(NUMERIC), text=not_plain)
def test_a_number_with_a_non_ascii_character_or_underscore_is_a_config_error(setting, text):
    from twophase_core.settings.spec import parse_text

    name, spec = setting
    with pytest.raises(conf.ConfigError):
        parse_text(name, spec, text, iterations_per_epoch=10)
