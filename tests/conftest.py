"""Shared fixtures: every test gets its own result store; torch stays on one thread."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def store(tmp_path, monkeypatch):
    from twophase_core.store import Store

    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(tmp_path / "cache"))
    s = Store(tmp_path / "cache")
    yield s
    s.close()
