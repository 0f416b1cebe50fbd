"""Model factories and dataset loaders from outside the package, for tests/test_plugin_model_data.py: good ones,
and one bad one for each thing validation must name. Imported by path (tests/plugins on sys.path, as
MODULE:CALLABLE), never installed; nothing in twophase_core names them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

CALLED: list[dict[str, object]] = []  # the keywords each recording factory was given, in order


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, 2, 5)) + y[:, None, None]
    return x.astype(np.float32), y.astype(np.int64)


def blobs(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Three Gaussian blobs of 2 x 5 inputs (96 train / 48 test), as numpy arrays."""
    return (*_blobs(96, 0), *_blobs(48, 1))


def blobs_as_tensors(root: str) -> tuple[torch.Tensor, ...]:
    """The same blobs as torch tensors, labels int32: accepted as well."""
    xtr, ytr, xte, yte = blobs(root)
    return torch.from_numpy(xtr), torch.from_numpy(ytr).int(), torch.from_numpy(xte), torch.from_numpy(yte).int()


def plain(in_shape: tuple[int, ...], classes: int) -> nn.Module:
    """No width, no dropout: given neither."""
    CALLED.append({"in_shape": in_shape, "classes": classes})
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(in_shape)), classes))


def with_width(in_shape: tuple[int, ...], classes: int, width: float = 1.0) -> nn.Module:
    """Takes width: given width only."""
    CALLED.append({"in_shape": in_shape, "classes": classes, "width": width})
    h = max(1, round(8 * width))
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(in_shape)), h), nn.Tanh(), nn.Linear(h, classes))


def with_options(in_shape: tuple[int, ...], classes: int, **options: float) -> nn.Module:
    """Takes any keyword: given width and dropout."""
    CALLED.append({"in_shape": in_shape, "classes": classes, **options})
    return nn.Sequential(nn.Flatten(), nn.Dropout(options["dropout"]), nn.Linear(int(np.prod(in_shape)), classes))


NOT_CALLABLE = 3


def no_arguments() -> nn.Module:
    return nn.Linear(1, 1)


def returns_a_list(in_shape: tuple[int, ...], classes: int) -> list[nn.Module]:
    return [nn.Linear(1, classes)]


def wrong_logits(in_shape: tuple[int, ...], classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(in_shape)), classes + 1))


def raises(in_shape: tuple[int, ...], classes: int) -> nn.Module:
    raise RuntimeError("this factory is broken on purpose")


def ints_as_inputs(root: str) -> tuple[np.ndarray, ...]:
    xtr, ytr, xte, yte = blobs(root)
    return (xtr * 10).astype(np.int64), ytr, xte, yte


def float_labels(root: str) -> tuple[np.ndarray, ...]:
    xtr, ytr, xte, yte = blobs(root)
    return xtr, ytr.astype(np.float32), xte, yte


def label_out_of_range(root: str) -> tuple[np.ndarray, ...]:
    xtr, ytr, xte, yte = blobs(root)
    yte = yte.copy()
    yte[0] = 5
    return xtr, ytr, xte, yte


def negative_label(root: str) -> tuple[np.ndarray, ...]:
    xtr, ytr, xte, yte = blobs(root)
    ytr = ytr.copy()
    ytr[3] = -1
    return xtr, ytr, xte, yte


def nan_inputs(root: str) -> tuple[np.ndarray, ...]:
    xtr, ytr, xte, yte = blobs(root)
    xte = xte.copy()
    xte[2, 1, 3] = np.nan
    return xtr, ytr, xte, yte


def shapes_disagree(root: str) -> tuple[np.ndarray, ...]:
    xtr, ytr, xte, yte = blobs(root)
    return xtr, ytr, xte[:, :, :4], yte


def labels_short(root: str) -> tuple[np.ndarray, ...]:
    xtr, ytr, xte, yte = blobs(root)
    return xtr, ytr[:-1], xte, yte


def three_values(root: str) -> tuple[np.ndarray, ...]:
    return blobs(root)[:3]


def lists(root: str) -> tuple[object, ...]:
    xtr, ytr, xte, yte = blobs(root)
    return xtr.tolist(), ytr, xte, yte


def loader_raises(root: str) -> tuple[np.ndarray, ...]:
    raise FileNotFoundError(f"no data under {root!r}")
