"""The num_boxes normaliser: a no-op (plus clamp) without torch.distributed, a mean over processes with it, and
SetCriterion's box losses divided by that mean in a real 2-process gloo group."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest
import torch

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


def _worker(rank: int, init_file: str, out_file: str) -> None:
    """One rank: reduce_counts on its own counts, then SetCriterion on its own batch (rank 0: 3 boxes, rank 1:
    none)."""
    import torch.distributed as dist

    from vlpkit.losses import SetCriterion
    from vlpkit.ops import HungarianMatcher, reduce_counts

    torch.set_num_threads(1)  # no OpenMP pool in a forked child
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        counts = reduce_counts([[3, 0][rank], [0, 0][rank], [5, 2][rank]], "cpu")
        outputs, targets = _rank_batch(rank)
        losses = SetCriterion(2, HungarianMatcher(), losses=("boxes",))(outputs, targets)
    finally:
        dist.destroy_process_group()
    with open(out_file, "w") as f:
        json.dump({"counts": counts, "loss_bbox": losses["loss_bbox"].item()}, f)


def _rank_batch(rank: int):
    gen = torch.Generator().manual_seed(rank)
    outputs = {"pred_logits": torch.randn(2, 4, 3, generator=gen), "pred_boxes": torch.rand(2, 4, 4, generator=gen)}
    sizes = [[2, 1], [0, 0]][rank]
    targets = [{"labels": torch.zeros(n, dtype=torch.int64),
                "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.4, 0.2]][:n]).reshape(n, 4)} for n in sizes]
    return outputs, targets


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
@pytest.mark.timeout(120)
def test_two_gloo_processes(tmp_path):
    # fork, not spawn: the children inherit the imported modules instead of importing torch again (seconds each).
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(rank, str(tmp_path / "init"), str(tmp_path / f"rank{rank}.json")))
             for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=100)
    assert [p.exitcode for p in procs] == [0, 0]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]

    # Means over the two ranks, clamped to >= 1: (3+0)/2, max((0+0)/2, 1), (5+2)/2.
    assert results[0]["counts"] == results[1]["counts"] == [1.5, 1.0, 3.5]

    # Rank 0 holds all 3 boxes but divides its L1 sum by the mean count 1.5, not by 3; rank 1 has none (loss 0).
    single_process = SetCriterion(2, HungarianMatcher(), losses=("boxes",))(*_rank_batch(0))["loss_bbox"].item()
    assert single_process > 0
    assert results[0]["loss_bbox"] == pytest.approx(single_process * 3 / 1.5, rel=1e-6)
    assert results[1]["loss_bbox"] == 0.0
