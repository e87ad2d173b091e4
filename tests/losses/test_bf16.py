"""Numerics under bf16 autocast (CPU), as `TrainerConfig(mixed_precision="bf16")` runs them.

Under `torch.autocast("cpu", dtype=torch.bfloat16)` the linear layers produce bfloat16 activations; the losses must
upcast before anything that bf16 cannot carry (softmax / log-sum-exp over a vocabulary, GIoU areas, the matcher's
costs, circle loss's exp(gamma * ...)). For each loss: the terms are float32 and finite, the gradients reaching
the (float32) parameters are finite, and the loss is within a stated tolerance of the fp32 computation.

Tolerances: autocast rounds a linear layer's inputs, weights and output to bf16 (8 significant bits, relative
rounding <= 2^-9 ~ 0.2% each), so its outputs differ from fp32 by ~1% of their scale. A loss that is a smooth
function of them moves by about as much: we allow 2% relative (plus a small absolute slack for terms near 0), and
for circle loss, whose gamma = 80 multiplies score errors, 5%. Gradients are compared by cosine similarity.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vlpkit.losses.set_criterion as criterion_module
import vlpkit.ops.matcher as matcher_module
from vlpkit import build_e2evlp
from vlpkit.data.batch import Batch
from vlpkit.losses import SetCriterion, circle_loss, label_smoothed_cross_entropy
from vlpkit.ops import HungarianMatcher
from vlpkit.pretraining.objective import ObjectiveConfig, PretrainingObjective

BF16 = torch.bfloat16
K, A, Q, D = 5, 6, 8, 32  # classes, attributes, queries, feature width of the toy heads


def autocast():
    return torch.autocast("cpu", dtype=BF16)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}


def assert_finite_grads(module: nn.Module) -> None:
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"


# ------------------------------------------------------------------------------------------- set criterion


class DetectionHead(nn.Module):
    """Features [B, Q, D] -> DETR-style outputs; under autocast every tensor it returns is bfloat16."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Linear(D, K + 1)
        self.boxes = nn.Linear(D, 4)
        self.attributes = nn.Linear(D, A)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pred_logits": self.logits(features), "pred_boxes": self.boxes(features).sigmoid(),
                "pred_attributes": self.attributes(features)}


def detection_batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(3, Q, D, generator=gen)
    targets = []
    for n in (3, 1, 4):
        lo = torch.rand(n, 2, generator=gen) * 0.6
        hi = lo + 0.05 + torch.rand(n, 2, generator=gen) * 0.3
        targets.append({"labels": torch.randint(0, K, (n,), generator=gen),
                        "boxes": torch.cat([(lo + hi) / 2, hi - lo], -1),  # normalised cxcywh
                        "attributes": [torch.randint(0, A, (int(c),), generator=gen).tolist()
                                       for c in torch.randint(0, 3, (n,), generator=gen)]})
    return features, targets


def test_set_criterion_with_attributes_under_bf16():
    torch.manual_seed(0)
    head = DetectionHead()
    features, targets = detection_batch()
    matcher = HungarianMatcher()
    criterion = SetCriterion(K, matcher, num_attributes=A)
    dtypes: dict[str, set] = {}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            floats = [a.dtype for a in args if torch.is_tensor(a) and a.is_floating_point()]
            dtypes.setdefault(name, set()).update(floats)
            return fn(*args, **kwargs)
        return wrapped

    with autocast():
        outputs = head(features)
        assert {v.dtype for v in outputs.values()} == {BF16}  # what a bf16 model hands the criterion
        with mock.patch.object(matcher_module, "batched_generalized_box_iou",
                               spy("matcher giou", matcher_module.batched_generalized_box_iou)), \
             mock.patch.object(criterion_module, "batched_generalized_box_iou",
                               spy("criterion giou", criterion_module.batched_generalized_box_iou)), \
             mock.patch.object(torch, "cdist", spy("matcher l1 cost", torch.cdist)), \
             mock.patch.object(F, "l1_loss", spy("loss_bbox", F.l1_loss)), \
             mock.patch.object(F, "cross_entropy", spy("loss_ce", F.cross_entropy)):
            losses = criterion(outputs, targets)
        bf16_matches = matcher(outputs, targets)
        total = criterion.weighted_loss(losses)
    # boxes (L1, GIoU, the matcher's costs) and logits reach their losses as float32
    assert set(dtypes) == {"matcher giou", "criterion giou", "matcher l1 cost", "loss_bbox", "loss_ce"}
    assert all(found == {torch.float32} for found in dtypes.values()), dtypes
    for key, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), (key, value)
    assert losses["loss_attr"] > 0
    total.backward()
    assert_finite_grads(head)
    bf16_grads = grads(head)

    head.zero_grad()
    fp32_outputs = head(features)
    fp32 = criterion(fp32_outputs, targets)
    # the comparison is between the same assignments (a flip would be a discrete change, not rounding)
    for got, expected in zip(bf16_matches, matcher(fp32_outputs, targets)):
        assert torch.equal(got.pred_idx, expected.pred_idx) and torch.equal(got.tgt_idx, expected.tgt_idx)
    for key in fp32:
        if key != "class_error":
            torch.testing.assert_close(losses[key], fp32[key], rtol=2e-2, atol=1e-2, msg=key)
    criterion.weighted_loss(fp32).backward()
    for name, grad in grads(head).items():
        assert cosine(bf16_grads[name], grad) > 0.99, name


# ----------------------------------------------------------------------------------- token and pair losses


def test_label_smoothed_cross_entropy_under_bf16():
    torch.manual_seed(1)
    vocab, pad = 1000, 0
    proj = nn.Linear(D, vocab)
    with torch.no_grad():
        proj.weight.mul_(20)  # logits of tens: a softmax in bf16 would lose the small probabilities
    hidden = torch.randn(4, 12, D)
    targets = torch.randint(1, vocab, (4, 12))
    targets[:, 9:] = pad
    with autocast():
        logits = proj(hidden)
        assert logits.dtype == BF16
        loss = label_smoothed_cross_entropy(logits, targets, 0.1, ignore_index=pad)
        # the upcast happens before the log-softmax: the same as the fp32 function of the rounded logits
        upcast = label_smoothed_cross_entropy(logits.float(), targets, 0.1, ignore_index=pad)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.equal(loss, upcast)
    loss.backward()
    assert_finite_grads(proj)
    bf16_grads = grads(proj)
    proj.zero_grad()
    fp32 = label_smoothed_cross_entropy(proj(hidden), targets, 0.1, ignore_index=pad)
    torch.testing.assert_close(loss, fp32, rtol=2e-2, atol=1e-2)
    fp32.backward()
    assert all(cosine(bf16_grads[n], g) > 0.99 for n, g in grads(proj).items())


def test_circle_loss_under_bf16():
    torch.manual_seed(2)
    scorer = nn.Linear(D, 1)
    pairs = torch.randn(6, 5, D)  # 6 anchors: 2 positives and 3 negatives each
    pos_mask = torch.ones(6, 2, dtype=torch.bool)
    pos_mask[0, 1] = False  # padding

    def loss_of(scores):
        return circle_loss(scores[:, :2], scores[:, 2:], margin=0.25, gamma=80.0, pos_mask=pos_mask)

    with autocast():
        scores = scorer(pairs).squeeze(-1).sigmoid()
        assert scores.dtype == BF16
        loss = loss_of(scores)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert_finite_grads(scorer)
    bf16_grads = grads(scorer)
    scorer.zero_grad()
    fp32 = loss_of(scorer(pairs).squeeze(-1).sigmoid())
    torch.testing.assert_close(loss, fp32, rtol=5e-2, atol=1e-2)
    fp32.backward()
    assert all(cosine(bf16_grads[n], g) > 0.98 for n, g in grads(scorer).items())


# ---------------------------------------------------------------------------------------- full objective


def pretraining_batch(config, seed: int = 0, size: int = 64) -> Batch:
    """4 random images with texts, MLM/ITM labels, captions and boxes; the last image has no box annotation."""
    gen = torch.Generator().manual_seed(seed)
    b, length = 4, 10
    input_ids = torch.randint(5, config.vocab_size, (b, length), generator=gen)
    input_ids[:, 0], input_ids[:, -1] = config.cls_token_id, config.sep_token_id
    input_ids[1, 7:] = config.pad_token_id
    input_ids[1, 6] = config.sep_token_id
    attention_mask = (input_ids != config.pad_token_id).long()
    mlm_labels = torch.full_like(input_ids, -100)
    mlm_labels[:, 2:4] = input_ids[:, 2:4]
    masked = input_ids.clone()
    masked[:, 2:4] = config.mask_token_id
    caption_ids = input_ids.clone()
    targets = []
    for i, n in enumerate((2, 3, 1, 0)):
        lo = torch.rand(n, 2, generator=gen) * 0.5
        hi = lo + 0.1 + torch.rand(n, 2, generator=gen) * 0.3
        attributes = torch.randint(0, config.num_attributes, (n,), generator=gen)
        targets.append({"boxes": torch.cat([(lo + hi) / 2, hi - lo], -1),
                        "labels": torch.randint(0, config.num_classes, (n,), generator=gen),
                        "attributes": [[int(a)] for a in attributes],
                        "has_boxes": i < 3})
    return Batch(pixel_values=torch.randn(b, 3, size, size, generator=gen),
                 pixel_mask=torch.ones(b, size, size, dtype=torch.bool), input_ids=masked,
                 attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids), targets=targets,
                 mlm_labels=mlm_labels, itm_labels=torch.tensor([1, 0, 1, -100]), caption_ids=caption_ids)


def test_pretraining_objective_under_bf16():
    torch.manual_seed(3)
    model = build_e2evlp("e2evlp-tiny", dropout=0.0).eval()  # eval: no dropout draws to differ between runs
    cfg = model.config
    objective = PretrainingObjective(ObjectiveConfig(), cfg.num_classes, cfg.num_attributes, cfg.pad_token_id)
    batch = pretraining_batch(cfg)

    with autocast():
        out = objective(model, batch)
    expected_terms = {"loss", "mlm", "itm", "detection", "caption", "det/loss_attr", "det/loss_giou_0"}
    assert expected_terms <= set(out)
    for key, value in out.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), (key, value)
    out["loss"].backward()
    assert_finite_grads(model)
    bf16_grads = grads(model)

    model.zero_grad()
    fp32 = objective(model, batch)
    for key in ("loss", "mlm", "itm", "detection", "caption"):
        torch.testing.assert_close(out[key], fp32[key], rtol=2e-2, atol=1e-2, msg=key)
    fp32["loss"].backward()
    fp32_grads = grads(model)
    assert cosine(torch.cat([g.flatten() for g in bf16_grads.values()]),
                  torch.cat([g.flatten() for g in fp32_grads.values()])) > 0.95


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_bf16_predictions_are_named(bad):
    """A bf16 overflow (inf) or NaN in the predictions is reported by the matcher, not turned into a loss."""
    head = DetectionHead()
    features, targets = detection_batch(1)
    with autocast():
        outputs = head(features)
        outputs["pred_boxes"] = outputs["pred_boxes"].detach().clone()
        outputs["pred_boxes"][1, 2, 0] = float(bad)
        with pytest.raises(ValueError, match=r"non-finite matching cost for image 1.*pred_boxes.*\(2\)"):
            SetCriterion(K, HungarianMatcher(), num_attributes=A)(outputs, targets)
