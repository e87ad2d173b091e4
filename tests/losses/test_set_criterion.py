"""SetCriterion: DETR's losses computed DETR's way (full-matrix matcher, diagonal GIoU) on seeded batches, worked
examples for the cross-entropy and the attribute loss, empty targets, autocast, weights and input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

from vlpkit.losses import SetCriterion
from vlpkit.ops import HungarianMatcher

K = 5  # classes
A = 6  # attributes


def make_batch(seed, sizes, num_queries=8, num_aux=0, attributes=True, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)

    def layer():
        out = {
            "pred_logits": torch.randn(len(sizes), num_queries, K + 1, generator=gen, dtype=dtype),
            "pred_boxes": torch.rand(len(sizes), num_queries, 4, generator=gen, dtype=dtype) * 0.6 + 0.2,
        }
        if attributes:
            out["pred_attributes"] = torch.randn(len(sizes), num_queries, A, generator=gen, dtype=dtype)
        return {k: v.requires_grad_() for k, v in out.items()}

    outputs = layer()
    if num_aux:
        outputs["aux_outputs"] = [layer() for _ in range(num_aux)]
    targets = []
    for n in sizes:
        lo = torch.rand(n, 2, generator=gen) * 0.6
        hi = lo + 0.05 + torch.rand(n, 2, generator=gen) * 0.3
        target = {"labels": torch.randint(0, K, (n,), generator=gen),
                  "boxes": box_convert(torch.cat([lo, hi], -1), "xyxy", "cxcywh")}
        if attributes:
            counts = torch.randint(0, 4, (n,), generator=gen).tolist()
            target["attributes"] = [torch.randint(0, A, (c,), generator=gen).tolist() for c in counts]
        targets.append(target)
    return outputs, targets


def dense_match(outputs, targets):
    """DETR's matcher: full [B*Q, sum(T)] cost with weights 1/5/2, scipy on each diagonal block."""
    bs, nq = outputs["pred_logits"].shape[:2]
    with torch.no_grad():
        prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)
        boxes = outputs["pred_boxes"].flatten(0, 1)
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets])
        cost = (5 * torch.cdist(boxes, tgt_boxes, p=1) - prob[:, tgt_ids]
                - 2 * generalized_box_iou(box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")))
        cost = cost.view(bs, nq, -1).split([len(t["labels"]) for t in targets], -1)
    return [tuple(torch.as_tensor(x, dtype=torch.int64) for x in linear_sum_assignment(c[i])) for i, c in enumerate(cost)]


def detr_losses(outputs, targets, eos_coef=0.1, suffix="", log=True):
    """DETR's SetCriterion.loss_labels / loss_boxes (models/detr.py), single process."""
    indices = dense_match(outputs, targets)
    num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    logits = outputs["pred_logits"]
    target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
    target_classes = torch.full(logits.shape[:2], K, dtype=torch.int64)
    target_classes[batch_idx, src_idx] = target_classes_o
    empty_weight = torch.ones(K + 1)
    empty_weight[-1] = eos_coef
    out = {f"loss_ce{suffix}": F.cross_entropy(logits.transpose(1, 2), target_classes, empty_weight)}
    if log:
        if len(target_classes_o):
            acc = (logits[batch_idx, src_idx].argmax(-1) == target_classes_o).float().mean() * 100
        else:
            acc = torch.tensor(100.0)  # vlpkit reports class_error 0 without targets (DETR's accuracy() gives 0)
        out["class_error"] = 100 - acc
    src_boxes = outputs["pred_boxes"][batch_idx, src_idx]
    target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
    out[f"loss_bbox{suffix}"] = F.l1_loss(src_boxes, target_boxes, reduction="none").sum() / num_boxes
    giou = torch.diag(generalized_box_iou(box_convert(src_boxes, "cxcywh", "xyxy"),
                                          box_convert(target_boxes, "cxcywh", "xyxy")))
    out[f"loss_giou{suffix}"] = (1 - giou).sum() / num_boxes
    return out


def detr_losses_with_aux(outputs, targets, eos_coef=0.1):
    expected = detr_losses(outputs, targets, eos_coef)
    for i, aux in enumerate(outputs.get("aux_outputs", [])):
        expected.update(detr_losses(aux, targets, eos_coef, suffix=f"_{i}", log=False))
    return expected


def assert_losses_close(got, expected):
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key].to(got[key].dtype), atol=1e-6, rtol=1e-6, msg=key)


@pytest.mark.parametrize(("seed", "sizes", "eos_coef"), [(0, [3, 1, 6], 0.1), (1, [2, 0, 8, 1], 0.1), (2, [5], 0.4)])
def test_matches_detr_reference_with_aux_layers(seed, sizes, eos_coef):
    outputs, targets = make_batch(seed, sizes, num_aux=2, attributes=False)
    criterion = SetCriterion(K, HungarianMatcher(), eos_coef=eos_coef, losses=("labels", "boxes"))
    assert_losses_close(criterion(outputs, targets), detr_losses_with_aux(outputs, targets, eos_coef))


def test_loss_ce_worked_example():
    # One image, 3 queries, 1 target (class 1) that query 0 matches exactly; queries 1 and 2 are no-object.
    logits = torch.tensor([[[0.2, 2.0, -1.0, 0.0, 0.5, 0.1],
                            [1.0, 0.0, 0.0, 0.0, 0.0, 1.5],
                            [0.0, 0.3, 0.0, -0.7, 0.0, 0.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]]])
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    losses = SetCriterion(K, HungarianMatcher(), eos_coef=0.25, losses=("labels",))(
        {"pred_logits": logits, "pred_boxes": boxes}, targets)
    z = logits[0].double().numpy()
    nll = np.log(np.exp(z).sum(1)) - z[np.arange(3), [1, K, K]]
    weights = np.array([1.0, 0.25, 0.25])
    assert losses["loss_ce"].item() == pytest.approx((weights * nll).sum() / weights.sum(), rel=1e-6)
    assert losses["class_error"].item() == 0.0


def test_class_error_counts_wrong_argmax_among_matched():
    # Two targets matched by position; query 0 predicts the right class, query 1 the wrong one -> 50 %.
    logits = torch.zeros(1, 3, K + 1)
    logits[0, 0, 2] = logits[0, 1, 4] = 3.0
    boxes = torch.tensor([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.05, 0.05]]])
    targets = [{"labels": torch.tensor([2, 1]), "boxes": boxes[0, :2].clone()}]
    losses = SetCriterion(K, HungarianMatcher(cost_class=0.0), losses=("labels",))(
        {"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert losses["class_error"].item() == pytest.approx(50.0)
    assert not losses["class_error"].requires_grad


def _attr_outputs():
    """Two images, 3 queries each; matching is forced by exact boxes: image 0 query 2 <-> target 0, query 0 <->
    target 1; image 1 query 1 <-> target 0."""
    gen = torch.Generator().manual_seed(3)
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.9, 0.9, 0.05, 0.05], [0.6, 0.5, 0.3, 0.4]],
                          [[0.1, 0.8, 0.1, 0.1], [0.4, 0.4, 0.2, 0.3], [0.8, 0.2, 0.1, 0.1]]])
    outputs = {"pred_logits": torch.zeros(2, 3, K + 1), "pred_boxes": boxes,
               "pred_attributes": torch.randn(2, 3, A, generator=gen, dtype=torch.float64).float()}
    targets = [
        {"labels": torch.tensor([1, 3]), "boxes": boxes[0, [2, 0]].clone(), "attributes": [[1, 3, 1], []]},
        {"labels": torch.tensor([0]), "boxes": boxes[1, [1]].clone(), "attributes": [[4]]},
    ]
    return outputs, targets


def test_attribute_loss_worked_example():
    outputs, targets = _attr_outputs()
    criterion = SetCriterion(K, HungarianMatcher(), losses=("attributes",), num_attributes=A)
    loss = criterion(outputs, targets)["loss_attr"].item()

    def log_p(z, a):  # log softmax from the definition, in float64
        z = np.asarray(z, dtype=np.float64)
        return z[a] - math.log(np.exp(z).sum())

    z = outputs["pred_attributes"].tolist()
    box_a = -(log_p(z[0][2], 1) + log_p(z[0][2], 3)) / 2  # {1, 3}: the repeated 1 counts once
    box_b = -log_p(z[1][1], 4)
    assert loss == pytest.approx((box_a + box_b) / 2, rel=1e-6)  # 2 boxes have attributes; the third is ignored


def test_attribute_loss_ignores_boxes_without_attributes():
    outputs, targets = _attr_outputs()
    criterion = SetCriterion(K, HungarianMatcher(), losses=("attributes",), num_attributes=A)
    base = criterion(outputs, targets)["loss_attr"]
    changed = {k: v.clone() for k, v in outputs.items()}
    changed["pred_attributes"][0, 0] += torch.arange(A) * 3.0  # matched, but its target has no attributes
    changed["pred_attributes"][0, 1] -= 5.0  # unmatched
    changed["pred_attributes"][1, 2] *= 4.0  # unmatched
    assert criterion(changed, targets)["loss_attr"].item() == pytest.approx(base.item(), rel=1e-7)
    changed["pred_attributes"][1, 1, 4] += 1.0  # the attributed query of image 1
    assert criterion(changed, targets)["loss_attr"].item() != pytest.approx(base.item(), rel=1e-3)

    # An image without the "attributes" key counts as a list of empty lists.
    without_key = [dict(targets[0]), {k: v for k, v in targets[1].items() if k != "attributes"}]
    empty_lists = [dict(targets[0]), dict(targets[1], attributes=[[]])]
    a = criterion(outputs, without_key)["loss_attr"]
    b = criterion(outputs, empty_lists)["loss_attr"]
    assert a.item() == b.item() and a.item() != base.item()


def test_attribute_loss_with_aux_layers_and_no_attributes_at_all():
    outputs, targets = make_batch(4, [2, 3], num_aux=1)
    criterion = SetCriterion(K, HungarianMatcher(), num_attributes=A)
    losses = criterion(outputs, targets)
    assert {"loss_attr", "loss_attr_0"} <= set(losses)
    for t in targets:
        t["attributes"] = [[] for _ in t["attributes"]]
    losses = criterion(outputs, targets)
    assert losses["loss_attr"].item() == 0.0 and losses["loss_attr_0"].item() == 0.0
    losses["loss_attr"].backward()  # still part of the graph (DDP needs every head to get a gradient)
    assert torch.count_nonzero(outputs["pred_attributes"].grad) == 0


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda t: t[1].__setitem__("attributes", [[A]]), rf"image 1, box 0: attribute id {A} is not an int in"),
        (lambda t: t[1].__setitem__("attributes", [[-1]]), r"image 1, box 0: attribute id -1"),
        (lambda t: t[1].__setitem__("attributes", [[True]]), r"image 1, box 0: attribute id True"),
        (lambda t: t[0].__setitem__("attributes", [[1]]), r"targets\[0\]\['attributes'\] \(image 0\) must be a list of 2"),
        (lambda t: t[0].__setitem__("attributes", [[1], 2]), r"\(image 0, box 1\) must be a list of attribute ids"),
    ],
)
def test_bad_attributes(mutate, pattern):
    outputs, targets = _attr_outputs()
    mutate(targets)
    with pytest.raises(ValueError, match=pattern):
        SetCriterion(K, HungarianMatcher(), num_attributes=A)(outputs, targets)


def test_attribute_head_configuration_errors():
    outputs, targets = _attr_outputs()
    with pytest.raises(ValueError, match="outputs has 'pred_attributes' but num_attributes=None"):
        SetCriterion(K, HungarianMatcher())(outputs, targets)
    no_head = {k: v for k, v in outputs.items() if k != "pred_attributes"}
    with pytest.raises(ValueError, match=r"targets \[0, 1\] carry 'attributes' but num_attributes=None"):
        SetCriterion(K, HungarianMatcher())(no_head, targets)
    with pytest.raises(KeyError, match="no 'pred_attributes'"):
        SetCriterion(K, HungarianMatcher(), num_attributes=A)(no_head, targets)
    with pytest.raises(ValueError, match=r"pred_attributes'\] must be a floating tensor \[2, 3, 7\]"):
        SetCriterion(K, HungarianMatcher(), num_attributes=A + 1)(outputs, targets)
    # Leaving "attributes" out of `losses` ignores both the head and the labels, as asked.
    losses = SetCriterion(K, HungarianMatcher(), losses=("labels", "boxes"))(outputs, targets)
    assert "loss_attr" not in losses


def test_empty_images_and_all_empty_batch():
    outputs, targets = make_batch(5, [0, 4, 0], num_aux=1, attributes=False)
    criterion = SetCriterion(K, HungarianMatcher(), losses=("labels", "boxes"))
    assert_losses_close(criterion(outputs, targets), detr_losses_with_aux(outputs, targets))

    outputs, targets = make_batch(6, [0, 0], num_aux=1)
    criterion = SetCriterion(K, HungarianMatcher(), num_attributes=A)
    losses = criterion(outputs, targets)
    for key in ("loss_bbox", "loss_giou", "loss_attr", "loss_bbox_0", "loss_giou_0", "loss_attr_0", "class_error"):
        assert losses[key].item() == 0.0, key
    # Every query is no-object: the weighted mean reduces to the plain mean of -log p(no-object).
    expected_ce = -outputs["pred_logits"].log_softmax(-1)[..., K].mean()
    assert losses["loss_ce"].item() == pytest.approx(expected_ce.item(), rel=1e-6)
    criterion.weighted_loss(losses).backward()
    assert torch.isfinite(outputs["pred_logits"].grad).all() and outputs["pred_logits"].grad.abs().sum() > 0
    assert torch.count_nonzero(outputs["pred_boxes"].grad) == 0


def test_float32_under_autocast():
    outputs, targets = make_batch(7, [3, 2], num_aux=1)
    half = {k: v.detach().to(torch.bfloat16) for k, v in outputs.items() if k != "aux_outputs"}
    half["aux_outputs"] = [{k: v.detach().to(torch.bfloat16) for k, v in outputs["aux_outputs"][0].items()}]
    upcast = {k: v.float() for k, v in half.items() if k != "aux_outputs"}
    upcast["aux_outputs"] = [{k: v.float() for k, v in half["aux_outputs"][0].items()}]
    criterion = SetCriterion(K, HungarianMatcher(), num_attributes=A)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = criterion(half, targets)
    expected = criterion(upcast, targets)
    for key, value in got.items():
        assert value.dtype == torch.float32, key
        assert torch.equal(value, expected[key]), key


def test_gradients_reach_every_head_and_layer():
    outputs, targets = make_batch(8, [2, 3], num_aux=1)
    criterion = SetCriterion(K, HungarianMatcher(), num_attributes=A)
    criterion.weighted_loss(criterion(outputs, targets)).backward()
    for layer in (outputs, outputs["aux_outputs"][0]):
        for key in ("pred_logits", "pred_boxes", "pred_attributes"):
            assert layer[key].grad is not None and layer[key].grad.abs().sum() > 0, key


def test_weighted_loss():
    outputs, targets = make_batch(9, [2, 1], num_aux=2)
    losses = SetCriterion(K, HungarianMatcher(), num_attributes=A)(outputs, targets)
    defaults = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_attr": 1.0}
    expected = sum(defaults[k.rsplit("_", 1)[0] if k[-1].isdigit() else k] * v
                   for k, v in losses.items() if k != "class_error")
    criterion = SetCriterion(K, HungarianMatcher(), num_attributes=A)
    assert criterion.weight_dict == defaults
    torch.testing.assert_close(criterion.weighted_loss(losses), expected)

    custom = SetCriterion(K, HungarianMatcher(), {"loss_ce": 2.0, "loss_ce_1": 0.0, "loss_bbox": 1.0,
                                                  "loss_giou": 1.0, "loss_attr": 3.0}, num_attributes=A)
    expected = (2 * (losses["loss_ce"] + losses["loss_ce_0"])
                + sum(losses[f"loss_{n}{s}"] for n in ("bbox", "giou") for s in ("", "_0", "_1"))
                + 3 * sum(losses[f"loss_attr{s}"] for s in ("", "_0", "_1")))
    torch.testing.assert_close(custom.weighted_loss(losses), expected)
    # The returned losses are unweighted: the weights do not change them.
    torch.testing.assert_close(custom(outputs, targets)["loss_bbox"], losses["loss_bbox"])

    partial = SetCriterion(K, HungarianMatcher(), {"loss_ce": 1.0}, num_attributes=A)
    with pytest.raises(KeyError, match="no weight for 'loss_bbox'"):
        partial.weighted_loss(losses)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"losses": ("labels", "masks")}, "unknown losses"),
        ({"losses": "labels"}, "unknown losses"),
        ({"eos_coef": 0.0}, "eos_coef"),
        ({"weight_dict": {"loss_box": 5.0}}, "weight_dict key 'loss_box'"),
        ({"num_attributes": 0}, "num_attributes"),
    ],
)
def test_constructor_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SetCriterion(K, HungarianMatcher(), **kwargs)


def test_logit_count_must_match_num_classes():
    outputs, targets = make_batch(10, [1], attributes=False)
    with pytest.raises(ValueError, match=r"pred_logits has 6 logits, expected num_classes \+ 1 = 5"):
        SetCriterion(K - 1, HungarianMatcher(), losses=("labels",))(outputs, targets)
    outputs["aux_outputs"] = [{"pred_logits": outputs["pred_logits"]}]
    with pytest.raises(KeyError, match=r"aux_outputs\[0\]\).*no 'pred_boxes'"):
        SetCriterion(K, HungarianMatcher(), losses=("labels",))(outputs, targets)


def test_get_loss_dispatches_each_named_loss_like_detr():
    """`get_loss(name, ...)` is DETR's dispatcher: each name gives that loss of one layer, equal to DETR's."""
    outputs, targets = make_batch(3, [2, 3], attributes=False)
    criterion = SetCriterion(K, HungarianMatcher(), losses=("labels", "boxes"))
    indices = dense_match(outputs, targets)
    expected = detr_losses(outputs, targets, suffix="_7", log=False)
    boxes = criterion.get_loss("boxes", outputs, targets, indices, "_7", num_boxes=5.0)
    labels = criterion.get_loss("labels", outputs, targets, indices, "_7")
    assert set(labels) == {"loss_ce_7"} and set(boxes) == {"loss_bbox_7", "loss_giou_7"}
    assert_losses_close({**labels, **boxes}, expected)
    with pytest.raises(ValueError, match="unknown loss 'masks'"):
        criterion.get_loss("masks", outputs, targets, indices, "")
