"""The run folder under attack (docs/reliability.md, "Run folders"): a second run into a locked folder, a stale lock
left by a killed run, a folder that cannot be written or is full, damaged checkpoints (truncated, overwritten,
flipped bytes) found by their checksums and skipped for the newest intact one, and weights files that name
themselves when they cannot be read."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from accelerate.state import AcceleratorState
from torch import nn
from torch.utils.data import Dataset

from vlpkit.checkpoint import CorruptFileError, load_weights, save_weights
from vlpkit.engine import Trainer, TrainerConfig
from vlpkit.engine.run_dir import LOCK_NAME, RunDirError, RunLock, check_writable
from vlpkit.engine.state import (
    CHECKSUMS_NAME,
    TRAINER_STATE_NAME,
    CheckpointManager,
    CorruptCheckpointError,
    load_torch,
    resolve_checkpoint,
    verify_checkpoint,
)


class Data(Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        x = torch.randn(4, generator=g)
        return {"x": x, "y": x.sum(0, keepdim=True)}


def loss_fn(model, batch):
    return {"loss": (model(batch["x"]) - batch["y"]).pow(2).mean()}


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def trainer(output_dir, steps: int = 6, **overrides) -> Trainer:
    torch.manual_seed(0)
    cfg = TrainerConfig(output_dir=str(output_dir), max_steps=steps, batch_size=4, save_every=2, keep_last=0,
                        lr=1e-2, progress_bar=False, log_every=0, seed=0, **overrides)
    return Trainer(nn.Linear(4, 1), loss_fn, Data(), None, cfg)


def weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in t.model.state_dict().items()}


# ---- one run at a time ------------------------------------------------------------------------------------
def test_a_second_run_into_a_locked_folder_is_refused_at_once_naming_the_holder(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunDirError, match=rf"{tmp_path / 'run'} is in use by another run \(pid {os.getpid()} on "):
            trainer(tmp_path / "run").train()
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "log.jsonl").exists()
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # the holder's clean exit removed its lock
    trainer(tmp_path / "run").train()  # and the folder is free again


def test_a_stale_lock_left_by_a_killed_run_is_taken_over_and_reported(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "elsewhere", "since": "yesterday"}))
    t = trainer(run)
    t.train()
    assert "took over the lock of a run that did not end cleanly (pid 999999 on elsewhere" in capsys.readouterr().out
    assert t.step == 6 and not (run / LOCK_NAME).exists()


def test_the_lock_is_held_during_training_and_released_after_a_failure(tmp_path):
    seen = []

    def probing_loss(model, batch):
        if not seen:
            with pytest.raises(RunDirError, match="in use by another run"):
                RunLock(tmp_path / "run").acquire()
            seen.append(True)
        raise RuntimeError("boom")

    t = trainer(tmp_path / "run")
    t.loss_fn = t.module.loss_fn = probing_loss
    with pytest.raises(RuntimeError, match="boom"):
        t.train()
    assert seen and not (tmp_path / "run" / LOCK_NAME).exists()


# ---- writable, with room ----------------------------------------------------------------------------------
def test_an_output_dir_that_cannot_be_created_is_refused_before_step_1(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(RunDirError, match=r"output_dir .*file/run is not writable"):
        check_writable(tmp_path / "file" / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; covered by the test above")
def test_a_read_only_output_dir_is_refused_before_step_1(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    try:
        with pytest.raises(RunDirError, match="is not writable"):
            trainer(run / "sub").train()
    finally:
        run.chmod(0o755)


def test_a_full_disk_is_refused_before_step_1_with_free_and_needed_sizes(tmp_path, monkeypatch):
    t = trainer(tmp_path / "run")
    assert t.checkpoint_bytes() == (4 + 1) * 4 * 3  # weights + two AdamW moments of 5 float32 values
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr("vlpkit.engine.run_dir.shutil.disk_usage", lambda p: usage._replace(free=10))
    with pytest.raises(RunDirError, match=r"has 0.0 MiB free, but one checkpoint of this run needs about"):
        t.train()
    assert t.step == 0 and not (tmp_path / "run" / "checkpoints").exists()


# ---- damaged checkpoints -------------------------------------------------------------------------------------
def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) * 3 // 4] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte])
@pytest.mark.parametrize("victim", ["model.safetensors", TRAINER_STATE_NAME, "rng_state_0.pt"])
def test_resume_skips_a_damaged_latest_checkpoint_for_the_newest_intact_one(tmp_path, victim, damage):
    reference = trainer(tmp_path / "ref", steps=8)
    reference.train()
    t = trainer(tmp_path / "run")
    t.train()
    latest = CheckpointManager(tmp_path / "run").latest()
    assert latest.name == "step_00000006" and (latest / CHECKSUMS_NAME).is_file()
    damage(latest / victim)
    assert verify_checkpoint(latest).startswith(victim)
    AcceleratorState._reset_state(reset_partial_state=True)
    again = trainer(tmp_path / "run", steps=8)
    with pytest.warns(UserWarning, match=rf"step_00000006 is damaged \({victim}.*falling back to step_00000004"):
        again.train(resume=True)
    assert again.step == 8
    for name, value in weights(again).items():  # the continuation from step 4 is the uninterrupted run
        assert torch.equal(value, weights(reference)[name]), name
    assert (tmp_path / "run" / "checkpoints" / ".step_00000006.corrupt").is_dir()  # kept for inspection


def test_every_checkpoint_damaged_is_an_error_that_lists_them(tmp_path):
    trainer(tmp_path / "run", steps=4).train()
    for step in CheckpointManager(tmp_path / "run").steps():
        _truncate(CheckpointManager(tmp_path / "run").path(step) / "model.safetensors")
    with pytest.warns(UserWarning, match="no intact checkpoint is left"), \
            pytest.raises(CorruptCheckpointError, match=r"every checkpoint in .* is damaged \(step_00000004: "
                                                        r"model.safetensors: \d+ bytes, \d+ recorded"):
        resolve_checkpoint(tmp_path / "run")


def test_an_explicit_damaged_step_directory_is_named_not_replaced(tmp_path):
    trainer(tmp_path / "run", steps=4).train()
    step = CheckpointManager(tmp_path / "run").path(2)
    _flip_a_byte(step / TRAINER_STATE_NAME)
    with pytest.raises(CorruptCheckpointError, match=rf"{step} is damaged: {TRAINER_STATE_NAME}: SHA-256 differs"):
        resolve_checkpoint(step)


def test_truncated_weights_and_state_files_name_themselves(tmp_path):
    save_weights(nn.Linear(4, 1), tmp_path / "w.safetensors")
    _truncate(tmp_path / "w.safetensors")
    with pytest.raises(CorruptFileError, match=rf"{tmp_path / 'w.safetensors'} is truncated or corrupt"):
        load_weights(nn.Linear(4, 1), tmp_path / "w.safetensors")
    torch.save({"x": torch.zeros(100)}, tmp_path / "s.pt")
    _truncate(tmp_path / "s.pt")
    with pytest.raises(CorruptFileError, match=rf"{tmp_path / 's.pt'} is truncated or corrupt"):
        load_torch(tmp_path / "s.pt")
