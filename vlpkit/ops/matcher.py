"""Hungarian matching between the Q predicted objects of each image and its T target objects (DETR, E2E-VLP).

The cost of assigning query q to target t is (Carion et al., 2020, eq. 2, with DETR's default weights)

    C[q, t] = cost_class * -p_q(c_t) + cost_bbox * ||b_q - b_t||_1 + cost_giou * -GIoU(b_q, b_t)

where p_q is the softmax over the K+1 logits of query q, the L1 distance is taken on normalised cxcywh boxes and
GIoU on their xyxy corners. `scipy.optimize.linear_sum_assignment` then finds, per image, the assignment of the T
targets to distinct queries with the lowest total cost.

DETR builds one [B*Q, sum(T)] cost over the whole batch and keeps only its B diagonal blocks, so its work and memory
grow with B^2. Here targets are padded to Tmax = max(T) and the per-image costs are computed as one [B, Q, Tmax]
tensor with batched ops (work linear in B), copied to the host once, and each [Q, T_i] slice is solved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torchvision
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import box_convert, generalized_box_iou

from vlpkit.ops.box_checks import (
    check_detection_outputs,
    check_targets,
    invalid_target_mask,
    nonfinite_prediction_message,
    raise_invalid_target,
)

# torchvision's box ops accept leading batch dimensions ([..., N, 4] x [..., M, 4] -> [..., N, M]) since 0.24
# (pytorch/vision#9058); before that they are 2-D only and torch.vmap maps the same function over the batch.
_TV_VERSION = tuple(int(p) for p in torchvision.__version__.split("+")[0].split(".")[:2])
_BATCHED_BOX_OPS = _TV_VERSION >= (0, 24)

# Entries per chunk of the class-cost softmax (1 MiB in float32; see `HungarianMatcher._host_costs`).
_SOFTMAX_CHUNK = 1 << 18


def batched_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """`torchvision.ops.generalized_box_iou` per batch element: [B, N, 4] x [B, M, 4] xyxy -> [B, N, M]."""
    if _BATCHED_BOX_OPS:
        return generalized_box_iou(boxes1, boxes2)
    if boxes1.shape[0] == 0:  # vmap cannot map over an empty batch
        return boxes1.new_zeros((0, boxes1.shape[1], boxes2.shape[1]))
    return torch.vmap(generalized_box_iou)(boxes1, boxes2)


class MatchIndices(NamedTuple):
    """One image's assignment: query `pred_idx[i]` is matched to target `tgt_idx[i]` (int64 [T], CPU).
    A tuple, so `pred_idx, tgt_idx = match` works as with DETR."""

    pred_idx: Tensor
    tgt_idx: Tensor


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of targets to queries, image by image (DETR's `HungarianMatcher`).

    Args:
        cost_class: weight of the classification cost `-p(class)`.
        cost_bbox: weight of the L1 distance between normalised cxcywh boxes.
        cost_giou: weight of `-GIoU` between the xyxy boxes.

    Costs are computed in float32 (float64 inputs stay float64) with autocast disabled, under no_grad.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        weights = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        for name, value in weights.items():
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"HungarianMatcher: {name} must be finite and >= 0, got {value}")
        if all(value == 0 for value in weights.values()):
            raise ValueError("HungarianMatcher: all cost weights are 0, every assignment would cost the same")
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)

    def extra_repr(self) -> str:
        return f"cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}"

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> list[MatchIndices]:
        """Match each image's targets to its queries.

        Args:
            outputs: {"pred_logits": [B, Q, K+1] logits (index K = no-object), "pred_boxes": [B, Q, 4] normalised
                cxcywh}; other keys (e.g. "aux_outputs") are ignored.
            targets: B dicts {"labels": int64 [T], "boxes": float [T, 4] normalised cxcywh}, T <= Q.

        Returns:
            B `MatchIndices(pred_idx, tgt_idx)` of int64 CPU tensors, length T_i each; `pred_idx` is sorted.

        Raises:
            ValueError: naming the image (and box) for a target label outside [0, K); a target box that is
                non-finite, degenerate (w or h <= 0), outside [0, 1] or sticking out of the image (see
                `vlpkit.ops.box_checks`); an image with more targets than queries; NaN/inf predictions (non-finite
                costs).
        """
        costs, sizes = self._host_costs(outputs, targets)
        matches = []
        for image, num_targets in enumerate(sizes):
            # [Q, T_i] block of this image; scipy solves the rectangular problem (every target gets a query).
            pred_idx, tgt_idx = linear_sum_assignment(costs[image, :, :num_targets])
            matches.append(MatchIndices(torch.from_numpy(pred_idx.astype(np.int64, copy=False)),
                                        torch.from_numpy(tgt_idx.astype(np.int64, copy=False))))
        return matches

    @torch.no_grad()
    def cost_matrices(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> list[Tensor]:
        """The per-image cost matrices that `forward` solves: B CPU tensors [Q, T_i] (for inspection and tests)."""
        costs, sizes = self._host_costs(outputs, targets)
        return [torch.from_numpy(costs[image, :, :n].copy()) for image, n in enumerate(sizes)]

    def _host_costs(
        self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]
    ) -> tuple[np.ndarray, list[int]]:
        """Validate, compute the padded [B, Q, Tmax] cost on the device and copy it to the host in one transfer."""
        where = type(self).__name__
        batch, num_queries, num_logits = check_detection_outputs(outputs, where)
        sizes = check_targets(targets, batch, where)
        for image, num_targets in enumerate(sizes):
            if num_targets > num_queries:
                raise ValueError(
                    f"{where}: image {image} has {num_targets} targets but the model has only {num_queries} queries; "
                    "some targets could never be matched (raise the number of queries or drop boxes in the loader)"
                )
        if batch == 0:
            return np.zeros((0, num_queries, 0), dtype=np.float32), sizes

        logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]
        device = logits.device
        dtype = torch.promote_types(torch.promote_types(logits.dtype, pred_boxes.dtype), torch.float32)
        num_classes = num_logits - 1

        # Targets padded to [B, Tmax]. The pad box (cx, cy, w, h) = (0.5, 0.5, 0.5, 0.5) is valid, so padded costs
        # stay finite; Tmax >= 1 gives every image, even one without targets, a cost column in which NaN/inf
        # predictions show up.
        labels = pad_sequence([t["labels"].to(device=device, dtype=torch.int64) for t in targets], batch_first=True)
        boxes = pad_sequence([t["boxes"].to(device=device, dtype=dtype) for t in targets], batch_first=True,
                             padding_value=0.5)
        if boxes.shape[1] == 0:
            labels, boxes = labels.new_zeros(batch, 1), boxes.new_full((batch, 1, 4), 0.5)
        t_max = boxes.shape[1]
        boxes_xyxy = box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")
        invalid = invalid_target_mask(labels, boxes, num_classes, corners=boxes_xyxy)  # [B, Tmax]
        labels = labels.clamp(0, num_classes - 1)  # so an invalid label cannot crash the gather before its error

        with torch.autocast(device_type=device.type, enabled=False):
            # -p(class): the softmax over all K+1 logits is the one O(B*Q*K) step. It runs a few images at a time
            # so each chunk of probabilities (<= _SOFTMAX_CHUNK entries, 1 MiB in float32) stays in cache: with K in
            # the thousands a single [B, Q, K+1] buffer is tens of MB, whose page faults on the CPU cost more than
            # the arithmetic and made the time grow faster than B.
            step = max(1, _SOFTMAX_CHUNK // (num_queries * num_logits))
            index = labels[:, None, :].expand(batch, num_queries, t_max)
            cost_class = -torch.cat([logits[i : i + step].to(dtype).softmax(-1).gather(2, index[i : i + step])
                                     for i in range(0, batch, step)])  # [B, Q, Tmax]
            pred = pred_boxes.to(dtype)  # [B, Q, 4]
            cost_bbox = torch.cdist(pred, boxes, p=1)
            cost_giou = -batched_generalized_box_iou(box_convert(pred, in_fmt="cxcywh", out_fmt="xyxy"), boxes_xyxy)
            cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou

        # The single device-to-host copy: the costs followed by the invalid-target flags.
        host = torch.cat([cost.reshape(-1), invalid.reshape(-1).to(dtype)]).cpu().numpy()
        costs = host[: cost.numel()].reshape(batch, num_queries, t_max)
        flags = host[cost.numel():]
        if flags.any():
            image, box = divmod(int(np.flatnonzero(flags)[0]), t_max)
            raise_invalid_target(targets, image, box, num_classes, where)
        finite = np.isfinite(costs).reshape(batch, -1).all(-1)
        if not finite.all():
            raise ValueError(nonfinite_prediction_message(outputs, int(np.flatnonzero(~finite)[0]), where))
        return costs, sizes
