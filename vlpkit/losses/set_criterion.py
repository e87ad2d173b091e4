"""DETR's set-prediction loss, with E2E-VLP's attribute term for Visual Genome.

After `HungarianMatcher` pairs each target with a query, for every decoder layer (the last, and each entry of
`outputs["aux_outputs"]`, matched anew):

- `loss_ce`: cross-entropy of all B*Q queries, the unmatched ones against the no-object class K, whose weight is
  `eos_coef` (a weighted mean, as `F.cross_entropy(weight=...)` computes it: divided by the sum of the weights).
- `loss_bbox`: L1 between matched normalised cxcywh boxes, summed, divided by `num_boxes`.
- `loss_giou`: 1 - GIoU between matched xyxy boxes, summed, divided by `num_boxes`.
- `loss_attr` (Visual Genome): for a matched target with attribute set S (duplicates dropped),
  `(1/|S|) * sum_{a in S} -log softmax(z_q)[a]`, z_q the query's attribute logits; summed over targets with at least
  one attribute and divided by their number `num_attr_boxes`. Targets without attributes contribute nothing.

`num_boxes` (and `num_attr_boxes`) is the count in this process averaged over all processes and clamped to >= 1
(`vlpkit.ops.distributed.reduce_counts`). Losses of auxiliary layer i carry the suffix `_i`. The returned losses
are unweighted; `SetCriterion.weighted_loss` applies `weight_dict`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert

from vlpkit.ops.box_checks import check_detection_outputs, check_targets
from vlpkit.ops.distributed import reduce_counts
from vlpkit.ops.matcher import MatchIndices, batched_generalized_box_iou

LOSS_NAMES = ("labels", "boxes", "attributes")
DEFAULT_WEIGHT_DICT = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_attr": 1.0}
_LOSS_KEY = re.compile(r"^(loss_ce|loss_bbox|loss_giou|loss_attr)(_\d+)?$")


class _AttributeTerms:
    """One image's attribute annotations as flat arrays: term k is attribute `ids[k]` of target `owner[k]`,
    weighted `weight[k]` = 1 / (number of distinct attributes of that target)."""

    def __init__(self, per_box: Sequence[tuple[int, ...]]):
        self.owner = np.asarray([t for t, ids in enumerate(per_box) for _ in ids], dtype=np.int64)
        self.ids = np.asarray([a for ids in per_box for a in ids], dtype=np.int64)
        self.weight = np.asarray([1.0 / len(ids) for ids in per_box for _ in ids], dtype=np.float64)
        self.num_boxes = sum(1 for ids in per_box if ids)
        self.num_targets = len(per_box)


class SetCriterion(nn.Module):
    """Losses of a DETR-style detector given its outputs, the targets and a matcher (DETR's `SetCriterion`).

    Args:
        num_classes: K, the number of object classes; the model predicts K+1 logits, index K being no-object.
        matcher: called as `matcher(outputs, targets)`, returns one `(pred_idx, tgt_idx)` per image
            (`vlpkit.ops.HungarianMatcher`); it must match every target.
        weight_dict: weight of each loss for `weighted_loss`; keys `loss_ce`, `loss_bbox`, `loss_giou`, `loss_attr`
            (used for the auxiliary layers too), or `loss_ce_0` etc. to weigh a layer differently. None: DETR's
            defaults, `DEFAULT_WEIGHT_DICT` (ce 1, bbox 5, giou 2, attr 1).
        eos_coef: cross-entropy weight of the no-object class (> 0).
        losses: which of "labels" (`loss_ce`, plus the metric `class_error` on the last layer), "boxes"
            (`loss_bbox`, `loss_giou`) and "attributes" (`loss_attr`) to compute.
        num_attributes: A, the size of the attribute head. None: the model has no attribute head and "attributes"
            is skipped (outputs with "pred_attributes", or targets with "attributes", then raise instead of being
            ignored).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Mapping[str, float] | None = None,
        eos_coef: float = 0.1,
        losses: Sequence[str] = LOSS_NAMES,
        num_attributes: int | None = None,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"SetCriterion: num_classes must be a positive int, got {num_classes!r}")
        if not (math.isfinite(eos_coef) and eos_coef > 0):
            raise ValueError(f"SetCriterion: eos_coef must be finite and > 0, got {eos_coef}")
        unknown = [name for name in losses if name not in LOSS_NAMES]
        if unknown or isinstance(losses, str):
            raise ValueError(f"SetCriterion: unknown losses {unknown or losses!r}; choose from {LOSS_NAMES}")
        if num_attributes is not None and (not isinstance(num_attributes, int) or num_attributes < 1):
            raise ValueError(f"SetCriterion: num_attributes must be a positive int or None, got {num_attributes!r}")
        weight_dict = dict(DEFAULT_WEIGHT_DICT if weight_dict is None else weight_dict)
        for key, value in weight_dict.items():
            if not _LOSS_KEY.match(key):
                raise ValueError(f"SetCriterion: weight_dict key {key!r} is not a loss name ({DEFAULT_WEIGHT_DICT})")
            if not math.isfinite(value):
                raise ValueError(f"SetCriterion: weight_dict[{key!r}] must be finite, got {value}")

        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = float(eos_coef)
        self.num_attributes = num_attributes
        self.requested_losses = tuple(losses)
        self.losses = tuple(n for n in losses if n != "attributes" or num_attributes is not None)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = self.eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
                f"num_attributes={self.num_attributes}")

    def weighted_loss(self, loss_dict: Mapping[str, Tensor]) -> Tensor:
        """Sum of `weight * loss` over the `loss_*` entries of `loss_dict` (metrics such as `class_error` are left
        out). An auxiliary key `loss_ce_3` takes `weight_dict["loss_ce_3"]` if present, else `weight_dict["loss_ce"]`.
        """
        total = None
        for key, value in loss_dict.items():
            match = _LOSS_KEY.match(key)
            if match is None:
                continue
            weight = self.weight_dict.get(key, self.weight_dict.get(match.group(1)))
            if weight is None:
                raise KeyError(f"SetCriterion.weighted_loss: no weight for {key!r} in weight_dict {self.weight_dict}")
            total = weight * value if total is None else total + weight * value
        if total is None:
            raise ValueError(f"SetCriterion.weighted_loss: no loss_* entry in {sorted(loss_dict)}")
        return total

    def forward(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """Match every decoder layer's predictions to the targets and compute the requested losses.

        Args:
            outputs: {"pred_logits": [B, Q, K+1], "pred_boxes": [B, Q, 4] normalised cxcywh, "pred_attributes":
                [B, Q, A] (when num_attributes is set), "aux_outputs": optional list of dicts with the same keys}.
            targets: B dicts {"labels": int64 [T], "boxes": float [T, 4] normalised cxcywh, "attributes": optional
                list of T lists of attribute ids in [0, A) (an image without the key has no attribute labels)}.

        Returns:
            Scalar float32 tensors: `loss_ce`, `loss_bbox`, `loss_giou`, `loss_attr` (those requested), `loss_*_i`
            for auxiliary layer i, and `class_error` (percent of the last layer's matched queries whose arg-max
            class is wrong; 0 without targets; a metric without gradient, not a loss).
        """
        where = type(self).__name__
        layers = [(outputs, "", where)]
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            layers.append((aux, f"_{i}", f"{where} (aux_outputs[{i}])"))
        for layer, _, layer_where in layers:
            self._check_outputs(layer, layer_where)
        batch = outputs["pred_logits"].shape[0]
        sizes = check_targets(targets, batch, where)
        attributes = self._attribute_terms(targets, sizes) if "attributes" in self.losses else None
        if attributes is None and "attributes" in self.requested_losses:
            labelled = [i for i, t in enumerate(targets) if t.get("attributes") is not None]
            if labelled:
                raise ValueError(f"{where}: targets {labelled[:10]} carry 'attributes' but num_attributes=None, so "
                                 "they would be ignored; pass num_attributes=A (or drop 'attributes' from losses)")

        device = outputs["pred_logits"].device
        counts = [sum(sizes)] + ([sum(a.num_boxes for a in attributes)] if attributes is not None else [])
        num_boxes, *rest = reduce_counts(counts, device)
        num_attr_boxes = rest[0] if rest else 1.0

        losses: dict[str, Tensor] = {}
        with torch.autocast(device_type=device.type, enabled=False):
            for layer, suffix, _ in layers:
                indices = self.matcher(layer, targets)
                for name in self.losses:
                    losses.update(self.get_loss(name, layer, targets, indices, suffix, num_boxes=num_boxes,
                                                attributes=attributes, num_attr_boxes=num_attr_boxes))
        return losses

    def get_loss(self, loss: str, outputs, targets, indices, suffix: str, **kwargs) -> dict[str, Tensor]:
        """One named loss of one decoder layer (DETR's dispatcher): "labels", "boxes" or "attributes".

        kwargs: num_boxes (the boxes' normaliser), attributes (per-image `_AttributeTerms`), num_attr_boxes.
        """
        loss_map = {"labels": self._loss_labels, "boxes": self._loss_boxes, "attributes": self._loss_attributes}
        if loss not in loss_map:
            raise ValueError(f"SetCriterion: unknown loss {loss!r}; choose from {sorted(loss_map)}")
        return loss_map[loss](outputs, targets, indices, suffix, **kwargs)

    def _check_outputs(self, outputs: Mapping[str, Tensor], where: str) -> None:
        _, _, num_logits = check_detection_outputs(outputs, where)
        if num_logits != self.num_classes + 1:
            raise ValueError(f"{where}: pred_logits has {num_logits} logits, expected num_classes + 1 = "
                             f"{self.num_classes + 1}")
        if "attributes" in self.losses:
            pred = outputs.get("pred_attributes")
            if pred is None:
                raise KeyError(f"{where}: 'attributes' loss requested (num_attributes={self.num_attributes}) but "
                               f"outputs has no 'pred_attributes' (keys: {sorted(outputs)})")
            expected = (*outputs["pred_logits"].shape[:2], self.num_attributes)
            if tuple(pred.shape) != expected or not pred.is_floating_point():
                raise ValueError(f"{where}: outputs['pred_attributes'] must be a floating tensor {list(expected)} "
                                 f"(num_attributes={self.num_attributes}), got {pred.dtype} {tuple(pred.shape)}")
        elif "attributes" in self.requested_losses and "pred_attributes" in outputs:
            raise ValueError(f"{where}: outputs has 'pred_attributes' but num_attributes=None, so the attribute head "
                             "would get no loss; pass num_attributes=A (or drop 'attributes' from losses)")

    def _attribute_terms(self, targets: Sequence[Mapping], sizes: Sequence[int]) -> list[_AttributeTerms]:
        """Validate `targets[i]["attributes"]` (host-side lists) and flatten them per image."""
        terms = []
        for image, (target, size) in enumerate(zip(targets, sizes)):
            per_box: list[tuple[int, ...]] = [()] * size
            raw = target.get("attributes")
            if raw is not None:
                if isinstance(raw, (str, bytes, Tensor)) or not isinstance(raw, Sequence) or len(raw) != size:
                    got = f"length {len(raw)}" if isinstance(raw, Sequence) else type(raw).__name__
                    raise ValueError(f"SetCriterion: targets[{image}]['attributes'] (image {image}) must be a list "
                                     f"of {size} lists of attribute ids (one per box), got {got}")
                per_box = [self._attribute_ids(ids, image, box) for box, ids in enumerate(raw)]
            terms.append(_AttributeTerms(per_box))
        return terms

    def _attribute_ids(self, ids, image: int, box: int) -> tuple[int, ...]:
        if isinstance(ids, (Tensor, np.ndarray)):
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise ValueError(f"SetCriterion: targets[{image}]['attributes'][{box}] (image {image}, box {box}) must be "
                             f"a list of attribute ids, got {type(ids).__name__}")
        for a in ids:
            if isinstance(a, bool) or not isinstance(a, (int, np.integer)) or not 0 <= a < self.num_attributes:
                raise ValueError(f"SetCriterion: image {image}, box {box}: attribute id {a!r} is not an int in "
                                 f"[0, {self.num_attributes}) (num_attributes={self.num_attributes})")
        # A set of attributes: a repeated id (VG has some) would otherwise count twice in the box's average.
        return tuple(dict.fromkeys(int(a) for a in ids))

    @staticmethod
    def _matched(indices: Sequence[MatchIndices], device: torch.device) -> tuple[Tensor, Tensor]:
        """(image index, query index) of every matched query, concatenated over the batch."""
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx.to(device), src_idx.to(device)

    def _loss_labels(self, outputs, targets, indices, suffix: str, **_) -> dict[str, Tensor]:
        logits = outputs["pred_logits"]
        dtype = torch.promote_types(logits.dtype, torch.float32)
        logits = logits.to(dtype)
        batch_idx, src_idx = self._matched(indices, logits.device)
        matched_labels = torch.cat([t["labels"][tgt.to(t["labels"].device)] for t, (_, tgt) in zip(targets, indices)])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch_idx, src_idx] = matched_labels.to(device=logits.device, dtype=torch.int64)
        weight = self.empty_weight.to(device=logits.device, dtype=dtype)
        out = {f"loss_ce{suffix}": F.cross_entropy(logits.transpose(1, 2), target_classes, weight)}
        if suffix == "":  # the metric is logged for the last layer only
            with torch.no_grad():
                if matched_labels.numel() == 0:
                    out["class_error"] = logits.new_zeros(())
                else:
                    correct = logits[batch_idx, src_idx].argmax(-1) == target_classes[batch_idx, src_idx]
                    out["class_error"] = 100.0 - 100.0 * correct.to(dtype).mean()
        return out

    def _loss_boxes(self, outputs, targets, indices, suffix: str, num_boxes: float, **_) -> dict[str, Tensor]:
        pred = outputs["pred_boxes"]
        dtype = torch.promote_types(pred.dtype, torch.float32)
        batch_idx, src_idx = self._matched(indices, pred.device)
        src_boxes = pred[batch_idx, src_idx].to(dtype)  # [M, 4]
        target_boxes = torch.cat([t["boxes"][tgt.to(t["boxes"].device)] for t, (_, tgt) in zip(targets, indices)])
        target_boxes = target_boxes.to(device=pred.device, dtype=dtype)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none").sum() / num_boxes
        # GIoU of each matched pair: the matcher's batched torchvision op on M batches of one box each, i.e. the
        # diagonal of DETR's [M, M] generalized_box_iou without computing the rest.
        giou = batched_generalized_box_iou(
            box_convert(src_boxes, in_fmt="cxcywh", out_fmt="xyxy")[:, None],
            box_convert(target_boxes, in_fmt="cxcywh", out_fmt="xyxy")[:, None],
        )[:, 0, 0]
        loss_giou = (1 - giou).sum() / num_boxes
        return {f"loss_bbox{suffix}": loss_bbox, f"loss_giou{suffix}": loss_giou}

    def _loss_attributes(self, outputs, targets, indices, suffix: str, attributes: list[_AttributeTerms],
                         num_attr_boxes: float, **_) -> dict[str, Tensor]:
        pred = outputs["pred_attributes"]
        dtype = torch.promote_types(pred.dtype, torch.float32)
        box_image, box_query, term_box, term_ids, term_weight = [], [], [], [], []
        num_rows = 0
        for image, ((src, tgt), terms) in enumerate(zip(indices, attributes)):
            if terms.num_boxes == 0:
                continue
            query_of_target = np.full(terms.num_targets, -1, dtype=np.int64)
            query_of_target[tgt.cpu().numpy()] = src.cpu().numpy()
            owners = np.unique(terms.owner)  # targets of this image with attributes, sorted
            queries = query_of_target[owners]
            if (queries < 0).any():
                raise ValueError(f"SetCriterion: image {image}: targets {owners[queries < 0].tolist()} have "
                                 "attributes but were not matched to any query")
            box_image.append(np.full(len(owners), image))
            box_query.append(queries)
            term_box.append(num_rows + np.searchsorted(owners, terms.owner))
            term_ids.append(terms.ids)
            term_weight.append(terms.weight)
            num_rows += len(owners)

        def cat(parts, np_dtype):
            return torch.from_numpy(np.concatenate(parts).astype(np_dtype) if parts else np.zeros(0, np_dtype))

        rows = pred[cat(box_image, np.int64).to(pred.device), cat(box_query, np.int64).to(pred.device)]
        log_prob = rows.to(dtype).log_softmax(-1)  # [boxes with attributes, A]
        terms = log_prob[cat(term_box, np.int64).to(pred.device), cat(term_ids, np.int64).to(pred.device)]
        weight = cat(term_weight, np.float64).to(device=pred.device, dtype=dtype)
        return {f"loss_attr{suffix}": -(terms * weight).sum() / num_attr_boxes}
