"""Named presets: the same config objects for the CLI, the app and the tests.

`demo` is the embedded default (no download, no GPU, a live demo on a 2-core laptop); its data
and sizes were chosen by measurement (docs/benchmarks.md, "Choosing the demo"). The CIFAR-10 presets follow
the paper recipe of docs/science.md and are meant for a GPU.
"""

from __future__ import annotations

from twophase_core.experiments import registry
from twophase_core.experiments.chaos import ChaosConfig
from twophase_core.experiments.cone import ConeConfig
from twophase_core.experiments.linear import LinearConfig
from twophase_core.settings import config as conf

# -- the embedded demo --------------------------------------------------------------------------
DEMO_TRAIN = conf.TrainConfig(dataset="mnist1d", model="cnn", width=1.0, lr=0.1, momentum=0.9, weight_decay=1e-4,
                           batch_size=128, iterations=600)
DEMO = {
    # B and D on the first 500 test points: the 30-point barrier path is a third of the demo's
    # work on the full 1000; the full set is one --eval-size 0 away.
    "chaos": ChaosConfig(train=DEMO_TRAIN, t0=(0, 30, 100, 300), t1=(100, 200, 300, 400, 600), eval_size=500),
    "cone": ConeConfig(train=DEMO_TRAIN, checkpoints=(0, 5, 10, 20, 30, 40, 60, 80, 100, 150, 200, 300, 400, 500,
                                                        600),
                         n_samples=40, kernel="full", references=(0, 100, 300), dts=(50, 100)),
    "linear": LinearConfig(train=DEMO_TRAIN, switch=(0, 30, 100, 300)),
}

# -- demo-sweep: the transition with its interval, on the embedded data (docs/transition.md) ------
# The MNIST-1D MLP: the demo CNN's C keeps falling past any affordable T, so its late level is never
# reached; the MLP's levels off by t0 ~ 1,600 at T = 3,000 (measured: docs/transition.md).
SWEEP_TRAIN = conf.TrainConfig(dataset="mnist1d", model="mlp", width=1.0, lr=0.1, momentum=0.9, weight_decay=1e-4,
                            batch_size=128, iterations=3000)
DEMO_SWEEP = {
    "chaos": ChaosConfig(train=SWEEP_TRAIN, t0=(0, 300, 500, 700, 900, 1200, 1600, 2000),
                           t1=(500, 1000, 1500, 2000, 2500, 3000), eval_size=500),
    "cone": ConeConfig(train=SWEEP_TRAIN, checkpoints=tuple(range(0, 3001, 100)), n_samples=40, kernel="full",
                         references=(0, 1000), dts=(100,)),
    "linear": LinearConfig(train=SWEEP_TRAIN, switch=(0, 300, 700, 1200, 2000), eval_size=500),
}

# -- tiny: seconds, for tests and the browser test ---------------------------------------------
TINY_TRAIN = conf.TrainConfig(dataset="synthetic", model="mlp", width=0.25, lr=0.05, momentum=0.9, weight_decay=0.0,
                           batch_size=32, iterations=60)
TINY = {
    "chaos": ChaosConfig(train=TINY_TRAIN, t0=(0, 20), t1=(30, 60), n_alpha=5),
    "cone": ConeConfig(train=TINY_TRAIN, checkpoints=(0, 10, 20, 40, 60), n_samples=8, references=(0,),
                         dts=(20,)),
    "linear": LinearConfig(train=TINY_TRAIN, switch=(0, 30)),
}

# -- paper scale (docs/science.md recipe): CIFAR-10, batch 128, 391 it/epoch, 160 epochs -------------
IPE = 391


def _cifar(model: str) -> dict[str, conf.ExperimentConfig]:
    train = conf.TrainConfig(dataset="cifar10", model=model, lr=0.1, momentum=0.9, weight_decay=1e-4,
                          lr_milestones=(80 * IPE, 120 * IPE), lr_gamma=0.1, batch_size=128,
                          iterations=160 * IPE, augment=True, device="cuda")
    t1 = (1000, 2000, 5000, 10000, 20000, 40000, 160 * IPE)
    return {
        "chaos": ChaosConfig(train=train, t0=(0, 100, 200, 500, 1000, 2000, 5000, 10000), t1=t1),
        "cone": ConeConfig(train=train, checkpoints=(0, 50, 100, 200, 300, 500, 1000, 1500, 2000, 3000, 5000, 7500,
                                                       10000, 15000, 20000, 30000, 40000, 50000, 160 * IPE),
                             n_samples=100, kernel="full", references=(0, 1000, 5000), dts=(500, 10000)),
        "linear": LinearConfig(train=conf.replace(LinearConfig(train=train), iterations=10000).train,
                                 switch=(0, 100, 200, 500, 1000, 2000, 5000)),
    }


PRESETS: dict[str, tuple[str, dict[str, conf.ExperimentConfig]]] = {
    "demo": ("embedded MNIST-1D, small CNN, CPU: chaos and cone in about 40 s of compute", DEMO),
    "demo-sweep": ("embedded MNIST-1D MLP, T = 3,000: sweep it over 5 seeds for t* with its interval", DEMO_SWEEP),
    "tiny": ("synthetic 3x8x8 data, seconds: for tests", TINY),
    "cifar10-resnet20": ("paper recipe, ResNet-20 on CIFAR-10 (GPU; data_root or --download)", _cifar("resnet20")),
    "cifar10-vgg16": ("paper recipe, VGG-16-BN on CIFAR-10 (GPU; data_root or --download)", _cifar("vgg16_bn")),
}


# Replicates a sweep on a preset runs by default (`twophase sweep --preset NAME`); others: 1.
SWEEP_REPLICATES: dict[str, int] = {"demo-sweep": 5}


def sweep_replicates(name: str) -> int:
    return SWEEP_REPLICATES.get(name, 1)


def preset(name: str, kind: str) -> conf.ExperimentConfig:
    """The preset's config of `kind`; a kind the preset does not name (a plugin's) gets its defaults on the
    preset's training run."""
    if name not in PRESETS:
        raise conf.ConfigError("preset", name, f"choose one of {', '.join(PRESETS)}")
    configs = PRESETS[name][1]
    if kind in configs:
        return configs[kind]
    return registry.get(kind).default(next(iter(configs.values())).train)
