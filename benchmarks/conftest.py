"""Benchmarks run in two modes: quick (inside `make test`, small sizes, few rounds) and full (`make bench`,
VLPKIT_BENCH_FULL=1, every size of the issue's grid)."""

from __future__ import annotations

import os

import pytest

FULL = os.environ.get("VLPKIT_BENCH_FULL") == "1"


@pytest.fixture(scope="session")
def full_mode() -> bool:
    return FULL


def pick(quick, full):
    """Choose a parameter grid by mode: `quick` inside `make test`, `full` under `make bench`."""
    return full if FULL else quick
