"""Two CPU processes under `torchrun` (DDP over gloo, set up by accelerate) follow the same loss curve and reach the
same weights as one process over the same global batch.

Run by torchrun, this file is the training job: `torchrun --nproc_per_node 2 test_ddp.py OUTPUT_DIR`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from vlpkit.engine import Trainer, TrainerConfig, seed_everything
from vlpkit.ops.distributed import gather_shards, get_world_size, shard_range

PER_PROCESS_BATCH, STEPS = 3, 4


class ToyData(Dataset):
    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 + i)
        x = torch.randn(4, generator=g)
        return {"x": x, "y": (x * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum(0, keepdim=True)}


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.backbone(x)))


def loss_fn(model, batch):
    mse = (model(batch["x"]) - batch["y"]).pow(2).mean()
    return {"loss": mse, "loss_mse": mse}


def eval_fn(model) -> dict[str, float]:
    """Mean squared error over 23 items (shares of 11 and 12 under 2 processes), gathered."""
    assert not isinstance(model, torch.nn.parallel.DistributedDataParallel)  # the bare module
    data = ToyData()
    errors = gather_shards([(model(data[i]["x"]) - data[i]["y"]).pow(2).item() for i in shard_range(23)])
    return {"mse": sum(errors) / len(errors), "items": len(errors), "processes": get_world_size()}


def make_trainer(output_dir, batch_size: int, **kw) -> Trainer:
    torch.set_num_threads(1)
    seed_everything(0)
    config = TrainerConfig(output_dir=str(output_dir), batch_size=batch_size, max_steps=STEPS, grad_accum_steps=2,
                           save_every=2, lr=1e-2, backbone_lr=1e-3, clip_max_norm=0.5, log_every=1,
                           progress_bar=False, seed=3, backbone_prefix="backbone.", eval_every=2, **kw)
    return Trainer(Toy(), loss_fn, ToyData(), None, config, eval_fn=eval_fn)


def worker(out: Path) -> None:
    trainer = make_trainer(out / "run", PER_PROCESS_BATCH)
    history = trainer.train()
    acc = trainer.accelerator
    save_file(trainer.model.state_dict(), str(out / f"weights_{acc.process_index}.safetensors"))
    if acc.is_main_process:
        summary = {"history": history, "num_processes": acc.num_processes,
                   "distributed_type": str(acc.distributed_type)}
        (out / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def _restore_globals():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(reset_partial_state=True)


def test_two_process_ddp_matches_one_process(tmp_path, _restore_globals):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # meanwhile, one process with twice the batch: the same global micro-batches (the sampler interleaves
        # processes)
        single = make_trainer(tmp_path / "single", 2 * PER_PROCESS_BATCH)
        history = single.train()
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["distributed_type"].endswith("MULTI_CPU")
    w0 = load_file(str(tmp_path / "weights_0.safetensors"))
    w1 = load_file(str(tmp_path / "weights_1.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # DDP kept the replicas identical
    step_dir = tmp_path / "run" / "checkpoints" / "step_00000004"
    assert (step_dir / "rng_state_0.pt").is_file() and (step_dir / "rng_state_1.pt").is_file()

    ddp = summary["history"]
    for key in ("loss", "grad_norm", "lr", "lr_backbone"):
        assert [r[key] for r in ddp] == pytest.approx([r[key] for r in history], rel=1e-5, abs=1e-7), key
    # evaluation at steps 2 and 4: each process scored its share, the gathered mean equals one process's
    assert [r.get("eval/items") for r in ddp] == [None, 23, None, 23]
    assert [r.get("eval/processes") for r in ddp] == [None, 2, None, 2]
    assert [r.get("eval/mse", 0.0) for r in ddp] == pytest.approx([r.get("eval/mse", 0.0) for r in history], rel=1e-5)
    assert ddp[1]["eval/mse"] > 0
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(w0[name], value, rtol=1e-5, atol=1e-6)

    # the 2-process checkpoint of step 2 resumes on one process and continues the same global order
    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = make_trainer(tmp_path / "run", 2 * PER_PROCESS_BATCH)
    with pytest.warns(UserWarning, match="num_processes: 2 -> 1"):
        resumed.resume(tmp_path / "run" / "checkpoints" / "step_00000002")
    rest = resumed.train()
    assert [r["loss"] for r in rest] == pytest.approx([r["loss"] for r in ddp[2:]], rel=1e-5)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
