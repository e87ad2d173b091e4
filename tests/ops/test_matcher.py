"""HungarianMatcher: agreement with DETR's full-matrix formulation and a scalar cost formula, optimality against
brute force, batch/single equivalence, empty targets, and the errors for bad inputs."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

import vlpkit.ops.matcher as matcher_module
from vlpkit.ops import HungarianMatcher, MatchIndices


def random_targets(gen: torch.Generator, sizes, num_classes, dtype=torch.float32):
    """Valid targets: xyxy corners inside [0, 1] converted to normalised cxcywh."""
    targets = []
    for n in sizes:
        a, b = torch.rand(n, 2, generator=gen, dtype=dtype), torch.rand(n, 2, generator=gen, dtype=dtype)
        lo, hi = torch.minimum(a, b), torch.maximum(a, b) + 0.02
        xyxy = torch.cat([lo, hi], -1).clamp(0, 1)
        targets.append({
            "labels": torch.randint(0, num_classes, (n,), generator=gen),
            "boxes": box_convert(xyxy, in_fmt="xyxy", out_fmt="cxcywh"),
        })
    return targets


def random_outputs(gen: torch.Generator, batch, num_queries, num_classes, dtype=torch.float32):
    return {
        "pred_logits": torch.randn(batch, num_queries, num_classes + 1, generator=gen, dtype=dtype),
        "pred_boxes": torch.rand(batch, num_queries, 4, generator=gen, dtype=dtype),
    }


def detr_reference(outputs, targets, cost_class=1.0, cost_bbox=5.0, cost_giou=2.0):
    """DETR's HungarianMatcher.forward (models/matcher.py): the full [B*Q, sum(T)] cost, diagonal blocks solved."""
    bs, num_queries = outputs["pred_logits"].shape[:2]
    out_prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)
    out_bbox = outputs["pred_boxes"].flatten(0, 1)
    tgt_ids = torch.cat([v["labels"] for v in targets])
    tgt_bbox = torch.cat([v["boxes"] for v in targets])
    c_class = -out_prob[:, tgt_ids]
    c_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
    c_giou = -generalized_box_iou(box_convert(out_bbox, "cxcywh", "xyxy"), box_convert(tgt_bbox, "cxcywh", "xyxy"))
    full = (cost_bbox * c_bbox + cost_class * c_class + cost_giou * c_giou).view(bs, num_queries, -1)
    sizes = [len(v["boxes"]) for v in targets]
    blocks = [c[i] for i, c in enumerate(full.split(sizes, -1))]
    matches = []
    for block in blocks:
        i, j = linear_sum_assignment(block.numpy())
        matches.append((torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)))
    return matches, blocks


def scalar_cost(logits, pred_box, label, tgt_box, weights=(1.0, 5.0, 2.0)):
    """One entry of the cost, written with Python floats from the definitions (softmax, L1, GIoU)."""
    exps = [math.exp(v) for v in logits]
    prob = exps[label] / sum(exps)
    l1 = sum(abs(p - t) for p, t in zip(pred_box, tgt_box))

    def corners(b):
        return b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2

    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = corners(pred_box), corners(tgt_box)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    giou = inter / union - (hull - union) / hull
    return weights[0] * -prob + weights[1] * l1 + weights[2] * -giou


def total_cost(block: torch.Tensor, match) -> float:
    pred_idx, tgt_idx = match
    return float(block[pred_idx, tgt_idx].sum()) if len(pred_idx) else 0.0


@pytest.mark.parametrize("weights", [(1.0, 5.0, 2.0), (2.0, 1.0, 0.5), (0.0, 1.0, 0.0)])
def test_matches_detr_full_matrix_reference(weights):
    gen = torch.Generator().manual_seed(1)
    sizes = [3, 0, 5, 12, 1]
    outputs = random_outputs(gen, len(sizes), 12, 7)
    targets = random_targets(gen, sizes, 7)
    matcher = HungarianMatcher(*weights)
    got = matcher(outputs, targets)
    expected, blocks = detr_reference(outputs, targets, *weights)
    for (gp, gt), (ep, et), block in zip(got, expected, blocks):
        assert torch.equal(gp, ep) and torch.equal(gt, et)
        assert total_cost(block, (gp, gt)) == pytest.approx(total_cost(block, (ep, et)), abs=1e-5)
    for cost, block in zip(matcher.cost_matrices(outputs, targets), blocks):
        torch.testing.assert_close(cost, block, atol=1e-5, rtol=1e-5)


def test_cost_matrices_match_scalar_formula():
    gen = torch.Generator().manual_seed(2)
    outputs = random_outputs(gen, 2, 3, 4, dtype=torch.float64)
    targets = random_targets(gen, [2, 1], 4, dtype=torch.float64)
    weights = (1.5, 3.0, 0.7)
    costs = HungarianMatcher(*weights).cost_matrices(outputs, targets)
    assert [tuple(c.shape) for c in costs] == [(3, 2), (3, 1)]
    for b, cost in enumerate(costs):
        for q, t in itertools.product(range(3), range(cost.shape[1])):
            expected = scalar_cost(outputs["pred_logits"][b, q].tolist(), outputs["pred_boxes"][b, q].tolist(),
                                   int(targets[b]["labels"][t]), targets[b]["boxes"][t].tolist(), weights)
            assert float(cost[q, t]) == pytest.approx(expected, abs=1e-9)


def test_swapped_objects_are_matched_crosswise():
    # Query 0 predicts exactly target 1 (class 2), query 1 exactly target 0 (class 0); query 2 is no-object.
    boxes = torch.tensor([[0.25, 0.25, 0.3, 0.3], [0.7, 0.6, 0.2, 0.4]])
    logits = torch.full((1, 3, 4), -5.0)
    logits[0, 0, 2] = logits[0, 1, 0] = logits[0, 2, 3] = 5.0
    outputs = {"pred_logits": logits, "pred_boxes": torch.stack([boxes[1], boxes[0], boxes[0] * 0.5])[None]}
    targets = [{"labels": torch.tensor([0, 2]), "boxes": boxes}]
    (match,) = HungarianMatcher()(outputs, targets)
    assert isinstance(match, MatchIndices)
    assert match.pred_idx.tolist() == [0, 1] and match.tgt_idx.tolist() == [1, 0]


def test_output_types():
    gen = torch.Generator().manual_seed(3)
    outputs = random_outputs(gen, 2, 10, 5)
    matches = HungarianMatcher()(outputs, random_targets(gen, [4, 6], 5))
    for match, n in zip(matches, [4, 6]):
        for idx in match:
            assert idx.dtype == torch.int64 and idx.device.type == "cpu" and idx.shape == (n,)
        assert torch.equal(match.pred_idx, match.pred_idx.sort().values)
        assert sorted(match.tgt_idx.tolist()) == list(range(n))


def test_images_without_targets():
    gen = torch.Generator().manual_seed(4)
    outputs = random_outputs(gen, 3, 8, 5)
    targets = random_targets(gen, [2, 0, 3], 5)
    matches = HungarianMatcher()(outputs, targets)
    assert matches[1].pred_idx.shape == (0,) and matches[1].tgt_idx.shape == (0,)
    assert matches[1].pred_idx.dtype == torch.int64 and matches[1].tgt_idx.dtype == torch.int64
    expected, _ = detr_reference(outputs, targets)
    for got, exp in zip(matches, expected):
        assert torch.equal(got.pred_idx, exp[0]) and torch.equal(got.tgt_idx, exp[1])

    all_empty = HungarianMatcher()(outputs, random_targets(gen, [0, 0, 0], 5))
    assert [(len(p), len(t)) for p, t in all_empty] == [(0, 0)] * 3
    no_images = {"pred_logits": torch.zeros(0, 8, 6), "pred_boxes": torch.zeros(0, 8, 4)}
    assert HungarianMatcher()(no_images, []) == []


def test_batch_equals_single_image():
    gen = torch.Generator().manual_seed(5)
    sizes = [1, 9, 0, 4, 20, 2]
    outputs = random_outputs(gen, len(sizes), 20, 30)
    targets = random_targets(gen, sizes, 30)
    matcher = HungarianMatcher()
    batched = matcher(outputs, targets)
    batched_costs = matcher.cost_matrices(outputs, targets)
    for b in range(len(sizes)):
        alone = {k: v[b : b + 1] for k, v in outputs.items()}
        (single,) = matcher(alone, [targets[b]])
        assert torch.equal(single.pred_idx, batched[b].pred_idx)
        assert torch.equal(single.tgt_idx, batched[b].tgt_idx)
        torch.testing.assert_close(matcher.cost_matrices(alone, [targets[b]])[0], batched_costs[b],
                                   atol=1e-6, rtol=0)


@settings(max_examples=50, deadline=None)
@given(
    num_queries=st.integers(1, 5),
    data=st.data(),
    num_classes=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    discrete=st.booleans(),
)
def test_assignment_is_optimal_by_brute_force(num_queries, data, num_classes, seed, discrete):
    num_targets = data.draw(st.integers(0, num_queries), label="num_targets")
    gen = torch.Generator().manual_seed(seed)
    outputs = random_outputs(gen, 1, num_queries, num_classes, dtype=torch.float64)
    targets = random_targets(gen, [num_targets], num_classes, dtype=torch.float64)
    if discrete:  # coarse values make many equal costs (ties)
        outputs["pred_logits"] = outputs["pred_logits"].round()
        grid = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
        outputs["pred_boxes"] = torch.cat([grid[torch.randint(0, 3, (1, num_queries, 2), generator=gen)],
                                           torch.full((1, num_queries, 2), 0.3, dtype=torch.float64)], -1)
        targets[0]["boxes"] = torch.cat([grid[torch.randint(0, 3, (num_targets, 2), generator=gen)],
                                         torch.full((num_targets, 2), 0.3, dtype=torch.float64)], -1)
    (match,) = HungarianMatcher()(outputs, targets)
    _, (block,) = detr_reference(outputs, targets)
    assert len(set(match.pred_idx.tolist())) == num_targets
    assert sorted(match.tgt_idx.tolist()) == list(range(num_targets))
    best = min(
        (sum(float(block[q, t]) for t, q in enumerate(perm))
         for perm in itertools.permutations(range(num_queries), num_targets)),
    )
    assert total_cost(block, match) == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("key", ["pred_logits", "pred_boxes"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("sizes", [[2, 3, 1], [2, 0, 1], [0, 0, 0]],
                         ids=["with-targets", "image-without-targets", "batch-without-targets"])
def test_non_finite_predictions_name_image_and_input(key, value, sizes):
    gen = torch.Generator().manual_seed(6)
    outputs = random_outputs(gen, 3, 6, 4)
    outputs[key][1, 2, 0] = value
    with pytest.raises(ValueError, match=rf"image 1\b.*{key}\'?\]\[1\] has NaN/inf in 1 queries \(2\)") as info:
        HungarianMatcher()(outputs, random_targets(gen, sizes, 4))
    assert "invalid numeric entries" not in str(info.value)


@pytest.mark.parametrize(
    ("box", "fragment"),
    [
        ([0.5, 0.5, 0.0, 0.2], "degenerate"),
        ([0.5, 0.5, 0.2, -0.1], "degenerate"),
        ([320.0, 240.0, 50.0, 40.0], "outside \\[0, 1\\]"),
        ([0.1, 0.1, 0.5, 0.5], "xyxy"),  # an xyxy box read as cxcywh pokes out of the image
        ([0.95, 0.5, 0.2, 0.2], "extends outside the image"),
        ([0.5, float("nan"), 0.2, 0.2], "non-finite"),
    ],
)
def test_invalid_target_box_names_image_and_box(box, fragment):
    gen = torch.Generator().manual_seed(7)
    outputs = random_outputs(gen, 3, 6, 4)
    targets = random_targets(gen, [1, 0, 3], 4)
    targets[2]["boxes"][1] = torch.tensor(box)
    with pytest.raises(ValueError, match=rf"image 2\), box 1: .*{fragment}"):
        HungarianMatcher()(outputs, targets)


def test_box_on_the_image_border_is_valid():
    outputs = random_outputs(torch.Generator().manual_seed(8), 1, 4, 2)
    whole_image = {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.1, 0.9, 0.2, 0.2]])}
    (match,) = HungarianMatcher()(outputs, [whole_image])
    assert len(match.pred_idx) == 2


@pytest.mark.parametrize("label", [4, 9, -1])
def test_label_out_of_range(label):
    outputs = random_outputs(torch.Generator().manual_seed(9), 2, 5, 4)
    targets = random_targets(torch.Generator().manual_seed(9), [2, 2], 4)
    targets[1]["labels"][0] = label
    with pytest.raises(ValueError, match=rf"image 1\), box 0: label {label} is outside \[0, 4\)"):
        HungarianMatcher()(outputs, targets)


def _bad_structure(case, targets):
    if case == "boxes_5_columns":
        targets[1]["boxes"] = torch.rand(2, 5)
    elif case == "boxes_1d":
        targets[1]["boxes"] = torch.rand(4)
    elif case == "float_labels":
        targets[1]["labels"] = targets[1]["labels"].float()
    elif case == "length_mismatch":
        targets[1]["labels"] = targets[1]["labels"][:1]
    elif case == "missing_boxes":
        del targets[1]["boxes"]
    return targets


@pytest.mark.parametrize(
    ("case", "error", "pattern"),
    [
        ("boxes_5_columns", ValueError, r"targets\[1\]\['boxes'\] \(image 1\) must be a floating tensor \[T, 4\]"),
        ("boxes_1d", ValueError, r"targets\[1\]\['boxes'\] \(image 1\)"),
        ("float_labels", ValueError, r"targets\[1\]\['labels'\] \(image 1\) must be an integer tensor"),
        ("length_mismatch", ValueError, r"image 1 has 1 labels but 2 boxes"),
        ("missing_boxes", KeyError, r"targets\[1\] \(image 1\) has no 'boxes'"),
    ],
)
def test_malformed_targets(case, error, pattern):
    gen = torch.Generator().manual_seed(10)
    outputs = random_outputs(gen, 2, 5, 4)
    targets = _bad_structure(case, random_targets(gen, [2, 2], 4))
    with pytest.raises(error, match=pattern):
        HungarianMatcher()(outputs, targets)


def test_batch_size_and_query_count_mismatches():
    gen = torch.Generator().manual_seed(11)
    outputs = random_outputs(gen, 2, 3, 4)
    with pytest.raises(ValueError, match="got 1 target dicts for a batch of 2 images"):
        HungarianMatcher()(outputs, random_targets(gen, [1], 4))
    with pytest.raises(ValueError, match="image 1 has 4 targets but the model has only 3 queries"):
        HungarianMatcher()(outputs, random_targets(gen, [1, 4], 4))
    bad = dict(outputs, pred_boxes=outputs["pred_boxes"][:, :, :2])
    with pytest.raises(ValueError, match=r"pred_boxes'\] must be \[B, Q, 4\]"):
        HungarianMatcher()(bad, random_targets(gen, [1, 1], 4))


@pytest.mark.parametrize("weights", [(-1.0, 5.0, 2.0), (0.0, 0.0, 0.0), (1.0, float("nan"), 2.0)])
def test_bad_weights(weights):
    with pytest.raises(ValueError, match="HungarianMatcher"):
        HungarianMatcher(*weights)


def test_float32_costs_under_autocast():
    gen = torch.Generator().manual_seed(12)
    outputs = random_outputs(gen, 3, 10, 6)
    targets = random_targets(gen, [4, 0, 7], 6)
    half = {k: v.to(torch.bfloat16) for k, v in outputs.items()}
    upcast = {k: v.float() for k, v in half.items()}
    matcher = HungarianMatcher()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        costs = matcher.cost_matrices(half, targets)
        matches = matcher(half, targets)
    expected_costs = matcher.cost_matrices(upcast, targets)
    for cost, expected in zip(costs, expected_costs):
        assert cost.dtype == torch.float32
        assert torch.equal(cost, expected)
    for got, exp in zip(matches, matcher(upcast, targets)):
        assert torch.equal(got.pred_idx, exp.pred_idx) and torch.equal(got.tgt_idx, exp.tgt_idx)


def test_vmap_fallback_for_older_torchvision(monkeypatch):
    gen = torch.Generator().manual_seed(13)
    a = box_convert(torch.rand(4, 5, 4, generator=gen) * 0.5 + 0.25, "cxcywh", "xyxy")
    b = box_convert(torch.rand(4, 3, 4, generator=gen) * 0.5 + 0.25, "cxcywh", "xyxy")
    loop = torch.stack([generalized_box_iou(a[i], b[i]) for i in range(4)])
    for batched in (True, False):
        monkeypatch.setattr(matcher_module, "_BATCHED_BOX_OPS", batched)
        torch.testing.assert_close(matcher_module.batched_generalized_box_iou(a, b), loop)
        assert matcher_module.batched_generalized_box_iou(a[:0], b[:0]).shape == (0, 5, 3)


@pytest.mark.parametrize("images_per_chunk", [1, 2])
def test_softmax_in_chunks_gives_the_same_costs(monkeypatch, images_per_chunk):
    gen = torch.Generator().manual_seed(16)
    outputs = random_outputs(gen, 5, 6, 9)
    targets = random_targets(gen, [2, 0, 6, 1, 3], 9)
    whole = HungarianMatcher().cost_matrices(outputs, targets)
    monkeypatch.setattr(matcher_module, "_SOFTMAX_CHUNK", images_per_chunk * 6 * 10)
    chunked = HungarianMatcher().cost_matrices(outputs, targets)
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)


def test_real_coco_annotations(realdata):
    """The 839 boxes of the real COCO sample, normalised the usual way, are valid and every one is matched; the
    raw pixel xywh boxes are rejected with the image and box named."""
    data = json.loads((realdata / "coco_detection" / "instances_val2014_100.json").read_text())
    images = {im["id"]: im for im in data["images"]}
    per_image: dict[int, list] = {}
    for ann in data["annotations"]:
        per_image.setdefault(ann["image_id"], []).append(ann)
    image_ids = sorted(per_image)[:16]
    targets, raw = [], []
    for image_id in image_ids:
        anns, im = per_image[image_id], images[image_id]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        scale = torch.tensor([im["width"], im["height"], im["width"], im["height"]], dtype=torch.float32)
        labels = torch.tensor([a["category_id"] for a in anns])
        targets.append({"labels": labels, "boxes": box_convert(xywh, "xywh", "cxcywh") / scale})
        raw.append({"labels": labels, "boxes": xywh})
    num_queries = max(len(t["labels"]) for t in targets)
    outputs = random_outputs(torch.Generator().manual_seed(14), len(targets), num_queries, 91)
    matches = HungarianMatcher()(outputs, targets)
    assert [len(m.tgt_idx) for m in matches] == [len(t["labels"]) for t in targets]
    with pytest.raises(ValueError, match=r"image 0\), box 0: box \[.*\] has coordinates outside \[0, 1\]"):
        HungarianMatcher()(outputs, raw)


def test_single_device_to_host_copy(monkeypatch):
    """The costs (and the target checks) reach the host through one Tensor.cpu() call."""
    gen = torch.Generator().manual_seed(15)
    outputs = random_outputs(gen, 4, 10, 5)
    targets = random_targets(gen, [3, 0, 10, 1], 5)
    calls = []
    original = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        calls.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    HungarianMatcher()(outputs, targets)
    assert calls == [(4 * 10 * 10 + 4 * 10,)]  # [B, Q, Tmax] costs + [B, Tmax] target flags
