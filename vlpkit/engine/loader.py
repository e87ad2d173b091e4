"""How many DataLoader worker processes a run uses when its config leaves `num_workers` unset (None).

- On a GPU (any non-CPU device): `min(8, cores available to this process / processes on this node - 1)`, one core
  left for the training process itself. On an H100 an e2evlp-6-r50 step at 800x1333 is far faster than one
  core can decode, resize and collate its images (docs/data/real_datasets.md gives the measured loader rate
  per worker and the step's FLOPs), so a GPU run needs several workers.
- On a CPU: 0. The step needs every core, and the loader costs little beside it (benchmarks/bench_training.py:
  the shapes world's loader produces 15-19x more images per second than an e2evlp-tiny step consumes, so a
  worker could save at most about 6% of the step time while taking one of the step's cores).
"""

from __future__ import annotations

import os

import torch

MAX_AUTO_WORKERS = 8


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform reports it, else `os.cpu_count()`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def loader_workers(requested: int | None, device: torch.device | str) -> int:
    """`requested` when given, else the automatic choice above for `device` (processes per node from torchrun's or
    accelerate's `LOCAL_WORLD_SIZE`, 1 when unset)."""
    if requested is not None:
        return int(requested)
    if torch.device(device).type == "cpu":
        return 0
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(MAX_AUTO_WORKERS, available_cores() // per_node - 1))
