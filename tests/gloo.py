"""Two real torch.distributed processes on the CPU (gloo) for tests: `run_two_ranks(fn, folder, *args)`.

The processes are forked, not spawned: they inherit the imported modules and the objects passed in (models,
batches) instead of importing torch again (seconds each). Each one sets a single thread (no OpenMP pool in a
forked child), joins the group through a file in `folder`, runs `fn(rank, *args)` and leaves the group; what `fn`
returns (JSON-serialisable) comes back to the caller, rank 0 first.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch

needs_fork = pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")


def _child(rank: int, fn, folder: str, args: tuple) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=2)
    try:
        result = fn(rank, *args)
    finally:
        dist.destroy_process_group()
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(result))


def run_two_ranks(fn, folder: Path, *args, timeout: float = 100) -> list:
    """`fn(rank, *args)` in 2 forked gloo processes; asserts both exit with 0 and returns their results."""
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_child, args=(rank, fn, str(folder), args)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=timeout)
    assert [p.exitcode for p in procs] == [0, 0]
    return [json.loads((Path(folder) / f"rank{rank}.json").read_text()) for rank in range(2)]
