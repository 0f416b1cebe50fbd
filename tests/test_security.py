"""What twophase reads from outside is checked before it is trusted, and a plain start of the app is not
open to the network: CIFAR-10 batches go through a restricted unpickler (a planted pickle never runs),
and `.streamlit/config.toml` binds loopback unless a flag or STREAMLIT_SERVER_ADDRESS says otherwise."""

import contextlib
import ipaddress
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from waiting import free_port, stop, wait_healthy

from twophase_core.interfaces.cli import main
from twophase_core.science.data import load_cifar10_data
from twophase_core.settings.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
PIXELS = 3072


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as python 2's cPickle wrote its str (SHORT_BINSTRING / BINSTRING): the real CIFAR-10 files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def _py2_numpy1(obj: Any) -> bytes:
    """`obj` pickled as python 2 with numpy 1.x wrote it (protocol 2, numpy.core's module names)."""
    out = BytesIO()
    _Py2Pickler(out, protocol=2).dump(obj)
    return out.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _py3_protocol2(obj: Any) -> bytes:
    """`obj` as python 3 writes protocol 2: its bytes through _codecs.encode, numpy 2's module names."""
    return pickle.dumps(obj, protocol=2)


def _batch(first: int, n: int = 2) -> dict[bytes, Any]:
    """A CIFAR-10 batch of n images: image k has every pixel of channel c at first + 10*k + c; label first/20 + k."""
    data = np.repeat((first + 10 * np.arange(n)[:, None] + np.arange(3)[None]).astype(np.uint8), PIXELS // 3, axis=1)
    return {b"batch_label": b"training batch 1 of 5", b"labels": [first // 20 + k for k in range(n)],
            b"data": data, b"filenames": [f"img_{first + k}.png".encode() for k in range(n)]}


def _folder(root: Path, write: Callable[[Any], bytes] = _py3_protocol2) -> Path:
    """root/cifar-10-batches-py with six valid batches (data_batch_i starts at 20*i, test_batch at 0)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate(BATCHES, start=1):
        (folder / name).write_bytes(write(_batch(20 * i if name != "test_batch" else 0)))
    return folder


class _Payload:
    """What a planted pickle does: call `fn(*args)` the moment it is unpickled."""

    def __init__(self, fn: Callable[..., Any], *args: Any):
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.fn, self.args


PAYLOADS = {
    "os.system": (lambda marker: _Payload(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
    # protocol 2 writes builtins under their python 2 name, as the message says
    "builtins.exec": (lambda marker: _Payload(exec, f"open({str(marker)!r}, 'w').close()"), "__builtin__.exec"),
}


@pytest.mark.parametrize("write", [_py2_numpy1, _py3_protocol2], ids=["python2-numpy1", "python3-protocol2"])
def test_batches_written_like_the_originals_load_to_their_arrays(tmp_path, write):
    _folder(tmp_path, write)
    ds = load_cifar10_data(str(tmp_path))
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (2, 3, 32, 32)
    assert ds.y_train.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6] and ds.y_test.tolist() == [0, 1]
    # data_batch_2, image 1, channel 2: every pixel is 40 + 10 + 2 = 52, normalised by CIFAR-10's blue mean/std
    assert ds.x_train[3, 2].unique().tolist() == pytest.approx([(52 / 255 - 0.4465) / 0.2616], rel=1e-6)
    assert ds.x_test[0, 0].unique().tolist() == pytest.approx([(0 - 0.4914) / 0.2470], rel=1e-6)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_an_array_pickled_by_numpy_itself_loads(tmp_path, protocol):
    folder = _folder(tmp_path)
    pixels = np.arange(2 * PIXELS, dtype=np.uint64).reshape(2, PIXELS) % 251
    batch = {"data": pixels.astype(np.uint8), "labels": [np.int64(7), np.int64(3)]}  # numpy scalars, too
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    ds = load_cifar10_data(str(tmp_path))
    assert ds.y_test.tolist() == [7, 3]
    # pixel 250 of image 0 is 250 % 251 = 250 (channel 0, row 7, column 26); of image 1, (3072 + 250) % 251 = 59
    assert float(ds.x_test[0, 0, 7, 26]) == pytest.approx((250 / 255 - 0.4914) / 0.2470, rel=1e-6)
    assert float(ds.x_test[1, 0, 7, 26]) == pytest.approx((59 / 255 - 0.4914) / 0.2470, rel=1e-6)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_planted_payload_never_runs_and_the_error_names_its_file(tmp_path, payload):
    make, asks_for = PAYLOADS[payload]
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(make(control), protocol=2))  # the payload is live: a plain unpickler runs it
    assert control.exists()
    folder = _folder(tmp_path / "data")
    marker = tmp_path / "marker"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": make(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(ConfigError) as e:
        load_cifar10_data(str(tmp_path / "data"))
    assert not marker.exists()
    assert e.value.field == "data_root"
    assert e.value.allowed == (f"{folder / 'data_batch_3'} is not a CIFAR-10 batch (it asks for '{asks_for}', "
                               "which the format never holds); replace it with the original file")


def test_the_cli_with_a_planted_batch_ends_with_one_line_and_exit_2(tmp_path, capsys):
    folder = _folder(tmp_path / "data")
    marker = tmp_path / "marker"
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": PAYLOADS["os.system"][0](marker)}, protocol=2))
    rc = main(["chaos", "--preset", "tiny", "--dataset", "cifar10", "--data-root", str(tmp_path / "data"),
               "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not marker.exists()
    assert len(err) == 1 and err[0].startswith("twophase: error: data_root=")
    assert f"{folder / 'data_batch_1'} is not a CIFAR-10 batch (it asks for" in err[0]


@pytest.mark.parametrize("content, why", [
    (b"", "it does not unpickle: EOFError"),
    (b"\x80\x02K", "it does not unpickle: UnpicklingError"),
    (pickle.dumps([1, 2]), "it holds a list, not a dict"),
    (pickle.dumps({"data": np.zeros((1, PIXELS)), "labels": [0]}), "its data is not a uint8 array"),
    (pickle.dumps({"data": np.zeros((1, 3071), np.uint8), "labels": [0]}), "its data is not a uint8 array"),
    (pickle.dumps({"data": np.zeros((2, PIXELS), np.uint8), "labels": [0]}), "its labels are not a list of 2"),
    (pickle.dumps({"data": np.zeros((1, PIXELS), np.uint8), "labels": [10]}), "its labels are not a list of 1"),
    (pickle.dumps({"data": np.zeros((1, PIXELS), np.uint8), "labels": [True]}), "its labels are not a list of 1"),
    (pickle.dumps({b"data": np.zeros((1, PIXELS), np.uint8), b"labels": [0]}, protocol=2).replace(
        b"latin1", b"rot_13"), "it asks for _codecs.encode with 'rot_13'"),
], ids=["empty", "truncated", "list", "float-data", "short-rows", "too-few-labels", "label-10", "bool-label",
        "codec"])
def test_a_batch_not_shaped_like_cifar10_is_named_in_one_line(tmp_path, content, why):
    folder = _folder(tmp_path)
    (folder / "test_batch").write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_cifar10_data(str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and f"{folder / 'test_batch'} is not a CIFAR-10 batch ({why}" in msg


# ---------------------------------------------------------------------------------------------
# where a plain `streamlit run app.py` listens


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # a descriptor closed while listed
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    return inodes


def _listening(pid: int, port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses that process `pid`'s sockets listen on at `port`, read from /proc/net/tcp and tcp6."""
    inodes = _socket_inodes(pid)
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            addr, hex_port = cols[1].split(":")
            if cols[3] == "0A" and int(hex_port, 16) == port and cols[9] in inodes:  # 0A: LISTEN
                raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, len(addr), 8))  # host order
                found.add(ipaddress.ip_address(raw))
    return found


def _serve(tmp_path: Path, *flags: str, **env: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Start `streamlit run app.py` from the repository root as a user would (no STREAMLIT_* variables but `env`,
    no flags but `flags`), wait until it answers on 127.0.0.1, and return where it listens; stop it."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "streamlit"), "run", "app.py", "--server.port", str(port),
         "--server.headless", "true", *flags], cwd=ROOT,
        env={**clean, "TWOPHASE_CACHE_DIR": str(tmp_path / "cache"), **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=60)
        return _listening(proc.pid, port)
    finally:
        stop(proc)


needs_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp (Linux)")


@needs_proc
def test_a_plain_streamlit_run_listens_on_loopback_only(tmp_path):
    assert _serve(tmp_path) == {ipaddress.ip_address("127.0.0.1")}


@needs_proc
@pytest.mark.parametrize("flags, env", [
    ((), {"STREAMLIT_SERVER_ADDRESS": "0.0.0.0"}),  # the Docker image
    (("--server.address", "0.0.0.0"), {}),  # make run HOST=0.0.0.0
], ids=["environment", "flag"])
def test_an_address_from_the_environment_or_a_flag_overrides_config_toml(tmp_path, flags, env):
    assert _serve(tmp_path, *flags, **env) == {ipaddress.ip_address("0.0.0.0")}
