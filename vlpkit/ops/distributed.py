"""What processes share, as helpers that are no-ops without torch.distributed.

- The DETR `num_boxes` all-reduce: every process divides its box losses by the *same* number, the mean count of
  target boxes per process (clamped to at least 1), so that the gradient summed by DDP equals that of one big
  batch, however the boxes are spread.
- Evaluation spread over processes: `shard_range` gives each process a contiguous share of a split's examples and
  `gather_shards` puts the shares back together, in the split's order, on every process; so every process returns
  the metrics one process would, and the main process writes the results file.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def is_dist_avail_and_initialized() -> bool:
    """True when torch.distributed is compiled in and a process group has been initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group (1 without torch.distributed)."""
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank() -> int:
    """This process's rank in the default group (0 without torch.distributed)."""
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def shard_range(n: int) -> range:
    """This process's contiguous share of `n` items: rank r of w gets `range(r * n // w, (r + 1) * n // w)` (shares
    differ in size by at most one; concatenated in rank order they are `range(n)`)."""
    world, rank = get_world_size(), get_rank()
    return range(rank * n // world, (rank + 1) * n // world)


def gather_shards(items: Sequence) -> list:
    """Every process's `items` (its share, from `shard_range`), concatenated in rank order, on every process.

    Items are any picklable objects (torch's `all_gather_object`: tensors come back on the device they left).
    Without a process group (or with one process) this is `list(items)`.
    """
    if get_world_size() == 1:
        return list(items)
    parts: list = [None] * get_world_size()
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def reduce_counts(counts: Sequence[float], device: torch.device | str, min_value: float = 1.0) -> list[float]:
    """Average several counts over all processes with one all-reduce, then clamp each to at least `min_value`.

    Args:
        counts: this process's counts (e.g. `[num_boxes, num_boxes_with_attributes]`).
        device: where the reduction tensor lives; must suit the backend (CUDA for NCCL, CPU or CUDA for gloo).
        min_value: lower bound applied after averaging (1 keeps a loss over zero boxes at 0 instead of 0/0).

    Returns:
        One float per count: `max(sum over processes / world size, min_value)`. Without an initialised process
        group this is `max(count, min_value)`.
    """
    if len(counts) == 0:
        return []
    values = torch.as_tensor([float(c) for c in counts], dtype=torch.float32, device=device)
    if is_dist_avail_and_initialized():
        dist.all_reduce(values)
    values = torch.clamp(values / get_world_size(), min=min_value)
    return values.tolist()


def reduce_num_boxes(num_boxes: float, device: torch.device | str) -> float:
    """DETR's loss normaliser: the number of target boxes averaged over processes, at least 1."""
    return reduce_counts([num_boxes], device)[0]
