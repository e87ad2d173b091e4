"""Shared test fixtures: seeded torch, single-threaded CPU, and the real-data samples in ../shared/realdata."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
REALDATA = REPO_ROOT.parent / "shared" / "realdata"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def realdata() -> Path:
    """Path to ../shared/realdata (real annotation samples); skips the test when the folder is absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"real-data samples not found at {REALDATA} (the read-only shared/ folder beside the repo)")
    return REALDATA


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked `slow` run only with VLPKIT_SLOW=1 (`make test` stays within its time budget)."""
    if os.environ.get("VLPKIT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set VLPKIT_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
