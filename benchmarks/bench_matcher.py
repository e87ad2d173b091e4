"""HungarianMatcher speed: vlpkit's per-image batched costs against DETR's full-matrix formulation, side by side.

Each group (`matcher B=.. T=.. K=..`) holds both implementations on the same inputs: Q = 100 queries, B images whose
target counts are drawn uniformly from [T/2, 3T/2] (mean T, so vlpkit pays for padding to the largest), K classes.
`extra_info["cost_entries"]` is the size of the cost tensor each one builds (DETR: B*Q*sum(T); vlpkit: B*Q*Tmax).
Quick grid inside `make test`; the issue's full grid (B in 2, 8, 32, 64; T in 7, 30; K in 91, 1600) under
`make bench`. Both must return the same assignment.
"""

from __future__ import annotations

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

from benchmarks.conftest import pick
from vlpkit.ops import HungarianMatcher

NUM_QUERIES = 100
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@torch.no_grad()
def detr_full_matrix_match(outputs, targets, cost_class=1.0, cost_bbox=5.0, cost_giou=2.0):
    """DETR's HungarianMatcher.forward (facebookresearch/detr, models/matcher.py): one [B*Q, sum(T)] cost for the
    whole batch, copied to the host, of which only the B diagonal [Q, T_i] blocks are solved."""
    bs, num_queries = outputs["pred_logits"].shape[:2]
    out_prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)
    out_bbox = outputs["pred_boxes"].flatten(0, 1)
    tgt_ids = torch.cat([v["labels"] for v in targets])
    tgt_bbox = torch.cat([v["boxes"] for v in targets])
    c_class = -out_prob[:, tgt_ids]
    c_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
    c_giou = -generalized_box_iou(box_convert(out_bbox, "cxcywh", "xyxy"), box_convert(tgt_bbox, "cxcywh", "xyxy"))
    cost = (cost_bbox * c_bbox + cost_class * c_class + cost_giou * c_giou).view(bs, num_queries, -1).cpu()
    sizes = [len(v["boxes"]) for v in targets]
    indices = [linear_sum_assignment(c[i]) for i, c in enumerate(cost.split(sizes, -1))]
    return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in indices]


def make_inputs(batch, mean_targets, num_classes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(batch, NUM_QUERIES, num_classes + 1, generator=gen),
        "pred_boxes": torch.rand(batch, NUM_QUERIES, 4, generator=gen) * 0.5 + 0.25,
    }
    sizes = torch.randint(mean_targets // 2, mean_targets + mean_targets // 2 + 1, (batch,), generator=gen).tolist()
    targets = []
    for n in sizes:
        lo = torch.rand(n, 2, generator=gen) * 0.7
        hi = lo + 0.02 + torch.rand(n, 2, generator=gen) * 0.28
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=gen).to(device),
                        "boxes": box_convert(torch.cat([lo, hi], -1), "xyxy", "cxcywh").to(device)})
    return {k: v.to(device) for k, v in outputs.items()}, targets


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_classes", pick([91], [91, 1600]))
@pytest.mark.parametrize("mean_targets", pick([7], [7, 30]))
@pytest.mark.parametrize("batch", pick([2, 8], [2, 8, 32, 64]))
@pytest.mark.parametrize("impl", ["vlpkit", "detr_full_matrix"])
def test_matcher_speed(benchmark, impl, batch, mean_targets, num_classes, device):
    outputs, targets = make_inputs(batch, mean_targets, num_classes, device)
    match = HungarianMatcher() if impl == "vlpkit" else detr_full_matrix_match
    sizes = [len(t["labels"]) for t in targets]
    benchmark.group = f"matcher B={batch} T={mean_targets} K={num_classes} {device}"
    benchmark.extra_info.update(
        impl=impl, B=batch, T=mean_targets, K=num_classes, device=device,
        cost_entries=batch * NUM_QUERIES * (max(sizes) if impl == "vlpkit" else sum(sizes)),
    )
    result = benchmark.pedantic(match, args=(outputs, targets), rounds=pick(3, 7), warmup_rounds=1, iterations=1)
    reference = detr_full_matrix_match(outputs, targets)
    for (pred, tgt), (ref_pred, ref_tgt) in zip(result, reference):
        assert torch.equal(pred, ref_pred) and torch.equal(tgt, ref_tgt)
