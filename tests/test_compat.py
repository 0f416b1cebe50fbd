"""What must never move when the code does: every preset's config hash and trajectory key, the bits of
the tiny results, and a store written before (tests/data/store-v1: the tiny results' index, as the
version of 2026-12-07 left it) served as it is. Golden values in tests/data/golden.json were written by
that version; a change here means stored results would be recomputed or, worse, mismatched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from twophase_core.execution.run import run_experiment
from twophase_core.experiments.presets import PRESETS, preset
from twophase_core.experiments.result import load_result
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store

DATA = Path(__file__).parent / "data"
GOLDEN = json.loads((DATA / "golden.json").read_text())
KINDS = ("chaos", "cone", "linear")


def _digest(v: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(v).tobytes() + str(v.dtype).encode() + str(v.shape).encode()
                          ).hexdigest()[:16]


def test_every_presets_config_hash_and_trajectory_key_stay_as_they_were():
    for name in PRESETS:
        for kind in KINDS:
            cfg = preset(name, kind)
            assert conf.config_hash(cfg) == GOLDEN["hashes"][f"{name}/{kind}"], (name, kind)
            assert cfg.train.trajectory_key() == GOLDEN["trajectories"][f"{name}/{kind}"], (name, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_results_keep_their_bits_and_a_store_from_before_serves_them(tmp_path, kind):
    fresh = run_experiment(preset("tiny", kind), Store(tmp_path / "fresh"))
    assert {k: _digest(v) for k, v in fresh.arrays.items()} == GOLDEN["arrays"][kind]
    shutil.copytree(DATA / "store-v1", tmp_path / "old")
    old = load_result(Store(tmp_path / "old"), kind, conf.config_hash(preset("tiny", kind)))
    assert old is not None, "the result stored before is not found under its hash"
    assert {k: _digest(v) for k, v in old.arrays.items()} == GOLDEN["arrays"][kind]
