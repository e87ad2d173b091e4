"""SIGKILL `python -m vlpkit pretrain` once a checkpoint exists, rerun it with `--resume`, and end where an
uninterrupted run ends: the same per-step losses in log.jsonl (same data order, augmentation, masking, ITM
negatives, dropout) and bit-identical final weights (model/model.safetensors).

The full pretraining objective (MLM, ITM, detection + attributes, captioning) of e2evlp-tiny on the session's
40-image shapes world, on the CPU in deterministic mode: 24 samples per epoch (half of the 32 COCO images and a
quarter of the 32 VG images, both redrawn every epoch) at batch 4 are 6 steps, so the 8 steps cross an epoch
boundary after the resume from step 3. Each run takes about 15 s on 2 cores, mostly imports; the killed run and the
uninterrupted one start side by side, and the resumed run overlaps the end of the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlpkit.engine.logging import LOG_NAME

STEPS, SAVE_EVERY, BATCH = 8, 3, 4
# fields of a log record that depend on the wall clock, not on the computation
_TIMING = {"samples_per_s"}


def _command(world: Path, output_dir: Path, resume: bool = False) -> list[str]:
    sets = {
        "trainer.output_dir": str(output_dir),
        "trainer.max_steps": STEPS,
        "trainer.batch_size": BATCH,
        "trainer.save_every": SAVE_EVERY,
        "trainer.keep_last": 2,
        "trainer.log_every": 1,
        "trainer.eval_every": SAVE_EVERY,  # validation losses between steps must not disturb the training RNG
        "trainer.warmup_steps": 2,
        "trainer.num_workers": 0,
        "trainer.seed": 5,
        "trainer.deterministic": "true",
        "trainer.cpu": "true",
        "trainer.progress_bar": "false",
        # the conftest world (same parameters, so it is reused rather than generated again)
        "data.shapes": f"{{root: '{world}', num_images: 40, seed: 3, vocab_size: 200}}",
        "data.sources": "[{name: coco, tasks: [mlm, itm, detection, caption], weight: 0.5}, "
                        "{name: vg, tasks: [mlm, detection, attributes], weight: 0.25}]",
        # DETR's augmentation at 64 px: flip, random resize, and the random-crop branch
        "data.image": "{train_scales: [56, 64], max_size: 96, crop: true, flip: true, eval_size: 64}",
        "data.val_batches": 1,
        "warmup.steps": 0,  # the trunk warm-up runs before training and is tested on its own
    }
    command = [sys.executable, "-m", "vlpkit", "pretrain", "--config", "e2evlp-tiny"]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    return command + (["--resume"] if resume else [])


def _start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log: Path, what: str, timeout: float = 240) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{what} did not finish within {timeout} s:\n{log.read_text()[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")


def _train_records(output_dir: Path, kind: str = "train") -> dict[int, dict]:
    """step -> record of `kind` in `output_dir/log.jsonl`, without wall-clock fields and without a last line
    that a SIGKILL cut short."""
    lines = (output_dir / LOG_NAME).read_text().splitlines()
    if lines and not _parses(lines[-1]):
        lines.pop()
    records = [r for r in map(json.loads, lines) if r["kind"] == kind]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"{output_dir / 'log.jsonl'}: steps repeated or out of order: {steps}"
    return {r["step"]: {k: v for k, v in r.items() if k not in _TIMING} for r in records}


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def test_sigkill_then_resume_matches_uninterrupted_run(shapes_setup, tmp_path):
    world = shapes_setup.world.root
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "VLPKIT_CACHE": str(tmp_path / "cache")}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    pointer = killed / "checkpoints" / "latest"

    started: list[subprocess.Popen] = []
    try:
        started.append(reference := _start(_command(world, straight), tmp_path / "straight.out", env))
        started.append(victim := _start(_command(world, killed), tmp_path / "killed.out", env))
        deadline = time.monotonic() + 240
        while not pointer.is_file():
            if victim.poll() is not None:
                pytest.fail(f"the run to be killed exited ({victim.returncode}) before its first checkpoint:\n"
                            f"{(tmp_path / 'killed.out').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the run to be killed wrote no checkpoint within 240 s")
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        saved = int(pointer.read_text().strip().removeprefix("step_"))
        assert saved % SAVE_EVERY == 0 and 0 < saved < STEPS

        before = _train_records(killed)  # what the killed run logged (it may have run past its checkpoint)
        started.append(resume := _start(_command(world, killed, resume=True), tmp_path / "resumed.out", env))
        _finish(reference, tmp_path / "straight.out", "the uninterrupted run")
        _finish(resume, tmp_path / "resumed.out", "the resumed run")
    finally:
        for proc in started:  # nothing outlives a failure
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert f"at step {saved}," in (tmp_path / "resumed.out").read_text(), "the rerun did not resume"

    expected = _train_records(straight)
    assert sorted(expected) == list(range(1, STEPS + 1))
    # Two fresh runs must agree before any resume is involved: the same initial weights, data and RNG draws.
    diverged = [s for s in sorted(before) if before[s] != expected[s]]
    assert not diverged, (
        f"two fresh runs of the same config differ from step {diverged[0]} on (killed run {before[diverged[0]]} vs "
        f"uninterrupted {expected[diverged[0]]}); if step 1 already differs, the model's initial weights are "
        "not seeded (seed the global RNGs from trainer.seed before building the model in pretrain())")

    # log.jsonl: the killed run's lines past its checkpoint are dropped, the resumed steps follow, and every
    # step's losses, learning rates and gradient norm equal the uninterrupted run's (hence the same batches).
    after = _train_records(killed)
    assert sorted(after) == list(range(1, STEPS + 1))
    mismatched = [s for s in range(1, STEPS + 1) if after[s] != expected[s]]
    assert not mismatched, (f"steps {mismatched} differ after resuming at step {saved}; first: "
                            f"{after[mismatched[0]]} vs {expected[mismatched[0]]}")
    assert [after[s]["epoch"] for s in (6, 7)] == [0, 1]  # the resumed part crossed into epoch 1
    assert _train_records(killed, "eval") == _train_records(straight, "eval")

    final, reference_weights = (load_file(d / "model" / "model.safetensors") for d in (killed, straight))
    assert final.keys() == reference_weights.keys()
    differing = [k for k in reference_weights if not torch.equal(final[k], reference_weights[k])]
    assert not differing, f"{len(differing)} tensors differ from the uninterrupted run, e.g. {differing[:5]}"
    # and the data position saved with the last checkpoint is the uninterrupted run's
    last = Path("checkpoints") / f"step_{STEPS:08d}" / "trainer_state.pt"
    states = [torch.load(d / last, map_location="cpu", weights_only=True) for d in (killed, straight)]
    assert states[0]["sampler"] == states[1]["sampler"] and states[0]["step"] == states[1]["step"] == STEPS
