"""The gallery: results that ship inside the package, so that a fresh install, the Docker image and an empty store
show the demo's phenomena at once, with nothing to train.

Each entry is a real result of the engine, computed by `twophase gallery build` and kept here as a file (the npz
form the store keeps results in) listed in entries.json with its config, hash, the engine's version, the platform
it was computed on and the command that makes it. `twophase gallery verify` computes every entry again and
compares: bit for bit where the platform is the one it was built on (CPU training here is deterministic for one
torch thread); elsewhere to a stated tolerance, and it says which. `seed(store)` puts the entries an empty store
lacks into it, so the app serves them like any stored result (their metadata says where they came from).

Reading entries and seeding a store import neither torch nor Streamlit: the app's process does both.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twophase_core import __version__
from twophase_core.experiments import registry
from twophase_core.experiments.presets import preset, sweep_replicates
from twophase_core.experiments.reproduce import command_for, sweep_command
from twophase_core.experiments.result import Result, load_result, result_key, save_result
from twophase_core.experiments.sweep import Sweep, expand, sweep_key
from twophase_core.settings import config as conf
from twophase_core.storage.records import pack_arrays, sha_hex, unpack_arrays
from twophase_core.storage.store import Store

FOLDER = Path(__file__).resolve().parent
INDEX = FOLDER / "entries.json"
ENV_GALLERY = "TWOPHASE_GALLERY"  # 0: the app leaves an empty store empty (a researcher's own store, a benchmark)
TOLERANCE = {"rtol": 1e-4, "atol": 1e-7}  # another platform: float32 training agrees to about this, not to the bit


def demo_sweep(kind: str) -> Sweep:
    """The demo-sweep preset's sweep of `kind` with its replicates, as `twophase sweep KIND --preset demo-sweep`."""
    return Sweep(preset("demo-sweep", kind), replicates=sweep_replicates("demo-sweep"))


# What the gallery holds: single runs by name, and sweeps (each point an entry of its own)
RUNS = {"demo-chaos": ("demo", "chaos"), "demo-cone": ("demo", "cone"), "demo-linear": ("demo", "linear")}
SWEEPS = {"demo-sweep-chaos": "chaos", "demo-sweep-cone": "cone"}


@dataclass(frozen=True)
class Entry:
    """One result of the gallery: where its file is, what made it, and on which platform."""

    name: str
    kind: str
    hash: str
    config: dict[str, Any]
    file: str
    sha256: str
    bytes: int
    command: str
    version: str
    built: str
    platform: dict[str, str]
    sweep: str = ""  # the sweep (its id) this entry is a point of; '' for a single run

    @property
    def run_id(self) -> str:
        return f"{self.kind}-{self.hash}"


@dataclass
class Gallery:
    """Everything entries.json lists: the entries, and the sweeps whose points they are."""

    entries: list[Entry] = field(default_factory=list)
    sweeps: dict[str, dict[str, Any]] = field(default_factory=dict)  # sweep id -> {"name", "sweep", "runs"}

    def named(self, name: str) -> list[Entry]:
        """The entry of a single run, or every point of a sweep, by its gallery name."""
        ids = {rec["name"]: sid for sid, rec in self.sweeps.items()}
        return [e for e in self.entries if e.name == name or (name in ids and e.sweep == ids[name])]


def read(folder: Path = FOLDER) -> Gallery:
    """The gallery as shipped (empty if it was never built)."""
    index = folder / "entries.json"
    if not index.is_file():
        return Gallery()
    d = json.loads(index.read_text())
    return Gallery([Entry(**e) for e in d["entries"]], d.get("sweeps", {}))


def load(entry: Entry, folder: Path = FOLDER) -> Result:
    """The entry's result, its file checked against the sha256 the index holds (a damaged file is an error)."""
    data = (folder / entry.file).read_bytes()
    if sha_hex(data) != entry.sha256:
        raise ValueError(f"gallery file {folder / entry.file} does not match its checksum: reinstall twophase")
    arrays, meta = unpack_arrays(data)
    meta.pop("kind", None)
    return Result(entry.kind, meta.pop("config"), meta.pop("hash"), arrays, meta)


def wanted() -> bool:
    """Whether the app seeds an empty store: yes unless $TWOPHASE_GALLERY is 0 (or false, no, off)."""
    return os.environ.get(ENV_GALLERY, "1").strip().lower() not in ("0", "false", "no", "off")


def seed(store: Store, folder: Path = FOLDER, force: bool = False) -> list[str]:
    """Fill an empty store with the gallery (its results and each gallery sweep's record), so the app serves them
    like any result; returns the run ids added. A store that holds anything already (results, jobs, notes,
    sweeps) is left as it is, so a researcher's runs are not mixed with the demo's, unless `force`; a stored
    result is never replaced."""
    if store.keys("") and not force:  # results, jobs, notes or sweeps: not an empty store
        return []
    present = set(store.keys("result/"))
    gallery, added = read(folder), []
    for e in gallery.entries:
        if result_key(e.kind, e.hash) not in present:
            r = load(e, folder)
            r.meta["gallery"] = {"name": e.name, "built": e.built, "version": e.version, "command": e.command}
            save_result(store, r)
            added.append(e.run_id)
    for sid, rec in gallery.sweeps.items():
        if store.get_json(sweep_key(sid)) is None:
            store.put_json(sweep_key(sid), {"id": sid, "sweep": rec["sweep"], "runs": rec["runs"],
                                            "created": rec["created"]})
    return added


# ---------------------------------------------------------------------------------------------
# Building and verifying (these train: torch is imported where they run)


def fingerprint() -> dict[str, str]:
    """What the bits of a CPU result depend on besides the config: library versions, the machine, the threads."""
    import torch

    return {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "threads": str(torch.get_num_threads())}


def _configs(names: Iterable[str] | None) -> list[tuple[str, Any, str, str]]:
    """(entry name, config, command, sweep id) of everything the gallery holds (or the names given)."""
    wanted = set(names) if names is not None else set(RUNS) | set(SWEEPS)
    unknown = wanted - set(RUNS) - set(SWEEPS)
    if unknown:
        raise conf.ConfigError("gallery entry", ", ".join(sorted(unknown)),
                               f"choose from {', '.join([*RUNS, *SWEEPS])}")
    out = []
    for name, (pre, kind) in RUNS.items():
        if name in wanted:
            cfg = preset(pre, kind)
            out.append((name, cfg, command_for(cfg, pre, json_out=None), ""))
    for name, kind in SWEEPS.items():
        if name in wanted:
            sweep = demo_sweep(kind)
            for p in expand(sweep):
                out.append((name, p.config, sweep_command(sweep, "demo-sweep"), sweep.id()))
    return out


def _compute(cfg: Any, root: Path) -> Result:
    from twophase_core.execution.run import run_experiment
    from twophase_core.science.train import configure_threads

    configure_threads()
    return run_experiment(cfg, Store(root), executor="local")


def build(names: Iterable[str] | None = None, folder: Path = FOLDER,
          say: Callable[[str], None] = lambda s: None) -> Gallery:
    """Compute the entries (all, or those named) from an empty store and write their files and the index."""
    old = read(folder)
    built = {(e.name, e.hash): e for e in old.entries}
    sweeps = dict(old.sweeps)
    plat = fingerprint()
    with tempfile.TemporaryDirectory() as tmp:
        for n, (name, cfg, command, sid) in enumerate(_configs(names)):
            started = time.time()
            # a single run from an empty store, so its time is what a class waits for a variant of it; a sweep's
            # points share one store (a replicate's chaos and cone share their base run, as in a real sweep)
            r = _compute(cfg, Path(tmp) / (f"sweep-{sid}" if sid else f"run-{n}"))
            data = pack_arrays(r.arrays, {**r.meta, "kind": r.kind, "config": r.config, "hash": r.hash})
            file = f"{name}-{r.hash}.npz" if sid else f"{name}.npz"
            (folder / file).write_bytes(data)
            e = Entry(name, r.kind, r.hash, r.config, file, sha_hex(data), len(data), command, __version__,
                      time.strftime("%Y-%m-%d"), plat, sid)
            built[(name, r.hash)] = e
            if sid:
                rec = sweeps.setdefault(sid, {"name": name, "sweep": demo_sweep(r.kind).to_dict(), "runs": [],
                                              "created": time.time()})
                if e.run_id not in rec["runs"]:
                    rec["runs"].append(e.run_id)
            say(f"{name}: {e.run_id} in {time.time() - started:.0f} s, {len(data):,} bytes")
    gallery = Gallery(sorted(built.values(), key=lambda e: (e.name, e.hash)), sweeps)
    (folder / "entries.json").write_text(json.dumps({"entries": [asdict(e) for e in gallery.entries],
                                                     "sweeps": gallery.sweeps}, indent=1, sort_keys=True) + "\n")
    return gallery


@dataclass(frozen=True)
class Verdict:
    """How one recomputed entry compares with the shipped one."""

    name: str
    run_id: str
    exact: bool  # compared bit for bit (this is the platform it was built on), else to TOLERANCE
    same: bool
    worst: str  # the array that differs most, and by how much ('' when identical)

    def line(self) -> str:
        how = ("bit for bit" if self.exact else
               f"to rtol={TOLERANCE['rtol']:g}, atol={TOLERANCE['atol']:g} (built on another platform)")
        worst = f"; {self.worst}" if self.worst else ""
        return f"{'ok  ' if self.same else 'FAIL'} {self.name} {self.run_id}: {how}{worst}"


def compare(shipped: Result, fresh: Result, exact: bool) -> tuple[bool, str]:
    """Whether two results hold the same arrays (bit for bit, or to TOLERANCE), and the worst difference."""
    if set(shipped.arrays) != set(fresh.arrays):
        return False, f"arrays differ: {sorted(set(shipped.arrays) ^ set(fresh.arrays))}"
    worst, worst_diff, same = "", 0.0, True
    for k in sorted(shipped.arrays):
        a, b = np.asarray(shipped.arrays[k]), np.asarray(fresh.arrays[k])
        if a.shape != b.shape or a.dtype != b.dtype:
            return False, f"{k}: shape or dtype differs ({a.shape} {a.dtype} vs {b.shape} {b.dtype})"
        if exact:
            ok = a.tobytes() == b.tobytes()
        else:
            ok = bool(np.allclose(a, b, equal_nan=True, **TOLERANCE)) if a.dtype.kind in "fc" else np.array_equal(a, b)
        if not ok:
            same = False
            diff = float(np.nanmax(np.abs(a.astype(float) - b.astype(float)))) if a.dtype.kind in "fiuc" else np.inf
            if diff >= worst_diff:
                worst, worst_diff = f"{k} differs by up to {diff:.3g}", diff
    return same, worst


def verify(names: Iterable[str] | None = None, folder: Path = FOLDER,
           say: Callable[[str], None] = lambda s: None) -> list[Verdict]:
    """Compute the entries (all, or those named) again from an empty store and compare with the shipped ones."""
    gallery = read(folder)
    wanted = set(names) if names is not None else {e.name for e in gallery.entries}
    plat = fingerprint()
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        for e in [e for e in gallery.entries if e.name in wanted]:
            fresh = _compute(registry.config_from_dict(e.kind, e.config), Path(tmp))
            exact = e.platform == plat
            same, worst = compare(load(e, folder), fresh, exact)
            v = Verdict(e.name, e.run_id, exact, same, worst)
            say(v.line())
            verdicts.append(v)
    return verdicts


def stored_result(store: Store, name: str, folder: Path = FOLDER) -> Result | None:
    """A single-run entry as the store holds it (seeded, or computed there), else from the gallery's file."""
    entries = [e for e in read(folder).entries if e.name == name and not e.sweep]
    if not entries:
        return None
    e = entries[0]
    return load_result(store, e.kind, e.hash) or load(e, folder)


def size(folder: Path = FOLDER) -> int:
    """Bytes the gallery's files take (the index included)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".npz", ".json"))

