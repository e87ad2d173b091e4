"""Normalisers shared across processes: the DETR `num_boxes` all-reduce, as a helper that is a no-op without
torch.distributed.

Every process divides its box losses by the *same* number, the mean count of target boxes per process (clamped to
at least 1), so that the gradient summed by DDP equals that of one big batch, however the boxes are spread.
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
