"""Checkpoint directories (atomic commit, `latest`, keep-last-N) and RNG state capture/restore."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from vlpkit.engine import (
    CheckpointManager,
    capture_rng_state,
    resolve_checkpoint,
    restore_rng_state,
    seed_everything,
)
from vlpkit.engine.state import LATEST_NAME, TRAINER_STATE_NAME, load_torch, save_torch


def _save(mgr: CheckpointManager, step: int) -> None:
    staging = mgr.stage(step)
    save_torch({"step": step}, staging / TRAINER_STATE_NAME)
    mgr.commit(step)


def test_keep_last_and_latest_pointer(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    assert mgr.latest() is None
    for step in range(1, 6):
        _save(mgr, step)
        assert mgr.latest() == mgr.path(step)
        assert (mgr.root / LATEST_NAME).read_text().strip() == f"step_{step:08d}"
    assert mgr.steps() == [4, 5]
    assert load_torch(mgr.latest() / TRAINER_STATE_NAME) == {"step": 5}
    keep_all = CheckpointManager(tmp_path / "all", keep_last=0)
    for step in range(1, 5):
        _save(keep_all, step)
    assert keep_all.steps() == [1, 2, 3, 4]


def test_crash_while_writing_leaves_previous_checkpoints(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    _save(mgr, 1)
    _save(mgr, 2)
    staging = mgr.stage(3)  # the process dies while writing step 3
    (staging / TRAINER_STATE_NAME).write_bytes(b"half a file")
    assert mgr.steps() == [1, 2] and mgr.latest() == mgr.path(2)
    assert resolve_checkpoint(tmp_path) == mgr.path(2)
    _save(mgr, 3)  # the next run overwrites the stale staging directory
    assert load_torch(mgr.path(3) / TRAINER_STATE_NAME) == {"step": 3}
    assert not any(p.name.startswith(".") for p in mgr.root.iterdir())


def test_latest_falls_back_to_highest_step_when_pointer_is_stale_or_broken(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=0)
    for step in (1, 2, 3):
        _save(mgr, step)
    (mgr.root / LATEST_NAME).write_text("step_00000002\n")  # crash between the rename and the pointer update
    assert mgr.latest() == mgr.path(3)
    (mgr.root / LATEST_NAME).write_text("garbage")
    assert mgr.latest() == mgr.path(3)


def test_commit_same_step_twice_replaces(tmp_path):
    mgr = CheckpointManager(tmp_path)
    _save(mgr, 4)
    staging = mgr.stage(4)
    save_torch({"step": 4, "again": 1}, staging / TRAINER_STATE_NAME)
    mgr.commit(4)
    assert load_torch(mgr.path(4) / TRAINER_STATE_NAME) == {"step": 4, "again": 1}
    with pytest.raises(FileNotFoundError, match="no staged checkpoint for step 9"):
        mgr.commit(9)


def test_resolve_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        resolve_checkpoint(tmp_path)
    mgr = CheckpointManager(tmp_path)
    _save(mgr, 7)
    assert resolve_checkpoint(mgr.path(7)) == mgr.path(7)


def _draw():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())


def test_rng_state_roundtrips_through_weights_only_load():
    seed_everything(11)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    np.random.randn()  # and in NumPy's
    state = capture_rng_state()
    expected = _draw()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    _draw()  # move every generator on
    restore_rng_state(loaded)
    assert _draw() == expected
    with pytest.raises(KeyError, match="numpy"):
        restore_rng_state({"python": loaded["python"], "torch": loaded["torch"], "cuda": []})


def test_seed_everything_offsets_by_process_and_sets_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        assert seed_everything(3, process_index=2) == 5
        a = torch.rand(4)
        torch.manual_seed(5)
        assert torch.equal(a, torch.rand(4))
        seed_everything(3, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)
