"""Input validation for set prediction: detection outputs, targets, and the errors that name what is wrong.

Two kinds of checks, so the matcher's hot path stays free of device synchronisation:

- structure (types, keys, shapes, dtypes) is read from tensor metadata on the host, and raises at once;
- values (label range, box format, finiteness) are computed on the device as one boolean mask per target box
  (`invalid_target_mask`), copied to the host together with the cost matrix, and only when a flag is set does
  `raise_invalid_target` look again, box by box, to write the message.

Target boxes must be normalised cxcywh: every coordinate in [0, 1], width and height > 0, and the box must lie
inside the image (its xyxy corners in [0, 1]) up to `BOX_TOLERANCE`. The last rule is what catches boxes given in
the wrong format: an xyxy or xywh box read as cxcywh usually pokes out of the image. It cannot catch all of them
(a small xyxy box near the centre is also a valid cxcywh box), so loaders should still convert with
`torchvision.ops.box_convert`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NoReturn

import torch
from torch import Tensor
from torchvision.ops import box_convert

# Slack for rounding in loaders that clip in xyxy and convert to cxcywh (float32 corners land within ~1e-7 of the
# border); real annotations that overflow the image by a pixel or more should be clipped by the loader.
BOX_TOLERANCE = 1e-3

# The reasons a target can be rejected, in the order they are reported (the first that applies is named).
_REASONS = {
    "label": "label {label} is outside [0, {num_classes}) (num_classes={num_classes}; index {num_classes} is the "
    "no-object class and cannot be a target)",
    "nonfinite": "box {box} has non-finite coordinates",
    "degenerate": "box {box} is degenerate: width and height must be > 0",
    "range": "box {box} has coordinates outside [0, 1]; expected normalised cxcywh (are they in pixels?)",
    "outside": "box {box} extends outside the image (xyxy corners {corners}); expected normalised cxcywh "
    "(was it given as xyxy or xywh?)",
}


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def check_detection_outputs(outputs: Mapping[str, Tensor], where: str) -> tuple[int, int, int]:
    """Check `outputs["pred_logits"]` [B, Q, K+1] and `outputs["pred_boxes"]` [B, Q, 4] (host-side, no sync).

    Returns:
        (B, Q, K+1).
    """
    if not isinstance(outputs, Mapping):
        raise TypeError(f"{where}: outputs must be a dict with 'pred_logits' and 'pred_boxes', got {type(outputs)}")
    for key in ("pred_logits", "pred_boxes"):
        if key not in outputs:
            raise KeyError(f"{where}: outputs has no {key!r} (keys: {sorted(outputs)})")
        value = outputs[key]
        if not isinstance(value, Tensor) or not value.is_floating_point() or value.dim() != 3:
            got = f"{value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value)
            raise ValueError(f"{where}: outputs[{key!r}] must be a floating tensor [B, Q, ...], got {got}")
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if boxes.shape[:2] != logits.shape[:2] or boxes.shape[-1] != 4:
        raise ValueError(
            f"{where}: outputs['pred_boxes'] must be [B, Q, 4] = [{logits.shape[0]}, {logits.shape[1]}, 4] to match "
            f"pred_logits {tuple(logits.shape)}, got {tuple(boxes.shape)}"
        )
    if logits.shape[-1] < 2:
        raise ValueError(f"{where}: outputs['pred_logits'] must have K+1 >= 2 logits (K classes + no-object), "
                         f"got {logits.shape[-1]}")
    return logits.shape[0], logits.shape[1], logits.shape[2]


def check_targets(targets: Sequence[Mapping[str, Tensor]], batch_size: int, where: str) -> list[int]:
    """Check the structure of `targets` (host-side, no sync): one dict per image with "labels" int64 [T] and
    "boxes" float [T, 4].

    Returns:
        The number of targets T of each image.
    """
    if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
        raise TypeError(f"{where}: targets must be a list with one dict per image, got {type(targets)}")
    if len(targets) != batch_size:
        raise ValueError(f"{where}: got {len(targets)} target dicts for a batch of {batch_size} images")
    sizes = []
    for i, target in enumerate(targets):
        if not isinstance(target, Mapping):
            raise TypeError(f"{where}: targets[{i}] must be a dict, got {type(target)}")
        for key in ("labels", "boxes"):
            if key not in target:
                raise KeyError(f"{where}: targets[{i}] (image {i}) has no {key!r} (keys: {sorted(target)})")
            if not isinstance(target[key], Tensor):
                raise TypeError(f"{where}: targets[{i}][{key!r}] must be a tensor, got {type(target[key])}")
        labels, boxes = target["labels"], target["boxes"]
        if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(
                f"{where}: targets[{i}]['labels'] (image {i}) must be an integer tensor [T], got {labels.dtype} "
                f"of shape {tuple(labels.shape)}"
            )
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
            raise ValueError(
                f"{where}: targets[{i}]['boxes'] (image {i}) must be a floating tensor [T, 4] of normalised cxcywh "
                f"boxes, got {boxes.dtype} of shape {tuple(boxes.shape)}"
            )
        if boxes.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{where}: image {i} has {labels.shape[0]} labels but {boxes.shape[0]} boxes"
            )
        sizes.append(int(labels.shape[0]))
    return sizes


def _target_flags(labels: Tensor, boxes: Tensor, num_classes: int, tol: float) -> dict[str, Tensor]:
    """One bool tensor per rejection reason (keys of `_REASONS`) for labels [N] and boxes [N, 4] (error path)."""
    corners = box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")
    finite = torch.isfinite(boxes).all(-1)
    return {
        "label": (labels < 0) | (labels >= num_classes),
        "nonfinite": ~finite,
        "degenerate": finite & (boxes[:, 2:] <= 0).any(-1),
        "range": finite & ((boxes < -tol) | (boxes > 1 + tol)).any(-1),
        "outside": finite & ((corners < -tol) | (corners > 1 + tol)).any(-1),
    }


def invalid_target_mask(
    labels: Tensor, boxes: Tensor, num_classes: int, corners: Tensor | None = None, tol: float = BOX_TOLERANCE
) -> Tensor:
    """True where a target is invalid, for labels [...] and boxes [..., 4] normalised cxcywh; no sync.

    `corners` are the same boxes as xyxy (`box_convert`), for callers that have them already. The result is the
    union of the reasons of `describe_invalid_target`, folded into fewer ops: a NaN fails every comparison, so
    non-finite boxes fall out of the range tests.
    """
    if corners is None:
        corners = box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")
    coords = torch.cat([boxes, corners], -1)
    valid = ((coords >= -tol) & (coords <= 1 + tol)).all(-1) & (boxes[..., 2:] > 0).all(-1)
    return ~(valid & (labels >= 0) & (labels < num_classes))


def describe_invalid_target(label: Tensor, box: Tensor, num_classes: int, tol: float = BOX_TOLERANCE) -> str:
    """Why one target (label [], box [4]) is invalid: the first reason that applies, in the order of `_REASONS`."""
    flags = _target_flags(label.reshape(1), box.reshape(1, 4), num_classes, tol)
    corners = box_convert(box.reshape(1, 4), in_fmt="cxcywh", out_fmt="xyxy")[0]
    for reason, flag in flags.items():
        if bool(flag[0]):
            return _REASONS[reason].format(
                label=int(label), num_classes=num_classes, box=_fmt(box.tolist()), corners=_fmt(corners.tolist())
            )
    raise AssertionError(f"target label={int(label)} box={_fmt(box.tolist())} is valid")


def raise_invalid_target(
    targets: Sequence[Mapping[str, Tensor]], image: int, box_index: int, num_classes: int, where: str,
    tol: float = BOX_TOLERANCE,
) -> NoReturn:
    """Raise a ValueError for box `box_index` of image `image`, naming both and the reason."""
    target = targets[image]
    label = target["labels"][box_index].cpu()
    box = target["boxes"][box_index].detach().cpu()
    reason = describe_invalid_target(label, box, num_classes, tol)
    raise ValueError(f"{where}: targets[{image}] (image {image}), box {box_index}: {reason}")


def nonfinite_prediction_message(outputs: Mapping[str, Tensor], image: int, where: str,
                                 keys: Sequence[str] = ("pred_logits", "pred_boxes")) -> str:
    """Describe which prediction tensors of `image` hold NaN/inf, and in which queries (error path only)."""
    parts = []
    for key in keys:
        value = outputs[key][image].detach()
        bad = ~torch.isfinite(value).reshape(value.shape[0], -1).all(-1)
        if bool(bad.any()):
            queries = bad.nonzero().flatten().tolist()
            shown = ", ".join(map(str, queries[:10])) + (", ..." if len(queries) > 10 else "")
            parts.append(f"outputs[{key!r}][{image}] has NaN/inf in {len(queries)} queries ({shown})")
    if not parts:
        parts.append(
            f"the inputs of image {image} are finite but the cost is not (predicted boxes with negative width or "
            "height make GIoU divide by zero; predict boxes through a sigmoid)"
        )
    return f"{where}: non-finite matching cost for image {image}: " + "; ".join(parts)
