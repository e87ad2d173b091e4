"""Fault injection: a training run stopped dead at many points, before and inside its checkpoint saves, always
resumes to the weights of the uninterrupted run, bit for bit; a checkpoint damaged at random is detected and
skipped.

The quick loop stops the run in-process: every file operation of a save (write, fsync, rename, delete) and every
forward pass is an event, and the run is interrupted just before event k by an exception nothing catches, which
leaves the disk as a SIGKILL at that moment would (every write is a temporary file renamed into place). The
`slow` test sends real SIGKILLs to a training subprocess at random moments.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
from accelerate.state import AcceleratorState
from torch import nn
from torch.utils.data import Dataset

from vlpkit.engine import Trainer, TrainerConfig
from vlpkit.engine.state import CheckpointManager, CorruptCheckpointError

STEPS, SAVE_EVERY, KEEP_LAST = 6, 2, 2
EVENTS = ("os.replace", "os.fsync", "shutil.rmtree", "torch.save", "vlpkit.checkpoint.save_model")


class Killed(BaseException):
    """Stands for SIGKILL: a BaseException, so that no `except Exception` in the code under test catches it."""


class Data(Dataset):
    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        x = torch.randn(4, generator=g)
        return {"x": x, "y": x.sum(0, keepdim=True)}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))  # dropout: RNG

    def forward(self, x):
        return self.body(x)


def loss_fn(model, batch):
    return {"loss": (model(batch["x"]) - batch["y"]).pow(2).mean()}


def make_trainer(output_dir, loss=loss_fn, steps: int = STEPS) -> Trainer:
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.manual_seed(0)
    cfg = TrainerConfig(output_dir=str(output_dir), max_steps=steps, batch_size=3, save_every=SAVE_EVERY,
                        keep_last=KEEP_LAST, lr=1e-2, progress_bar=False, log_every=1, seed=0, deterministic=True)
    return Trainer(Net(), loss, Data(), None, cfg)


def final_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _resolve(target: str):
    module, _, name = target.rpartition(".")
    return getattr(sys.modules[module] if module in sys.modules else __import__(module), name)


def run_until_event(output_dir, kill_at: int | None, monkeypatch) -> int:
    """Train from scratch, stopped just before event `kill_at` (None: to the end). Returns the events seen."""
    seen = [0]

    def tick():
        seen[0] += 1
        if seen[0] == kill_at:
            raise Killed(kill_at)

    def wrap(fn):
        def inner(*args, **kwargs):
            tick()
            return fn(*args, **kwargs)
        return inner

    with monkeypatch.context() as m:
        for target in EVENTS:
            m.setattr(target, wrap(_resolve(target)))
        trainer = make_trainer(output_dir, lambda model, batch: (tick(), loss_fn(model, batch))[1])
        try:
            trainer.train()
        except Killed:
            pass
    return seen[0]


def _damage(path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if rng.random() < 0.5 or not data:
        path.write_bytes(bytes(data[: rng.randrange(len(data) or 1)]))
    else:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    trainer = make_trainer(tmp_path_factory.mktemp("reference") / "run")
    trainer.train()
    return final_weights(trainer)


def test_a_run_stopped_at_any_of_30_points_resumes_to_identical_weights(tmp_path, monkeypatch, reference):
    total = run_until_event(tmp_path / "count", None, monkeypatch)
    assert total > 40  # 6 forward passes and 3 saves of about 10 file operations each
    rng = random.Random(0)
    points = sorted({1, total, *rng.sample(range(2, total), 28)})
    assert len(points) >= 24
    damaged = eligible = 0
    for k in points:
        run = tmp_path / f"kill_{k}"
        run_until_event(run, k, monkeypatch)
        manager = CheckpointManager(run)
        steps = manager.steps()
        eligible += len(steps) >= 2
        if len(steps) >= 2 and eligible % 2:  # every other such point, also damage a file of a random checkpoint
            victim = manager.path(rng.choice(steps))
            _damage(rng.choice(sorted(p for p in victim.iterdir() if p.is_file())), rng)
            damaged += 1
        resumed = make_trainer(run)
        with warnings.catch_warnings():  # a damaged latest checkpoint is reported by a warning (tested elsewhere)
            warnings.simplefilter("ignore", UserWarning)
            resumed.train(resume=True)
        assert resumed.step == STEPS, k
        for name, value in final_weights(resumed).items():
            assert torch.equal(value, reference[name]), f"stopped before event {k}/{total}: {name} differs"
    assert damaged >= 4


def test_a_run_whose_only_checkpoint_is_damaged_says_so(tmp_path):
    make_trainer(tmp_path / "run", steps=2).train()
    only = CheckpointManager(tmp_path / "run").latest()
    _damage(only / "model.safetensors", random.Random(1))
    with pytest.warns(UserWarning, match="no intact checkpoint is left"), pytest.raises(CorruptCheckpointError):
        make_trainer(tmp_path / "run", steps=2).train(resume=True)


# ---- real SIGKILLs (slow) -------------------------------------------------------------------------------------
_SCRIPT = f"""
import sys, time
sys.path.insert(0, {os.path.dirname(__file__)!r})
import test_fault_injection as t
from vlpkit.engine.state import save_torch
slow = lambda model, batch: (time.sleep(0.1), t.loss_fn(model, batch))[1]
trainer = t.make_trainer(sys.argv[1], slow)
print("ready", flush=True)
trainer.train(resume=True)
save_torch(t.final_weights(trainer), sys.argv[1] + "/final.pt")
"""


@pytest.mark.slow
def test_real_sigkills_at_random_moments_resume_to_identical_weights(tmp_path, reference):
    """20 runs, each killed at random moments of its ~1 s of training (once imports are done) until one finishes."""
    rng = random.Random(0)
    kills = 0
    for trial in range(20):
        run = tmp_path / f"trial_{trial}"
        run.mkdir()
        for _ in range(10):
            proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(run)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            time.sleep(rng.uniform(0.0, 1.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait()
            assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read()
            if (run / "final.pt").is_file():
                break
        final = torch.load(run / "final.pt", weights_only=True)
        for name, value in final.items():
            assert torch.equal(value, reference[name]), f"trial {trial}: {name} differs"
    assert kills >= 20
