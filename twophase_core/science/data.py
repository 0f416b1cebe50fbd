"""Datasets (a registry, and loaders from outside the package: settings/plugins.py) and the SGD noise schedule.

Every dataset is held in memory as float32 tensors. The batch schedule is a pure function of
(data seed, iteration): minibatch indices, crop offsets, flips and the dropout seed at step t
never depend on what ran before, so a copy resumed or branched at t sees the identical batch.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from twophase_core.settings import plugins
from twophase_core.settings.config import ConfigError, TrainConfig
from twophase_core.settings.spec import shown


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor  # (N, C, ...) float32, normalised
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    image: bool  # 2-D images: crop/flip augmentation applies

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> Dataset:
        """Move every split to `device` once, so training and evaluation never copy again."""
        if self.x_train.device == device:
            return self
        return Dataset(self.name, self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                       self.y_test.to(device), self.num_classes, self.image)


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std of the training split, applied to both splits."""
    axes = (0,) + tuple(range(2, x_train.ndim))
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True) + 1e-8
    f = lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))
    return f(x_train), f(x_test)


def _split(x: np.ndarray, y: np.ndarray, n_test: int, seed: int = 0):
    perm = np.random.default_rng(seed).permutation(len(x))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def load_digits_data(root: str = "", download: bool = False, cache_dir: Path | None = None) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, shipped inside scikit-learn): 1437 train / 360 test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float64)[:, None] / 16.0
    xtr, ytr, xte, yte = _split(x, d.target, 360)
    xtr_t, xte_t = _standardise(xtr, xte)
    return Dataset("digits", xtr_t, torch.from_numpy(ytr).long(), xte_t, torch.from_numpy(yte).long(), 10, True)


MNIST1D_SHIPPED = Path(__file__).with_name("mnist1d-default.npz")  # make_dataset(get_dataset_args()), 1.5 MB
MNIST1D_SHA256 = "b0f999435ff5bed87babf1862f4455c6b989b45435b66a31c634ef9044a56922"


def _mnist1d_arrays(path: Path | None, sha256: str | None = None) -> dict[str, np.ndarray] | None:
    """The four arrays from an npz written by this module, or None if it is missing, unreadable or (with
    `sha256`) not the file it should be."""
    if path is None:
        return None
    try:
        raw = path.read_bytes()
        if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
            return None
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            return {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    except (OSError, ValueError, KeyError):
        return None


def load_mnist1d_data(root: str = "", download: bool = False, cache_dir: Path | None = None) -> Dataset:
    """MNIST-1D as the mnist1d package's make_dataset(get_dataset_args()) makes it (4000 train / 1000 test).

    Generating it takes 5-8 s of CPU, so the arrays ship with twophase (checked against their sha256, and
    against a fresh generation by the tests); were the shipped file damaged, they are generated again and kept
    in `cache_dir` (the data/ folder of the store the run was given). Nothing is downloaded.
    """
    d = _mnist1d_arrays(MNIST1D_SHIPPED, MNIST1D_SHA256)
    path = cache_dir / "mnist1d-default.npz" if cache_dir is not None else None
    if d is None:
        d = _mnist1d_arrays(path)
    if d is None:
        from mnist1d.data import get_dataset_args, make_dataset

        d = make_dataset(get_dataset_args())
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, x=np.asarray(d["x"]), y=np.asarray(d["y"]), x_test=np.asarray(d["x_test"]),
                     y_test=np.asarray(d["y_test"]))
            os.replace(tmp, path)
    xtr, xte = d["x"][:, None].astype(np.float64), d["x_test"][:, None].astype(np.float64)
    xtr_t, xte_t = _standardise(xtr, xte)
    return Dataset("mnist1d", xtr_t, torch.from_numpy(np.asarray(d["y"], dtype=np.int64)), xte_t,
                   torch.from_numpy(np.asarray(d["y_test"], dtype=np.int64)), 10, False)


CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class CifarBatchError(ValueError):
    """A file of cifar-10-batches-py that is not a CIFAR-10 batch: one line naming it, why, and what to do."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path} is not a CIFAR-10 batch ({why}); replace it with the original file")


class _ForeignGlobal(pickle.UnpicklingError):
    """The pickle asks for a global the CIFAR-10 format never holds (a planted payload, or not a batch)."""


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """`_codecs.encode` as pickle protocol 2 uses it to write bytes from python 3; no other codec is run."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _ForeignGlobal(f"it asks for _codecs.encode with {shown(encoding)}, which the format never holds")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """`bytes()`, as pickle protocol 2 writes b'' from python 3; never `bytes(n)`, which could ask for any size."""
    if args:
        raise _ForeignGlobal("it asks for bytes with arguments, which the format never holds")
    return b""


def _numpy_core(module: str) -> ModuleType:
    """numpy's `_core.<module>` (numpy 2), else `core.<module>` (numpy 1.x): never the deprecated alias of 2."""
    try:
        return importlib.import_module(f"numpy._core.{module}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{module}")


@functools.cache
def _cifar_globals() -> dict[tuple[str, str], object]:
    """Every global a CIFAR-10 batch may ask for, under the names numpy 1.x (the real files, from python 2)
    and numpy 2 write, and what each resolves to: numpy arrays, their dtypes and scalars, and bytes."""
    multiarray, numeric = _numpy_core("multiarray"), _numpy_core("numeric")
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_bytes,
        ("__builtin__", "bytes"): _empty_bytes, ("builtins", "bytes"): _empty_bytes}
    for core in ("numpy.core", "numpy._core"):
        table[f"{core}.multiarray", "_reconstruct"] = multiarray._reconstruct
        table[f"{core}.multiarray", "scalar"] = multiarray.scalar
        table[f"{core}.numeric", "_frombuffer"] = numeric._frombuffer  # numpy's own pickles at protocol 5
    return table


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR-10 python format holds (dicts, lists, str, bytes, int, numpy arrays):
    every other global, os.system or any class a planted pickle names, is refused before it is imported."""

    def find_class(self, module: str, name: str) -> object:
        found = _cifar_globals().get((module, name))
        if found is None:
            raise _ForeignGlobal(f"it asks for {shown(f'{module}.{name}')}, which the format never holds")
        return found


def _is_label(y: object, classes: int = 10) -> bool:
    return isinstance(y, int | np.integer) and not isinstance(y, bool) and bool(0 <= y < classes)


def _checked_batch(path: Path, d: object, key: str = "labels", classes: int = 10) -> tuple[np.ndarray, list[int]]:
    """(images (N, 3, 32, 32) uint8, labels) of an unpickled batch, after checking it has CIFAR's shape (labels
    under `key`: CIFAR-10's 'labels', CIFAR-100's 'fine_labels')."""
    if not isinstance(d, dict):
        raise CifarBatchError(path, f"it holds a {type(d).__name__}, not a dict")
    data, labels = (d.get(k, d.get(k.encode())) for k in ("data", key))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise CifarBatchError(path, "its data is not a uint8 array of rows of 3072 pixels")
    if not (isinstance(labels, list) and len(labels) == len(data) and all(_is_label(y, classes) for y in labels)):
        raise CifarBatchError(path, f"its {key} are not a list of {len(data)} whole numbers in 0..{classes - 1}")
    return data.reshape(-1, 3, 32, 32), [int(y) for y in labels]


def _read_cifar_batch(path: Path, key: str = "labels", classes: int = 10) -> tuple[np.ndarray, list[int]]:
    """One batch of the cifar-10-batches-py layout (python-2 pickles: latin1), read with the restricted
    unpickler and checked: a planted pickle's payload never runs, and is named instead."""
    with open(path, "rb") as f:
        try:
            d = _CifarUnpickler(f, encoding="latin1").load()
        except _ForeignGlobal as e:
            raise CifarBatchError(path, str(e)) from None
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged pickle fails in many ways; each is one line here
            raise CifarBatchError(path, "it does not unpickle: " + " ".join(f"{type(e).__name__}: {e}".split())[:200]
                                  ) from None
    return _checked_batch(path, d, key, classes)


def _data_root(root: str) -> str:
    """Where torchvision-format data lives: `root`, else $TWOPHASE_CIFAR_ROOT, else ~/data."""
    return root or os.environ.get("TWOPHASE_CIFAR_ROOT", "") or str(Path.home() / "data")


def load_cifar10_data(root: str = "", download: bool = False, cache_dir: Path | None = None) -> Dataset:
    """CIFAR-10 from `root`/cifar-10-batches-py (torchvision layout), downloaded only on request."""
    root = _data_root(root)
    folder = Path(root) / "cifar-10-batches-py"
    if not folder.is_dir():
        if not download:
            raise ConfigError("data_root", root, f"no CIFAR-10 at {folder}: point data_root at the folder holding "
                              "cifar-10-batches-py, or set download=True (needs internet)")
        _torchvision_datasets(folder, "data_batch_1..5 and test_batch (cifar-10-python.tar.gz's)").CIFAR10(
            root, train=True, download=True)
    try:
        parts = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
        xte, yte = _read_cifar_batch(folder / "test_batch")
    except CifarBatchError as e:
        raise ConfigError("data_root", root, str(e)) from None
    except OSError as e:
        raise ConfigError("data_root", root, f"CIFAR-10 at {folder} is unreadable ({e}); remove it and "
                          "download again") from e
    xtr = np.concatenate([p[0] for p in parts])
    ytr = [y for p in parts for y in p[1]]
    mean = np.array(CIFAR_MEAN).reshape(1, 3, 1, 1)
    std = np.array(CIFAR_STD).reshape(1, 3, 1, 1)
    f = lambda a: torch.from_numpy(((a / 255.0 - mean) / std).astype(np.float32))
    return Dataset("cifar10", f(xtr), torch.tensor(ytr).long(), f(xte), torch.tensor(yte).long(), 10, True)


def _torchvision_datasets(folder: Path, what: str) -> ModuleType:
    """torchvision.datasets, which only a download needs; where torchvision is missing or does not load beside this
    torch (an image built with a CPU torch and PyPI's torchvision), one line saying so and where the files go."""
    try:
        return importlib.import_module("torchvision.datasets")
    except Exception as e:  # noqa: BLE001 - ImportError, or RuntimeError 'operator torchvision::nms does not exist'
        said = " ".join(f"{type(e).__name__}: {e}".split())[:160]
        raise ConfigError("download", True, f"torchvision does not import here ({said}), and only a download needs "
                          f"it: put {what} in {folder} by hand") from None


def _download(name: str, root: str, download: bool, folder: Path, what: str) -> None:
    """torchvision's download of dataset `name` into `root` when asked and `folder` is missing; else one line
    saying where the files go."""
    if not download:
        raise ConfigError("data_root", root, f"no {name} at {folder}: put {what} there (torchvision's layout), point "
                          "data_root at the folder above it, or set download=True (needs internet)")
    tvd = _torchvision_datasets(folder, what)
    try:
        if name == "SVHN":
            for split in ("train", "test"):
                tvd.SVHN(root, split=split, download=True)
        else:
            getattr(tvd, name)(root, train=True, download=True)
    except Exception as e:  # noqa: BLE001 - no network, a proxy, a full disk: one line
        raise ConfigError("download", True, f"{name} could not be downloaded into {root} ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:160]}): put {what} in {folder} by hand") from None


MNIST_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
               "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format), plain or .gz: magic 0x0000080D (D dimensions), sizes, data."""
    import gzip

    found = path if path.exists() else path.with_name(path.name + ".gz")
    try:
        with (gzip.open(found, "rb") if found.suffix == ".gz" else open(found, "rb")) as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError("data_root", str(path.parent), f"{path.name} cannot be read: {e.strerror or e}") from None
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    if raw[:4] != bytes([0, 0, 8, dims]) or len(raw) != 4 + 4 * dims + int(np.prod(shape)):
        raise ConfigError("data_root", str(path.parent), f"{found.name} is not an IDX file of {dims}-D unsigned "
                          "bytes; replace it with the original")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _load_mnist_like(name: str, root: str, download: bool) -> Dataset:
    root = _data_root(root)
    folder = Path(root) / name / "raw"
    if not all((folder / f).exists() or (folder / f"{f}.gz").exists() for f in MNIST_FILES.values()):
        _download(name, root, download, folder, " and ".join(MNIST_FILES.values()) + " (or .gz)")
    x = {k: _read_idx(folder / f, 3 if k.startswith("x") else 1) for k, f in MNIST_FILES.items()}
    for split in ("train", "test"):
        if len(x[f"x_{split}"]) != len(x[f"y_{split}"]) or x[f"y_{split}"].max(initial=0) > 9:
            raise ConfigError("data_root", root, f"{name}'s {split} images and labels disagree (count, or labels "
                              "beyond 0..9): replace the files with the originals")
    xtr_t, xte_t = _standardise(x["x_train"][:, None] / 255.0, x["x_test"][:, None] / 255.0)
    return Dataset(name.lower(), xtr_t, torch.from_numpy(x["y_train"].astype(np.int64)), xte_t,
                   torch.from_numpy(x["y_test"].astype(np.int64)), 10, True)


def load_mnist_data(root: str = "", download: bool = False, cache_dir: Path | None = None) -> Dataset:
    """MNIST from `root`/MNIST/raw (torchvision's layout, IDX files plain or .gz): 60000 train / 10000 test."""
    return _load_mnist_like("MNIST", root, download)


def load_fashion_mnist_data(root: str = "", download: bool = False, cache_dir: Path | None = None) -> Dataset:
    """Fashion-MNIST from `root`/FashionMNIST/raw (torchvision's layout): 60000 train / 10000 test."""
    return _load_mnist_like("FashionMNIST", root, download)


def load_cifar100_data(root: str = "", download: bool = False, cache_dir: Path | None = None) -> Dataset:
    """CIFAR-100 (fine labels) from `root`/cifar-100-python: 50000 train / 10000 test, read with the restricted
    unpickler CIFAR-10 uses."""
    root = _data_root(root)
    folder = Path(root) / "cifar-100-python"
    if not ((folder / "train").exists() and (folder / "test").exists()):
        _download("CIFAR100", root, download, folder, "train and test")
    try:
        (xtr, ytr), (xte, yte) = (_read_cifar_batch(folder / f, "fine_labels", 100) for f in ("train", "test"))
    except CifarBatchError as e:
        raise ConfigError("data_root", root, str(e).replace("CIFAR-10", "CIFAR-100")) from None
    except OSError as e:
        raise ConfigError("data_root", root, f"CIFAR-100 at {folder} is unreadable ({e})") from e
    xtr_t, xte_t = _standardise(xtr / 255.0, xte / 255.0)
    return Dataset("cifar100", xtr_t, torch.tensor(ytr).long(), xte_t, torch.tensor(yte).long(), 100, True)


def load_svhn_data(root: str = "", download: bool = False, cache_dir: Path | None = None) -> Dataset:
    """SVHN (cropped digits) from `root`/train_32x32.mat and test_32x32.mat (torchvision's layout): 73257 train /
    26032 test; label 10 is the digit 0, as torchvision maps it."""
    from scipy.io import loadmat

    root = _data_root(root)
    folder = Path(root)
    if not ((folder / "train_32x32.mat").exists() and (folder / "test_32x32.mat").exists()):
        _download("SVHN", root, download, folder, "train_32x32.mat and test_32x32.mat")
    out = []
    for split in ("train", "test"):
        try:
            m = loadmat(folder / f"{split}_32x32.mat")
            x, y = m["X"], np.asarray(m["y"]).reshape(-1).astype(np.int64) % 10
        except Exception as e:  # noqa: BLE001 - a damaged .mat fails in many ways: one line
            raise ConfigError("data_root", root, f"{split}_32x32.mat is not SVHN's ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:120]}); replace it with the original") from None
        if not (isinstance(x, np.ndarray) and x.ndim == 4 and x.shape[:3] == (32, 32, 3) and x.shape[3] == len(y)):
            raise ConfigError("data_root", root, f"{split}_32x32.mat's X is not 32 x 32 x 3 x N images for its labels")
        out += [np.transpose(x, (3, 2, 0, 1)) / 255.0, y]
    xtr_t, xte_t = _standardise(out[0], out[2])
    return Dataset("svhn", xtr_t, torch.from_numpy(out[1]), xte_t, torch.from_numpy(out[3]), 10, True)


def load_synthetic_data(root: str = "", download: bool = False, cache_dir: Path | None = None) -> Dataset:
    """Tiny 3x8x8 Gaussian-cluster images, 4 classes (256 train / 128 test): for tests only."""
    rng = np.random.default_rng(1234)
    centres = rng.normal(size=(4, 3, 8, 8))
    def draw(n):
        y = np.arange(n) % 4
        return centres[y] + 1.5 * rng.normal(size=(n, 3, 8, 8)), y
    xtr, ytr = draw(256)
    xte, yte = draw(128)
    xtr_t, xte_t = _standardise(xtr, xte)
    return Dataset("synthetic", xtr_t, torch.from_numpy(ytr).long(), xte_t, torch.from_numpy(yte).long(), 4, True)


REGISTRY: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits_data,
    "mnist1d": load_mnist1d_data,
    "cifar10": load_cifar10_data,
    "synthetic": load_synthetic_data,
    "mnist": load_mnist_data,
    "fashion_mnist": load_fashion_mnist_data,
    "cifar100": load_cifar100_data,
    "svhn": load_svhn_data,
}


_LOADED: dict[tuple[str, str, bool], Dataset] = {}  # a dataset is loaded once per process, whatever the store


def _load_cached(name: str, root: str, download: bool, cache_dir: Path | None) -> Dataset:
    key = (name, root, download)
    if key not in _LOADED:
        if len(_LOADED) >= 4:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = REGISTRY[name](root, download, cache_dir)
    return _LOADED[key]


def clear_cache() -> None:
    """Forget the datasets loaded in this process (a cold-start measurement loads them again)."""
    _LOADED.clear()


def get_dataset(cfg: TrainConfig, cache_dir: Path | None = None) -> Dataset:
    """The dataset of a training config (loaded once per process), cut to train_size if set. `cache_dir`: where
    a generated dataset may keep its arrays between processes (the run's store gives its data/ folder). A plugin's
    loader gives its arrays as they are (checked, not standardised: `plugins.load_dataset`)."""
    if cfg.dataset in REGISTRY:
        ds = _load_cached(cfg.dataset, cfg.data_root, cfg.download, cache_dir)
    else:
        a = plugins.load_dataset(cfg.dataset, cfg.data_root)
        ds = Dataset(cfg.dataset, torch.from_numpy(a.x_train), torch.from_numpy(a.y_train), torch.from_numpy(a.x_test),
                     torch.from_numpy(a.y_test), a.classes, a.x_train.ndim == 4)
    if cfg.train_size:
        if cfg.train_size > len(ds.x_train):
            raise ConfigError("train_size", cfg.train_size, f"{cfg.dataset} has {len(ds.x_train)} training points")
        ds = Dataset(ds.name, ds.x_train[: cfg.train_size], ds.y_train[: cfg.train_size], ds.x_test, ds.y_test,
                     ds.num_classes, ds.image)
    if cfg.batch_size > len(ds.x_train):
        raise ConfigError("batch_size", cfg.batch_size, f"must be <= the {len(ds.x_train)} training points")
    return ds


# ---------------------------------------------------------------------------------------------
# SGD noise


@dataclass(frozen=True)
class BatchPlan:
    """Everything random about SGD iteration t."""

    indices: np.ndarray  # (B,) training indices
    shifts: np.ndarray | None  # (B, 2) crop offsets in [0, 2*pad], or None without augmentation
    flips: np.ndarray | None  # (B,) bool
    dropout_seed: int


class BatchSchedule:
    """SGD noise as a pure function of (data seed, iteration).

    Epoch e is a permutation drawn from SeedSequence([data_seed, e]); the batch at t is slice
    t mod (N // B) of it (the last partial batch is dropped, so every step has B points).
    """

    PAD = 4

    def __init__(self, n_train: int, batch_size: int, data_seed: int, augment: bool):
        self.n = n_train
        self.b = batch_size
        self.seed = data_seed
        self.augment = augment
        self.steps_per_epoch = max(1, n_train // batch_size)

    @functools.lru_cache(maxsize=2)  # noqa: B019 - one schedule per run; the cache dies with it
    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 0]).permutation(self.n)

    def plan(self, t: int) -> BatchPlan:
        e, k = divmod(t, self.steps_per_epoch)
        idx = self._perm(e)[k * self.b:(k + 1) * self.b]
        if not self.augment:  # the dropout seed is the only draw
            return BatchPlan(idx, None, None, _dropout_seed(self.seed, t))
        rng = np.random.default_rng([self.seed, t, 1])
        shifts = rng.integers(0, 2 * self.PAD + 1, size=(self.b, 2))
        flips = rng.random(self.b) < 0.5
        dropout_seed = int(rng.integers(0, 2**62))
        return BatchPlan(idx, shifts, flips, dropout_seed)

    def batch(self, ds: Dataset, t: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(x, y, dropout seed) of iteration t, on the dataset's device."""
        p = self.plan(t)
        idx = torch.from_numpy(p.indices)
        if idx.device != ds.x_train.device:
            idx = idx.to(ds.x_train.device)
        # index_select: the same rows as x[idx] (a copy either way), in half the time (7 against 15 us)
        x, y = ds.x_train.index_select(0, idx), ds.y_train.index_select(0, idx)
        if p.shifts is not None and p.flips is not None:  # (both or neither: augment)
            x = crop_flip(x, p.shifts, p.flips, self.PAD)
        return x, y, p.dropout_seed


# Iterations whose dropout seed a process keeps (about 200 bytes each): every trajectory of a run (its base run and
# each branch through t) and every run on the same data seed in this process (a sweep worker's points) draws it once.
DROPOUT_SEEDS_KEPT = 1 << 15


@functools.lru_cache(maxsize=DROPOUT_SEEDS_KEPT)
def _dropout_seed(data_seed: int, t: int) -> int:
    """The dropout seed of iteration t without augmentation: the first draw of SeedSequence([data_seed, t, 1]).

    Drawing it makes a SeedSequence and a PCG64 (20 us, 2% of the demo-sweep MLP's step); a branch from t0
    steps through the same iterations as its base run, so kept, it is drawn once per iteration, not once per
    trajectory.
    """
    return int(np.random.default_rng([data_seed, t, 1]).integers(0, 2**62))


def crop_flip(x: torch.Tensor, shifts: np.ndarray, flips: np.ndarray, pad: int) -> torch.Tensor:
    """Random crop (zero padding `pad`) and horizontal flip, vectorised over the batch."""
    b, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dev = x.device
    sh = torch.from_numpy(shifts).to(dev)
    rows = sh[:, 0:1] + torch.arange(h, device=dev)  # (B, H)
    cols = sh[:, 1:2] + torch.arange(w, device=dev)  # (B, W)
    fl = torch.from_numpy(flips).to(dev)
    cols = torch.where(fl[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def stratified_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n indices with classes as balanced as possible (round-robin over shuffled classes)."""
    rng = np.random.default_rng([seed, 2])
    yn = y.cpu().numpy()
    pools = [rng.permutation(np.flatnonzero(yn == c)).tolist() for c in np.unique(yn)]
    out: list[int] = []
    while len(out) < n:
        progressed = False
        for p in pools:
            if p and len(out) < n:
                out.append(p.pop())
                progressed = True
        if not progressed:
            raise ConfigError("n_samples", n, f"the training set has only {len(yn)} points")
    return torch.tensor(sorted(out), dtype=torch.long)
