"""`vlpkit pretrain` under torchrun with 2 CPU processes (gloo): the main process writes the run's files (config,
tokenizer, labels, log, weights, trainer state, checksums); the other process writes only its own RNG state into
each checkpoint. Every file write of each process is recorded with Python's audit hooks ("open" in a writing mode,
"os.rename"/"os.replace", "os.mkdir").

Run by torchrun, this file is the job: `torchrun --nproc_per_node 2 test_ddp_run_files.py WORLD OUTPUT_DIR`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

STEPS = 2
TEMPORARY = re.compile(r"(^|/)\.[^/]+\.[^/.]+\.tmp$")  # atomic writes: .<name>.<random>.tmp


def _job(world: Path, out: Path) -> None:
    rank = int(os.environ["RANK"])
    writes: set[str] = set()
    run = str(out / "run")

    def hook(event: str, args) -> None:
        if event == "open" and isinstance(args[0], (str, os.PathLike)):
            mode, flags = args[1] or "r", args[2] or 0
            writing = any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            paths = [args[0]] if writing else []
        elif event in ("os.rename", "os.replace"):
            paths = [args[1]]
        elif event == "os.mkdir":
            paths = [args[0]]
        else:
            return
        for p in paths:
            p = os.path.abspath(os.fspath(p))
            if p.startswith(run):
                writes.add(os.path.relpath(p, run))

    sys.addaudithook(hook)
    from vlpkit.cli import main

    sets = {"trainer.output_dir": run, "trainer.max_steps": STEPS, "trainer.batch_size": 2, "trainer.save_every": 1,
            "trainer.log_every": 1, "trainer.progress_bar": "false", "trainer.eval_every": 0,
            "data.shapes": f"{{root: '{world}', num_images: 40, seed: 3, vocab_size: 200}}",
            "data.image": "{train_scales: [64], max_size: 96, crop: false, flip: true, eval_size: 64}",
            "warmup.steps": 0}
    argv = ["pretrain", "--config", "e2evlp-tiny"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    code = main(argv)
    (out / f"writes_{rank}.json").write_text(json.dumps({"code": code, "writes": sorted(writes)}))


@pytest.mark.timeout(300)
def test_only_the_main_process_writes_run_files(tmp_path, shapes_setup):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(shapes_setup.world.root), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    main, other = (json.loads((tmp_path / f"writes_{r}.json").read_text()) for r in range(2))
    assert main["code"] == other["code"] == 0
    steps = [f"checkpoints/.step_{s:08d}.tmp" for s in range(1, STEPS + 1)]  # checkpoints are built here, renamed
    # the other process: its RNG state into each checkpoint being built (through a temporary file), nothing else
    assert {w for w in other["writes"] if not TEMPORARY.search(w)} == \
        {*steps, *(f"{s}/rng_state_1.pt" for s in steps)}
    # the main process: every file of the run, and never the other process's state
    written = set(main["writes"])
    for name in ("pretrain_config.json", "trainer_config.json", "labels.json", "log.jsonl", "tokenizer/vocab.txt",
                 "model/model.safetensors", "model/config.json", "checkpoints/latest", "checkpoints/step_00000002",
                 f"{steps[-1]}/model.safetensors", f"{steps[-1]}/trainer_state.pt", f"{steps[-1]}/checksums.json",
                 f"{steps[-1]}/rng_state_0.pt"):
        assert name in written, (name, sorted(written))
    assert not any("rng_state_1" in w for w in written)
    final = tmp_path / "run" / "checkpoints" / "step_00000002"
    assert {"rng_state_0.pt", "rng_state_1.pt"} <= {p.name for p in final.iterdir()}
    assert "rng_state_1.pt" in json.loads((final / "checksums.json").read_text())  # {file name: size, sha256}

if __name__ == "__main__":
    _job(Path(sys.argv[1]), Path(sys.argv[2]))
