"""Model registry: adding a model is one builder plus one registry line.

Every builder takes (input shape, classes, width multiplier, dropout) and is initialised from
its own seed, so theta_0 is a pure function of the config. A model from outside the package (a
registered name or MODULE:CALLABLE) is built by its factory the same way (settings/plugins.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from twophase_core.settings import plugins
from twophase_core.settings.config import ConfigError, TrainConfig


def _w(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


def mlp(in_shape: tuple[int, ...], classes: int, width: float, dropout: float) -> nn.Module:
    """Two hidden ReLU layers of 128*width units."""
    d = 1
    for s in in_shape:
        d *= s
    h = _w(128, width)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, classes))


def cnn(in_shape: tuple[int, ...], classes: int, width: float, dropout: float) -> nn.Module:
    """Three conv-BN-ReLU layers (strides 1, 2, 2), flatten, linear; 1-D or 2-D by input shape."""
    one_d = len(in_shape) == 2
    conv = nn.Conv1d if one_d else nn.Conv2d
    bn = nn.BatchNorm1d if one_d else nn.BatchNorm2d
    c1, c2 = _w(32, width), _w(64, width)
    layers: list[nn.Module] = []
    cin = in_shape[0]
    for cout, stride in ((c1, 1), (c1, 2), (c2, 2)):
        layers += [conv(cin, cout, 3, stride=stride, padding=1, bias=False), bn(cout), nn.ReLU()]
        cin = cout
    spatial = 1
    for s in in_shape[1:]:
        s = (s - 1) // 2 + 1
        s = (s - 1) // 2 + 1
        spatial *= s
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c2 * spatial, classes))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:  # 1x1 conv + BN shortcut (open_lth's choice)
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20: widths 16/32/64 (times width), 3 blocks per stage."""

    def __init__(self, in_shape: tuple[int, ...], classes: int, width: float):
        super().__init__()
        w = [_w(16, width), _w(32, width), _w(64, width)]
        self.conv = nn.Conv2d(in_shape[0], w[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(w[0])
        blocks: list[nn.Module] = []
        cin = w[0]
        for i, cout in enumerate(w):
            for j in range(3):
                blocks.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(w[2], classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


VGG16: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16BN(nn.Module):
    """VGG-16 with BatchNorm; head 512->classes, or the torchvision-style 4096-4096 head with dropout."""

    def __init__(self, in_shape: tuple[int, ...], classes: int, width: float, fc_head: bool, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_shape[0]
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: small test images keep >= 1 pixel
            else:
                cout = _w(int(v), width)
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.head: nn.Module
        if fc_head:
            h = _w(4096, width)
            self.head = nn.Sequential(nn.Linear(cin, h), nn.ReLU(), nn.Dropout(dropout), nn.Linear(h, h), nn.ReLU(),
                                      nn.Dropout(dropout), nn.Linear(h, classes))
        else:
            self.head = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:  # (every conv here has one)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _need_image(name: str, in_shape: tuple[int, ...]) -> None:
    if len(in_shape) != 3:
        raise ConfigError("model", name, "needs 2-D images (C, H, W); use mlp or cnn for 1-D data")


def resnet20(in_shape, classes, width, dropout):
    _need_image("resnet20", in_shape)
    return ResNet20(in_shape, classes, width)


def vgg16_bn(in_shape, classes, width, dropout):
    _need_image("vgg16_bn", in_shape)
    return VGG16BN(in_shape, classes, width, fc_head=False, dropout=dropout)


def vgg16_bn_fc(in_shape, classes, width, dropout):
    _need_image("vgg16_bn_fc", in_shape)
    return VGG16BN(in_shape, classes, width, fc_head=True, dropout=dropout)


REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resnet20": resnet20,
    "vgg16_bn": vgg16_bn,
    "vgg16_bn_fc": vgg16_bn_fc,
}


def build_model(cfg: TrainConfig, in_shape: tuple[int, ...], classes: int,
                device: torch.device | str = "cpu") -> nn.Module:
    """theta_0 of a config: built under its init seed, without touching the global RNG (a plugin's factory
    too: `plugins.call_factory`, which checks what it returns)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        if cfg.model in REGISTRY:
            model = REGISTRY[cfg.model](in_shape, classes, cfg.width, cfg.dropout)
        else:
            model = plugins.call_factory(cfg.model, in_shape, classes, cfg.width, cfg.dropout)
    return model.to(device)


def device_of(model: nn.Module) -> torch.device:
    """Where a model lives (its first parameter or buffer; CPU for an empty module)."""
    for t in model.parameters():
        return t.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode (BN running stats, no dropout) and restore each flag afterwards.

    Flags are restored per module, not with model.train(previous), so a model whose BN layers were
    deliberately frozen in eval mode while the rest trains comes back exactly as it was, and code
    inside may switch single submodules (BN layers to train mode to recompute statistics) freely.
    A model already all in eval mode is not switched again, and only flags that differ on the way out
    are set (nn.Module attribute writes are the slow part: on the bench's MLP, measured under load,
    48 us down to 12 us per call, a tenth of its 0.5 ms trace eNTK).
    """
    flags = [(m, m.training) for m in model.modules()]
    if any(flag for _, flag in flags):
        model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            if m.training != flag:
                m.training = flag


def trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable(model))
