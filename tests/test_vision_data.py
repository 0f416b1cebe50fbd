"""Datasets in torchvision's formats by name (mnist, fashion_mnist, cifar100, svhn) read from data_root: small
files written here in each format (nothing is downloaded), read back to the pixels written, standardised per
channel by the training split; a missing folder says in one line where the files go."""

from __future__ import annotations

import gzip
import pickle
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from twophase_core.interfaces.cli import main
from twophase_core.science.data import get_dataset
from twophase_core.settings import config as conf

RNG = np.random.default_rng(7)


def _idx(path: Path, a: np.ndarray, gz: bool) -> None:
    blob = bytes([0, 0, 8, a.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in a.shape) + a.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def _mnist(root: Path, name: str) -> tuple[np.ndarray, ...]:
    xtr, xte = (RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for n in (12, 5))
    ytr, yte = RNG.integers(0, 10, 12, dtype=np.uint8), RNG.integers(0, 10, 5, dtype=np.uint8)
    raw = root / name / "raw"
    _idx(raw / "train-images-idx3-ubyte", xtr, gz=False)
    _idx(raw / "train-labels-idx1-ubyte", ytr, gz=False)
    _idx(raw / "t10k-images-idx3-ubyte", xte, gz=True)  # torchvision keeps the .gz beside, or only it
    _idx(raw / "t10k-labels-idx1-ubyte", yte, gz=True)
    return xtr[:, None], ytr, xte[:, None], yte


def _cifar100(root: Path) -> tuple[np.ndarray, ...]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = []
    for split, n in (("train", 10), ("test", 4)):
        data, labels = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8), [int(v) for v in RNG.integers(0, 100, n)]
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0] * n}, f, protocol=2)
        out += [data.reshape(n, 3, 32, 32), np.array(labels)]
    return tuple(out)


def _svhn(root: Path) -> tuple[np.ndarray, ...]:
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    out = []
    for split, n in (("train", 9), ("test", 3)):
        x = RNG.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = np.array([10, *RNG.integers(1, 10, n - 1)], dtype=np.uint8)[:, None]  # SVHN writes the digit 0 as 10
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        out += [np.transpose(x, (3, 2, 0, 1)), y[:, 0] % 10]
    return tuple(out)


@pytest.mark.parametrize(("dataset", "write", "classes"), [
    ("mnist", lambda r: _mnist(r, "MNIST"), 10), ("fashion_mnist", lambda r: _mnist(r, "FashionMNIST"), 10),
    ("cifar100", _cifar100, 100), ("svhn", _svhn, 10),
])
def test_each_format_reads_back_the_pixels_and_labels_written(tmp_path, dataset, write, classes):
    xtr, ytr, xte, yte = write(tmp_path)
    ds = get_dataset(conf.TrainConfig(dataset=dataset, model="cnn", batch_size=2, data_root=str(tmp_path)))
    mean = (xtr / 255.0).mean(axis=(0, 2, 3), keepdims=True)
    std = (xtr / 255.0).std(axis=(0, 2, 3), keepdims=True) + 1e-8
    np.testing.assert_allclose(ds.x_train.numpy(), (xtr / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_test.numpy(), (xte / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    assert ds.y_train.tolist() == ytr.tolist() and ds.y_test.tolist() == yte.tolist()
    assert ds.num_classes == classes and ds.input_shape == conf.SHAPES[dataset][0] and ds.image
    if dataset == "svhn":
        assert ds.y_train[0] == 0  # the 10 SVHN writes for the digit 0


@pytest.mark.parametrize(("dataset", "where"), [
    ("mnist", "MNIST/raw: put train-images-idx3-ubyte and"), ("fashion_mnist", "FashionMNIST/raw"),
    ("cifar100", "cifar-100-python: put train and test there"), ("svhn", "put train_32x32.mat and test_32x32.mat"),
])
def test_a_missing_folder_says_in_one_line_where_the_files_go(tmp_path, capsys, dataset, where):
    code = main(["chaos", "--preset", "tiny", "--dataset", dataset, "--model", "mlp", "--data-root", str(tmp_path),
                 "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("twophase: error: data_root="), err
    assert where in err and "download=True (needs internet)" in err, err


def test_a_planted_cifar100_pickle_never_runs(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()

    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    for split in ("train", "test"):
        with open(folder / split, "wb") as f:
            pickle.dump({"data": Payload()}, f)
    with pytest.raises(conf.ConfigError, match="asks for 'pathlib.*which the format never holds"):
        get_dataset(conf.TrainConfig(dataset="cifar100", model="cnn", data_root=str(tmp_path)))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("dataset", "where"), [("cifar10", "data_batch_1..5 and test_batch"),
                                                ("mnist", "train-images-idx3-ubyte"), ("svhn", "train_32x32.mat")])
def test_a_download_without_a_loadable_torchvision_says_so_in_one_line(tmp_path, capsys, monkeypatch, dataset, where):
    # None in sys.modules: `import torchvision` raises ImportError, as in an image whose torchvision was removed
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    # and should that ever stop blocking it, this test still cannot download: tests run offline
    def offline(self, address):
        raise AssertionError(f"a test tried to reach {address}: tests never download")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(socket.socket, "connect_ex", offline)
    code = main(["chaos", "--preset", "tiny", "--dataset", dataset, "--model", "mlp", "--data-root", str(tmp_path),
                 "--download", "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("twophase: error: download="), err
    assert "torchvision does not import here (ModuleNotFoundError" in err and where in err, err


def test_cifar10_from_a_folder_never_imports_torchvision(tmp_path, monkeypatch):
    # the Docker image built with a CPU torch wheel has no torchvision (tests/test_docker.py runs this path there)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": RNG.integers(0, 256, size=(2, 3072), dtype=np.uint8), b"labels": [3, 7]}, f)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    ds = get_dataset(conf.TrainConfig(dataset="cifar10", model="cnn", batch_size=2, data_root=str(tmp_path)))
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.y_test.tolist() == [3, 7]
