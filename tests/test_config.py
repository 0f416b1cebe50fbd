"""Every kind of bad setting gives its ConfigError; hashing and step parsing are stable."""

import dataclasses

import pytest

from twophase_core import config as C
from twophase_core.presets import PRESETS, preset

T = C.TrainConfig(dataset="synthetic", model="mlp", iterations=100)


@pytest.mark.parametrize(
    "cfg, field",
    [
        (C.ChaosConfig(train=T, t0=(100,), t1=(100,)), "t0"),  # t0 >= T
        (C.ChaosConfig(train=T, t0=(), t1=(50,)), "t0"),  # empty grid
        (C.ChaosConfig(train=T, t0=(0,), t1=()), "t1"),
        (C.ChaosConfig(train=T, t0=(50,), t1=(10, 50)), "t1"),  # no t1 after any t0
        (C.ChaosConfig(train=T, t0=(0,), t1=(50,), eps=-1e-7), "eps"),
        (C.ChaosConfig(train=T, t0=(0,), t1=(50,), eps=float("nan")), "eps"),
        (C.ChaosConfig(train=T, t0=(0,), t1=(50,), eps_mode="l0"), "eps_mode"),
        (C.ChaosConfig(train=T, t0=(0,), t1=(50,), n_alpha=1), "n_alpha"),
        (C.ChaosConfig(train=T, t0=(0,), t1=(50,), bn="repair"), "bn"),
        (C.ChaosConfig(train=T, t0=(0,), t1=(50,), perturb_seeds=()), "perturb_seeds"),
        (C.ChaosConfig(train=T, t0=(0, 0), t1=(50,)), "t0"),
        (C.ChaosConfig(train=dataclasses.replace(T, model="transformer"), t0=(0,), t1=(50,)), "model"),
        (C.ChaosConfig(train=dataclasses.replace(T, dataset="imagenet"), t0=(0,), t1=(50,)), "dataset"),
        (C.ChaosConfig(train=dataclasses.replace(T, lr=0.0), t0=(0,), t1=(50,)), "lr"),
        (C.ChaosConfig(train=dataclasses.replace(T, batch_size=0), t0=(0,), t1=(50,)), "batch_size"),
        (C.ChaosConfig(train=dataclasses.replace(T, iterations=0), t0=(0,), t1=(50,)), "iterations"),
        (C.ChaosConfig(train=dataclasses.replace(T, device="tpu"), t0=(0,), t1=(50,)), "device"),
        (C.ChaosConfig(train=dataclasses.replace(T, dataset="mnist1d", model="resnet20"), t0=(0,), t1=(50,)), "model"),
        (C.ConeConfig(train=T, checkpoints=(10, 20, 30)), "checkpoints"),  # no 0
        (C.ConeConfig(train=T, checkpoints=(0, 10)), "checkpoints"),
        (C.ConeConfig(train=T, checkpoints=(0, 10, 20), kernel="diag"), "kernel"),
        (C.ConeConfig(train=T, checkpoints=(0, 10, 20), references=(5,), dts=(10,)), "references"),
        (C.ConeConfig(train=T, checkpoints=(0, 10, 20), dts=(7,)), "dts"),
        (C.ConeConfig(train=T, checkpoints=(0, 10, 20), dts=(10,), n_samples=1), "n_samples"),
        (C.ConeConfig(train=T, checkpoints=(0, 10, 20, 200), dts=(10,)), "checkpoints"),
        (C.LinearConfig(train=T, switch=(100,)), "switch"),
        (C.LinearConfig(train=T, switch=(0,), bn_stats="none"), "bn_stats"),
    ],
)
def test_bad_config_names_its_field(cfg, field):
    with pytest.raises(C.ConfigError) as e:
        C.validate(cfg)
    assert e.value.field == field
    assert field in str(e.value)


def test_presets_are_valid_and_hash_stably():
    for name in PRESETS:
        for kind in C.KINDS:
            C.validate(preset(name, kind))
    a = preset("demo", "chaos")
    assert C.config_hash(a) == C.config_hash(C.from_dict(C.ChaosConfig, C.to_dict(a)))
    assert C.config_hash(a) != C.config_hash(C.replace(a, eps=2e-7))
    assert C.config_hash(a) != C.config_hash(C.replace(a, init_seed=1))


def test_trajectory_key_ignores_what_cannot_change_the_trajectory():
    assert T.trajectory_key() == dataclasses.replace(T, iterations=5000, checkpoint_every=10).trajectory_key()
    assert T.trajectory_key() != dataclasses.replace(T, lr=0.2).trajectory_key()


def test_unknown_key_is_an_error():
    with pytest.raises(C.ConfigError, match="unknown setting"):
        C.from_dict(C.ChaosConfig, {"t00": [1]})


@pytest.mark.parametrize("text, it", [("500", 500), ("500it", 500), ("2ep", 782), ("2ep50it", 832), (7, 7)])
def test_parse_step(text, it):
    assert C.parse_step(text, 391) == it


def test_parse_step_rejects_garbage():
    with pytest.raises(C.ConfigError):
        C.parse_step("two epochs", 391)


@pytest.mark.parametrize("dataset", ["digits", "mnist1d", "synthetic"])
def test_iterations_per_epoch_matches_the_loaded_data(dataset):
    from twophase_core.data import BatchSchedule, get_dataset

    cfg = C.TrainConfig(dataset=dataset, model="mlp", batch_size=50)
    n = len(get_dataset(cfg).x_train)
    assert C.iterations_per_epoch(cfg) == BatchSchedule(n, 50, 0, False).steps_per_epoch == n // 50
