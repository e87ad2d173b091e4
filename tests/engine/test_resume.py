"""Kill a training run with SIGKILL after a checkpoint exists, resume it, and end with weights bit-identical to an
uninterrupted run (e2evlp-tiny at 64x64 on a synthetic dataset, CPU, deterministic mode).

Run as a script, this file is the training job that gets killed: `python test_resume.py OUTPUT_DIR HANG_AT`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate.state import AcceleratorState
from torch.utils.data import Dataset

from vlpkit import build_e2evlp
from vlpkit.engine import Trainer, TrainerConfig, read_log, seed_everything

STEPS, SAVE_EVERY, HANG_AT = 5, 2, 4  # the killed run hangs in the forward of step 4: step 3 is lost work


class Synthetic(Dataset):
    """10 image-text pairs: a 64x64 image, 8 token ids, an ITM label and one box, all seeded by the index."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(5, 1000, (8,), generator=g)
        ids[0], ids[-1] = 2, 3  # [CLS] ... [SEP] of e2evlp-tiny
        return {"pixel_values": torch.randn(3, 64, 64, generator=g), "input_ids": ids,
                "itm_label": torch.tensor(i % 2), "box": torch.rand(4, generator=g) * 0.5 + 0.25}


def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def loss_fn(model, batch):
    out = model(batch["pixel_values"], input_ids=batch["input_ids"])
    itm = F.cross_entropy(out.itm_logits, batch["itm_label"])
    mlm = F.cross_entropy(out.mlm_logits.flatten(0, 1), batch["input_ids"].flatten())
    box = 5 * F.l1_loss(out.detection.pred_boxes[:, 0], batch["box"])
    return {"loss": itm + mlm + box, "loss_itm": itm, "loss_mlm": mlm, "loss_bbox": box}


def run(output_dir: str | Path, hang_at: int | None = None, resume: bool = False, save_every: int = SAVE_EVERY):
    torch.set_num_threads(1)  # the killed process and this one must compute identically
    seed_everything(0)
    # dropout 0.1: the RNG state must resume too; a frozen ResNet keeps the checkpoints small and the test quick
    model = build_e2evlp("e2evlp-tiny", trainable_backbone_layers=0)
    fn = loss_fn
    if hang_at is not None:
        calls = [0]

        def fn(model, batch):
            calls[0] += 1
            if calls[0] == hang_at:
                Path(output_dir, "hanging").touch()
                time.sleep(600)  # wait for SIGKILL
            return loss_fn(model, batch)

    config = TrainerConfig(output_dir=str(output_dir), max_steps=STEPS, batch_size=2, save_every=save_every,
                           keep_last=2, log_every=1, deterministic=True, progress_bar=False, seed=1)
    trainer = Trainer(model, fn, Synthetic(), collate, config)
    return trainer, trainer.train(resume=resume)


@pytest.fixture
def _restore_globals():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    AcceleratorState._reset_state(reset_partial_state=True)


def test_sigkill_then_resume_is_bit_identical(tmp_path, _restore_globals):
    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, __file__, str(killed_dir), str(HANG_AT)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        uninterrupted, history = run(tmp_path / "straight", save_every=0)  # meanwhile, the reference run
        deadline = time.monotonic() + 120
        while not (killed_dir / "hanging").exists():
            if proc.poll() is not None:
                pytest.fail(f"training subprocess exited early ({proc.returncode}): {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("training subprocess did not reach the step to be killed at within 120 s")
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    checkpoints = killed_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000002"]
    assert max(r["step"] for r in read_log(killed_dir, "train")) == 3  # step 3 ran but was never saved

    AcceleratorState._reset_state(reset_partial_state=True)
    resumed, rest = run(killed_dir, resume=True)
    assert [r["step"] for r in rest] == [3, 4, 5]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000004", "step_00000005"]
    assert [r["step"] for r in read_log(killed_dir, "train")] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rest] == [r["loss"] for r in history[2:]]
    final, expected = resumed.model.state_dict(), uninterrupted.model.state_dict()
    assert final.keys() == expected.keys()
    differing = [k for k in expected if not torch.equal(final[k], expected[k])]
    assert not differing, f"weights differ after resume: {differing[:5]}"


if __name__ == "__main__":
    run(sys.argv[1], hang_at=int(sys.argv[2]))
