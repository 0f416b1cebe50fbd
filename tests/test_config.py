"""Every kind of bad setting gives its ConfigError; hashing and step parsing are stable."""

import dataclasses

import pytest

from twophase_core.experiments import registry
from twophase_core.experiments.chaos import ChaosConfig
from twophase_core.experiments.cone import ConeConfig
from twophase_core.experiments.linear import LinearConfig
from twophase_core.experiments.presets import PRESETS, preset
from twophase_core.settings import config as conf

T = conf.TrainConfig(dataset="synthetic", model="mlp", iterations=100)


@pytest.mark.parametrize(
    "cfg, field",
    [
        (ChaosConfig(train=T, t0=(100,), t1=(100,)), "t0"),  # t0 >= T
        (ChaosConfig(train=T, t0=(), t1=(50,)), "t0"),  # empty grid
        (ChaosConfig(train=T, t0=(0,), t1=()), "t1"),
        (ChaosConfig(train=T, t0=(50,), t1=(10, 50)), "t1"),  # no t1 after any t0
        (ChaosConfig(train=T, t0=(0,), t1=(50,), eps=-1e-7), "eps"),
        (ChaosConfig(train=T, t0=(0,), t1=(50,), eps=float("nan")), "eps"),
        (ChaosConfig(train=T, t0=(0,), t1=(50,), eps_mode="l0"), "eps_mode"),
        (ChaosConfig(train=T, t0=(0,), t1=(50,), n_alpha=1), "n_alpha"),
        (ChaosConfig(train=T, t0=(0,), t1=(50,), bn="repair"), "bn"),
        (ChaosConfig(train=T, t0=(0,), t1=(50,), perturb_seeds=()), "perturb_seeds"),
        (ChaosConfig(train=T, t0=(0, 0), t1=(50,)), "t0"),
        (ChaosConfig(train=dataclasses.replace(T, model="transformer"), t0=(0,), t1=(50,)), "model"),
        (ChaosConfig(train=dataclasses.replace(T, dataset="imagenet"), t0=(0,), t1=(50,)), "dataset"),
        (ChaosConfig(train=dataclasses.replace(T, lr=0.0), t0=(0,), t1=(50,)), "lr"),
        (ChaosConfig(train=dataclasses.replace(T, batch_size=0), t0=(0,), t1=(50,)), "batch_size"),
        (ChaosConfig(train=dataclasses.replace(T, iterations=0), t0=(0,), t1=(50,)), "iterations"),
        (ChaosConfig(train=dataclasses.replace(T, device="tpu"), t0=(0,), t1=(50,)), "device"),
        (ChaosConfig(train=dataclasses.replace(T, dataset="mnist1d", model="resnet20"), t0=(0,), t1=(50,)),
         "model"),
        (ConeConfig(train=T, checkpoints=(10, 20, 30)), "checkpoints"),  # no 0
        (ConeConfig(train=T, checkpoints=(0, 10)), "checkpoints"),
        (ConeConfig(train=T, checkpoints=(0, 10, 20), kernel="diag"), "kernel"),
        (ConeConfig(train=T, checkpoints=(0, 10, 20), references=(5,), dts=(10,)), "references"),
        (ConeConfig(train=T, checkpoints=(0, 10, 20), dts=(7,)), "dts"),
        (ConeConfig(train=T, checkpoints=(0, 10, 20), dts=(10,), n_samples=1), "n_samples"),
        (ConeConfig(train=T, checkpoints=(0, 10, 20, 200), dts=(10,)), "checkpoints"),
        (LinearConfig(train=T, switch=(100,)), "switch"),
        (LinearConfig(train=T, switch=(0,), bn_stats="none"), "bn_stats"),
    ],
)
def test_bad_config_names_its_field(cfg, field):
    with pytest.raises(conf.ConfigError) as e:
        conf.validate(cfg)
    assert e.value.field == field
    assert field in str(e.value)


def test_presets_are_valid_and_hash_stably():
    for name in PRESETS:
        for kind in registry.names():
            conf.validate(preset(name, kind))
    a = preset("demo", "chaos")
    assert conf.config_hash(a) == conf.config_hash(conf.from_dict(ChaosConfig, conf.to_dict(a)))
    assert conf.config_hash(a) != conf.config_hash(conf.replace(a, eps=2e-7))
    assert conf.config_hash(a) != conf.config_hash(conf.replace(a, init_seed=1))


def test_trajectory_key_ignores_what_cannot_change_the_trajectory():
    assert T.trajectory_key() == dataclasses.replace(T, iterations=5000, checkpoint_every=10).trajectory_key()
    assert T.trajectory_key() != dataclasses.replace(T, lr=0.2).trajectory_key()


def test_unknown_key_is_an_error():
    with pytest.raises(conf.ConfigError, match="unknown setting"):
        conf.from_dict(ChaosConfig, {"t00": [1]})


@pytest.mark.parametrize("text, it", [("500", 500), ("500it", 500), ("2ep", 782), ("2ep50it", 832), (7, 7)])
def test_parse_step(text, it):
    assert conf.parse_step(text, 391) == it


def test_parse_step_rejects_garbage():
    with pytest.raises(conf.ConfigError):
        conf.parse_step("two epochs", 391)


@pytest.mark.parametrize("dataset", ["digits", "mnist1d", "synthetic"])
def test_iterations_per_epoch_matches_the_loaded_data(dataset):
    from twophase_core.science.data import BatchSchedule, get_dataset

    cfg = conf.TrainConfig(dataset=dataset, model="mlp", batch_size=50)
    n = len(get_dataset(cfg).x_train)
    assert conf.iterations_per_epoch(cfg) == BatchSchedule(n, 50, 0, False).steps_per_epoch == n // 50


@pytest.mark.parametrize("cfg, needle", [
    (ChaosConfig(train=T, t0=(100,), t1=(50,)), "t0=(100,) is invalid: every value must be in [0, 99] "
                                                   "(iterations T = 100), got 100"),
    (ChaosConfig(train=T, t0=(0,), t1=(101,)), "in [1, 100] (iterations T = 100), got 101"),
    (ConeConfig(train=T, checkpoints=(0, 10, 101)), "in [0, 100] (iterations T = 100), got 101"),
    (LinearConfig(train=T, switch=(100,)), "in [0, 99] (iterations T = 100), got 100"),
])
def test_range_messages_name_the_run_length_t_not_the_last_allowed_step(cfg, needle):
    with pytest.raises(conf.ConfigError) as e:
        conf.validate(cfg)
    assert needle in str(e.value)


_SPECS = conf.settings_of(ConeConfig) | conf.settings_of(ChaosConfig)


@pytest.mark.parametrize("name, text, value", [
    ("lr", "1e-7", 1e-7), ("lr", " +.5 ", 0.5), ("lr", "5.", 5.0), ("lr", "2E3", 2000.0),
    ("batch_size", "+16", 16), ("iterations", "2ep5it", 2 * 10 + 5), ("t0", "0 10;20", (0, 10, 20)),
    ("perturb_seeds", "3,4", (3, 4)), ("cone_window", "1, 2ep", (1, 20)),
])
def test_plain_ascii_numbers_parse(name, text, value):
    from twophase_core.settings.spec import parse_text

    assert parse_text(name, _SPECS[name][0], text, iterations_per_epoch=10) == value


@pytest.mark.parametrize("name, text", [
    ("lr", "١"), ("lr", "0.1_0"), ("lr", "inf"), ("lr", "nan"), ("lr", "Infinity"), ("lr", "1e999"), ("lr", "0x10"),
    ("lr", "0.1\u00a0"), ("batch_size", "1_6"), ("batch_size", "１６"), ("iterations", "٥ep"), ("t0", "0\u200310"),
    ("t0", "0,1_0"), ("perturb_seeds", "٣"), ("cone_window", "1,２"),
])
def test_numbers_in_other_scripts_with_underscores_or_in_words_are_refused(name, text):
    from twophase_core.settings.spec import parse_text

    with pytest.raises(conf.ConfigError) as e:
        parse_text(name, _SPECS[name][0], text, iterations_per_epoch=10)
    assert e.value.field == name
