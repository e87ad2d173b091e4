"""The num_boxes normaliser: a no-op (plus clamp) without torch.distributed, a mean over processes with it, and
SetCriterion's box losses divided by that mean in a real 2-process gloo group."""

from __future__ import annotations

import pytest
import torch

from tests.gloo import needs_fork, run_two_ranks
from vlpkit.losses import SetCriterion
from vlpkit.ops import HungarianMatcher
from vlpkit.ops.distributed import (
    get_world_size,
    is_dist_avail_and_initialized,
    reduce_counts,
    reduce_num_boxes,
)


def test_without_process_group_is_identity_clamped_at_one():
    assert not is_dist_avail_and_initialized()
    assert get_world_size() == 1
    assert reduce_num_boxes(7, "cpu") == 7.0
    assert reduce_num_boxes(0, "cpu") == 1.0
    assert reduce_counts([3, 0, 0.25], "cpu") == [3.0, 1.0, 1.0]
    assert reduce_counts([], "cpu") == []


def _worker(rank: int) -> dict:
    """One rank: reduce_counts on its own counts, then SetCriterion on its own batch (rank 0: 3 boxes, rank 1:
    none)."""
    counts = reduce_counts([[3, 0][rank], [0, 0][rank], [5, 2][rank]], "cpu")
    outputs, targets = _rank_batch(rank)
    losses = SetCriterion(2, HungarianMatcher(), losses=("boxes",))(outputs, targets)
    return {"counts": counts, "loss_bbox": losses["loss_bbox"].item()}


def _rank_batch(rank: int):
    gen = torch.Generator().manual_seed(rank)
    outputs = {"pred_logits": torch.randn(2, 4, 3, generator=gen), "pred_boxes": torch.rand(2, 4, 4, generator=gen)}
    sizes = [[2, 1], [0, 0]][rank]
    targets = [{"labels": torch.zeros(n, dtype=torch.int64),
                "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.4, 0.2]][:n]).reshape(n, 4)} for n in sizes]
    return outputs, targets


@needs_fork
@pytest.mark.timeout(120)
def test_two_gloo_processes(tmp_path):
    results = run_two_ranks(_worker, tmp_path, timeout=100)

    # Means over the two ranks, clamped to >= 1: (3+0)/2, max((0+0)/2, 1), (5+2)/2.
    assert results[0]["counts"] == results[1]["counts"] == [1.5, 1.0, 3.5]

    # Rank 0 holds all 3 boxes but divides its L1 sum by the mean count 1.5, not by 3; rank 1 has none (loss 0).
    single_process = SetCriterion(2, HungarianMatcher(), losses=("boxes",))(*_rank_batch(0))["loss_bbox"].item()
    assert single_process > 0
    assert results[0]["loss_bbox"] == pytest.approx(single_process * 3 / 1.5, rel=1e-6)
    assert results[1]["loss_bbox"] == 0.0
