"""Property-based tests (hypothesis) of the box conversions and of GIoU as vlpkit uses them.

- `torchvision.ops.box_convert` between cxcywh, xyxy and xywh: round trips and the closed forms;
- GIoU (`torchvision.ops.generalized_box_iou`, vlpkit's batched form in the matcher and the set criterion)
  against a pure-Python formulation (intersection, union, enclosing box), and its invariants: range [-1, 1],
  GIoU(b, b) = 1, symmetry, IoU >= GIoU, invariance to translation and to (per-axis) scaling;
- the data pipeline's chain pixel xywh (COCO file) -> xyxy pixels (reader) -> normalised cxcywh (transforms, what
  the model is trained on) -> COCO xywh pixels (results files) and xyxy pixels (`Predictor.detect`), through
  vlpkit's own functions, against the clipped box computed by hand.

GIoU checks run in float64, where the formulas agree to ~1e-12; the pipeline runs in float32 as in training.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torchvision.ops import box_convert, box_iou, generalized_box_iou
from torchvision.transforms import v2

import vlpkit.ops.matcher as matcher_module
from vlpkit.data.readers.coco import CocoDetection
from vlpkit.data.readers.visual_genome import _xyxy as vg_xyxy
from vlpkit.data.transforms import PrepareInputs, ToModelInputs
from vlpkit.inference import Predictor
from vlpkit.losses import SetCriterion
from vlpkit.metrics.detection import to_coco_results
from vlpkit.ops import HungarianMatcher
from vlpkit.ops.box_checks import invalid_target_mask

F64 = torch.float64
TOL = 1e-9  # float64 agreement between the formulas (coordinates of magnitude <= ~1e3)

# ------------------------------------------------------------------------------------------------ strategies

_coord = st.floats(-100.0, 100.0, allow_nan=False, allow_infinity=False)
_size = st.floats(1e-2, 100.0, allow_nan=False, allow_infinity=False)


@st.composite
def xyxy_box(draw, coord=_coord, size=_size) -> tuple[float, float, float, float]:
    """A box with x2 > x1 and y2 > y1 (sizes bounded away from 0 so the areas are not all rounding)."""
    x1, y1, w, h = draw(coord), draw(coord), draw(size), draw(size)
    return (x1, y1, x1 + w, y1 + h)


@st.composite
def normalised_cxcywh(draw) -> tuple[float, float, float, float]:
    """A box inside the unit image (the matcher's and the criterion's target format)."""
    x1 = draw(st.floats(0.0, 0.95))
    y1 = draw(st.floats(0.0, 0.95))
    x2 = draw(st.floats(x1 + 0.01, 1.0))
    y2 = draw(st.floats(y1 + 0.01, 1.0))
    return ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)


boxes_list = st.lists(xyxy_box(), min_size=1, max_size=5)

# -------------------------------------------------------------------------------------- independent formulas


def area(b) -> float:
    return (b[2] - b[0]) * (b[3] - b[1])


def iou_giou_reference(a, b) -> tuple[float, float]:
    """(IoU, GIoU) of two xyxy boxes, Rezatofighi et al. 2019, Algorithm 1, in plain Python floats."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union, inter / union - (hull - union) / hull


def giou_reference(a, b) -> float:
    return iou_giou_reference(a, b)[1]


def t64(boxes) -> torch.Tensor:
    """A list of boxes -> float64 [N, 4] (also for N = 0)."""
    return torch.tensor(boxes, dtype=F64).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------- box_convert


@settings(max_examples=200, deadline=None)
@given(boxes_list)
def test_box_convert_closed_forms_and_round_trips(boxes):
    xyxy = t64(boxes)
    cxcywh = box_convert(xyxy, "xyxy", "cxcywh")
    xywh = box_convert(xyxy, "xyxy", "xywh")
    for (x1, y1, x2, y2), c, w in zip(boxes, cxcywh.tolist(), xywh.tolist()):
        assert c == pytest.approx([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], abs=TOL)
        assert w == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=TOL)
    # every pair of formats, and a full cycle through all three
    for fmt, value in (("cxcywh", cxcywh), ("xywh", xywh)):
        torch.testing.assert_close(box_convert(value, fmt, "xyxy"), xyxy, rtol=0, atol=TOL)
    torch.testing.assert_close(box_convert(cxcywh, "cxcywh", "xywh"), xywh, rtol=0, atol=TOL)
    torch.testing.assert_close(box_convert(xywh, "xywh", "cxcywh"), cxcywh, rtol=0, atol=TOL)
    cycle = box_convert(box_convert(box_convert(xyxy, "xyxy", "cxcywh"), "cxcywh", "xywh"), "xywh", "xyxy")
    torch.testing.assert_close(cycle, xyxy, rtol=0, atol=TOL)


# ---------------------------------------------------------------------------------------------------- GIoU


@settings(max_examples=200, deadline=None)
@given(boxes_list, boxes_list)
def test_giou_matches_the_reference_formula(boxes1, boxes2):
    expected = torch.tensor([[giou_reference(a, b) for b in boxes2] for a in boxes1], dtype=F64)
    torch.testing.assert_close(generalized_box_iou(t64(boxes1), t64(boxes2)), expected, rtol=0, atol=TOL)
    # vlpkit's batched form: torchvision's batched op (>= 0.24) and the vmap fallback give the same matrices
    batch1, batch2 = torch.stack([t64(boxes1)] * 2), torch.stack([t64(boxes2)] * 2)
    for batched in (True, False):
        with mock.patch.object(matcher_module, "_BATCHED_BOX_OPS", batched):
            got = matcher_module.batched_generalized_box_iou(batch1, batch2)
        torch.testing.assert_close(got, torch.stack([expected] * 2), rtol=0, atol=TOL)


@settings(max_examples=300, deadline=None)
@given(a=xyxy_box(), b=xyxy_box(), shift=st.tuples(_coord, _coord),
       scale=st.tuples(st.floats(0.05, 20.0), st.floats(0.05, 20.0)))
def test_giou_invariants(a, b, shift, scale):
    pair = t64([a, b])
    giou = generalized_box_iou(pair, pair)
    iou = box_iou(pair, pair)
    g = float(giou[0, 1])
    assert -1.0 - TOL <= g <= 1.0 + TOL
    torch.testing.assert_close(torch.diagonal(giou), torch.ones(2, dtype=F64), rtol=0, atol=TOL)  # GIoU(b, b) = 1
    torch.testing.assert_close(giou, giou.T, rtol=0, atol=TOL)  # symmetric
    assert float(iou[0, 1]) == pytest.approx(iou_giou_reference(a, b)[0], abs=TOL)
    assert float(iou[0, 1]) >= g - TOL  # the enclosing-box penalty is >= 0
    if float(iou[0, 1]) == 0.0:  # disjoint (or touching) boxes: GIoU <= 0, the penalty alone
        assert g <= TOL
    # translation, and scaling each axis by its own factor (every area scales by sx * sy; the ratios stay)
    sx, sy = scale
    moved = pair + t64([*shift, *shift])
    scaled = pair * t64([sx, sy, sx, sy])
    assert float(generalized_box_iou(moved, moved)[0, 1]) == pytest.approx(g, abs=1e-7)
    assert float(generalized_box_iou(scaled, scaled)[0, 1]) == pytest.approx(g, abs=1e-7)


@settings(max_examples=100, deadline=None)
@given(st.lists(normalised_cxcywh(), min_size=1, max_size=4), st.lists(normalised_cxcywh(), min_size=1, max_size=4))
def test_matcher_giou_cost_is_minus_the_reference_giou(preds, targets):
    """The GIoU term of the matcher's cost on normalised cxcywh boxes, isolated with zero class/L1 weights."""
    assume(len(targets) <= len(preds))
    outputs = {"pred_logits": torch.zeros(1, len(preds), 3, dtype=F64), "pred_boxes": t64(preds)[None]}
    target = [{"labels": torch.zeros(len(targets), dtype=torch.int64), "boxes": t64(targets)}]
    cost = HungarianMatcher(cost_class=0.0, cost_bbox=0.0, cost_giou=1.0).cost_matrices(outputs, target)[0]
    xyxy = lambda c: (c[0] - c[2] / 2, c[1] - c[3] / 2, c[0] + c[2] / 2, c[1] + c[3] / 2)  # noqa: E731
    expected = torch.tensor([[-giou_reference(xyxy(p), xyxy(t)) for t in targets] for p in preds], dtype=F64)
    torch.testing.assert_close(cost, expected, rtol=0, atol=TOL)


@settings(max_examples=100, deadline=None)
@given(st.lists(normalised_cxcywh(), min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_criterion_box_losses(targets, rng):
    """loss_giou = mean(1 - GIoU) and loss_bbox = mean L1 over matched pairs, by hand; and the predictions equal
    to the targets in another order are matched back to them (both losses 0)."""
    n = len(targets)
    criterion = SetCriterion(2, HungarianMatcher(), losses=("boxes",))
    labels = torch.zeros(n, dtype=torch.int64)
    target = [{"labels": labels, "boxes": t64(targets)}]
    order = list(range(n))
    rng.shuffle(order)
    permuted = {"pred_logits": torch.zeros(1, n, 3, dtype=F64), "pred_boxes": t64([targets[i] for i in order])[None]}
    losses = criterion(permuted, target)
    assert float(losses["loss_bbox"]) == pytest.approx(0.0, abs=TOL)
    assert float(losses["loss_giou"]) == pytest.approx(0.0, abs=TOL)

    # one query, one target: the match is forced, the losses are the pair's
    pred = rng.choice(targets)
    shifted = (min(pred[0] + 0.01, 1.0), pred[1], pred[2], pred[3])  # any box; need not lie in the image
    single = {"pred_logits": torch.zeros(1, 1, 3, dtype=F64), "pred_boxes": t64([shifted])[None]}
    losses = criterion(single, [{"labels": labels[:1], "boxes": t64(targets[:1])}])
    xyxy = lambda c: (c[0] - c[2] / 2, c[1] - c[3] / 2, c[0] + c[2] / 2, c[1] + c[3] / 2)  # noqa: E731
    assert float(losses["loss_giou"]) == pytest.approx(1 - giou_reference(xyxy(shifted), xyxy(targets[0])), abs=TOL)
    assert float(losses["loss_bbox"]) == pytest.approx(sum(abs(p - t) for p, t in zip(shifted, targets[0])), abs=TOL)


# ------------------------------------------------------------------------------------------ data pipeline

# Pixel coordinates on a 1/16 grid: exact in float32 and float64, so whether clipping leaves a box empty is
# decided exactly, and the float32 pipeline is compared with a float64 hand computation at 1e-3 px.
_GRID = 16
PIXEL_TOL = 1e-3


@st.composite
def coco_image(draw):
    """An image size (h, w) and COCO bboxes [x, y, w, h] in pixels, some sticking out of the image."""
    height, width = draw(st.integers(4, 300)), draw(st.integers(4, 300))
    boxes = []
    for _ in range(draw(st.integers(1, 6))):
        x = draw(st.integers(-width * _GRID // 4, width * _GRID)) / _GRID
        y = draw(st.integers(-height * _GRID // 4, height * _GRID)) / _GRID
        bw = draw(st.integers(1, width * _GRID)) / _GRID
        bh = draw(st.integers(1, height * _GRID)) / _GRID
        boxes.append([x, y, bw, bh])
    return height, width, boxes


def clipped_xyxy(box, height, width):
    """The COCO box [x, y, w, h] as xyxy clipped to the image, or None when nothing of it is inside."""
    x1, y1 = min(max(box[0], 0.0), width), min(max(box[1], 0.0), height)
    x2, y2 = min(max(box[0] + box[2], 0.0), width), min(max(box[1] + box[3], 0.0), height)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


@settings(max_examples=40, deadline=None)
@given(coco_image())
def test_pixel_normalised_coco_round_trip(sample):
    height, width, bboxes = sample
    expected = [c for c in (clipped_xyxy(b, height, width) for b in bboxes) if c is not None]
    instances = {
        "images": [{"id": 7, "file_name": "7.png", "height": height, "width": width}],
        "annotations": [{"id": i + 1, "image_id": 7, "category_id": 3 + i % 2, "bbox": b, "area": b[2] * b[3],
                         "iscrowd": 0} for i, b in enumerate(bboxes)],
        "categories": [{"id": 3, "name": "circle"}, {"id": 4, "name": "square"}],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "instances.json"
        path.write_text(json.dumps(instances))
        reader = CocoDetection(path, tmp)
        target = reader.annotation(0)["target"]
    assert reader.num_degenerate == len(bboxes) - len(expected)

    # COCO xywh -> clipped xyxy pixels (the COCO reader, and Visual Genome's converter)
    assert target["boxes"].dtype == torch.float32
    torch.testing.assert_close(target["boxes"].to(F64), t64(expected), rtol=0, atol=PIXEL_TOL)
    vg = vg_xyxy([{"x": b[0], "y": b[1], "w": b[2], "h": b[3]} for b in bboxes], "w", "h", width, height)
    kept = [i for i, b in enumerate(bboxes) if clipped_xyxy(b, height, width) is not None]
    torch.testing.assert_close(vg[kept].to(F64), t64(expected), rtol=0, atol=PIXEL_TOL)

    # xyxy pixels -> normalised cxcywh (the training transforms without resizing), valid for the matcher
    pipeline = v2.Compose([PrepareInputs(), ToModelInputs()])
    _, out, _ = pipeline(torch.zeros(3, height, width, dtype=torch.uint8), target, None)
    cxcywh = [((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
              for x1, y1, x2, y2 in expected]
    assert out["boxes"].dtype == torch.float32
    torch.testing.assert_close(out["boxes"].to(F64), t64(cxcywh), rtol=0, atol=1e-6)
    assert not invalid_target_mask(out["labels"], out["boxes"], num_classes=2).any()

    # normalised cxcywh -> COCO results (xywh pixels of the original image): the clipped annotation back
    n = len(expected)
    scores = torch.linspace(1.0, 0.5, n)
    results = to_coco_results([out["boxes"]], [scores], [out["labels"]], [7], [(height, width)],
                              reader.label_to_category_id)
    coco_xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in expected]
    assert [r["image_id"] for r in results] == [7] * n
    assert [r["category_id"] for r in results] == [instances["annotations"][i]["category_id"] for i in kept]
    torch.testing.assert_close(t64([r["bbox"] for r in results]), t64(coco_xywh), rtol=0, atol=PIXEL_TOL)
    # ... and the reader's own xyxy -> COCO converter agrees
    direct = reader.results_to_coco(7, target["boxes"], scores, target["labels"])
    torch.testing.assert_close(t64([r["bbox"] for r in direct]), t64(coco_xywh), rtol=0, atol=PIXEL_TOL)

    # normalised cxcywh -> xyxy pixels of the image as given (what Predictor.detect returns)
    names = SimpleNamespace(object_names=None, attribute_names=None)
    det = {"scores": scores, "labels": out["labels"], "boxes": out["boxes"]}
    shown = Predictor._format_detections(names, det, [height, width], threshold=0.0, max_detections=None)
    torch.testing.assert_close(shown["boxes"].to(F64), t64(expected), rtol=0, atol=PIXEL_TOL)
