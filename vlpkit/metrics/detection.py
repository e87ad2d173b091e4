"""COCO box AP/AR through pycocotools' ``COCOeval``, and the conversion of DETR-style outputs to COCO results.

``evaluate_detections`` runs the official ``COCOeval(iouType="bbox")`` evaluate / accumulate / summarize and
returns its 12 ``stats`` by name. Two things pycocotools does not do are handled here: an empty result list
(``COCO.loadRes`` crashes on it; we build the empty result set ourselves so COCOeval scores it, giving AP 0),
and input checks (pycocotools silently ignores detections whose category is not in the GT).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert

# Names of COCOeval.stats, in order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _quiet(fn, *args, **kwargs):
    """Call a pycocotools function with its progress prints swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def load_coco_gt(coco_gt: str | Path | COCO) -> COCO:
    """A ``pycocotools.coco.COCO`` from a path (or the object itself)."""
    if isinstance(coco_gt, COCO):
        return coco_gt
    path = Path(coco_gt)
    if not path.is_file():
        raise FileNotFoundError(f"COCO ground-truth file not found: {path}")
    return _quiet(COCO, str(path))


def _check_results(results: list, gt: COCO, img_ids: set) -> None:
    cat_ids = set(gt.getCatIds())
    for i, r in enumerate(results):
        if not isinstance(r, Mapping):
            raise TypeError(f"detection {i} must be a dict, got {type(r).__name__}")
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in r]
        if missing:
            raise KeyError(f"detection {i} lacks {missing} (has {sorted(r)})")
        if r["image_id"] not in img_ids:
            raise ValueError(
                f"detection {i} is on image {r['image_id']}, which is not among the evaluated GT images"
            )
        if r["category_id"] not in cat_ids:
            raise ValueError(f"detection {i} has category_id {r['category_id']}, not a GT category")
        bb = r["bbox"]
        if not isinstance(bb, Sequence) or len(bb) != 4 or not all(math.isfinite(float(v)) for v in bb):
            raise ValueError(f"detection {i} bbox must be 4 finite numbers [x, y, w, h], got {bb!r}")
        if bb[2] < 0 or bb[3] < 0:
            raise ValueError(
                f"detection {i} bbox has a negative width/height: {bb!r} (expected [x, y, w, h])"
            )
        if not math.isfinite(float(r["score"])):
            raise ValueError(f"detection {i} has a non-finite score {r['score']!r}")


def evaluate_detections(
    coco_gt: str | Path | COCO,
    results: str | Path | list[dict],
    img_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """COCO bbox AP/AR of ``results`` (``[{image_id, category_id, bbox: [x, y, w, h] in pixels, score}]``).

    Args:
        coco_gt: instances JSON path or a loaded ``COCO``.
        results: results JSON path or list (not modified). Every detection must be on an evaluated image and
            in a GT category. An empty list scores 0 (COCOeval's value when nothing is detected).
        img_ids: images to evaluate (``COCOeval.params.imgIds``); default all GT images.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}`` as
        fractions; ``-1.0`` where COCOeval has no GT to score (e.g. no small objects).
    """
    gt = load_coco_gt(coco_gt)
    if isinstance(results, (str, Path)):
        path = Path(results)
        if not path.is_file():
            raise FileNotFoundError(f"COCO detection results file not found: {path}")
        with open(path) as f:
            results = json.load(f)
    if not isinstance(results, list):
        raise TypeError(f"detection results must be a list of dicts, got {type(results).__name__}")
    all_ids = set(gt.getImgIds())
    if img_ids is None:
        img_ids = sorted(all_ids)
    else:
        unknown = [i for i in img_ids if i not in all_ids]
        if unknown:
            raise ValueError(f"img_ids holds {len(unknown)} id(s) not in the GT: {unknown[:5]}")
        img_ids = list(img_ids)
    _check_results(results, gt, set(img_ids))

    if results:
        dt = _quiet(gt.loadRes, copy.deepcopy(results))  # loadRes writes area/id/segmentation into the dicts
    else:  # COCO.loadRes indexes anns[0]: build the empty result set by hand
        dt = COCO()
        dt.dataset = {
            "images": list(gt.dataset["images"]),
            "categories": copy.deepcopy(gt.dataset["categories"]),
            "annotations": [],
        }
        _quiet(dt.createIndex)
    ev = COCOeval(gt, dt, iouType="bbox")
    ev.params.imgIds = img_ids
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    _quiet(ev.summarize)
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}


def to_coco_results(
    boxes: Sequence[torch.Tensor] | torch.Tensor,
    scores: Sequence[torch.Tensor] | torch.Tensor,
    labels: Sequence[torch.Tensor] | torch.Tensor,
    image_ids: Sequence[int],
    orig_sizes: Sequence[Sequence[int]] | torch.Tensor,
    label_to_category_id: Mapping[int, int] | Sequence[int],
) -> list[dict[str, Any]]:
    """Model detections -> COCO results ``[{image_id, category_id, bbox: [x, y, w, h] pixels, score}]``.

    Args:
        boxes: per image ``[N_i, 4]`` normalised (cx, cy, w, h) in [0, 1], as a list or a ``[B, N, 4]`` tensor.
        scores: per image ``[N_i]`` confidences.
        labels: per image ``[N_i]`` model class indices (no "no-object" class: drop it beforehand).
        image_ids: ``[B]`` COCO image ids.
        orig_sizes: ``[B, 2]`` original image (height, width) in pixels, the frame of the COCO annotations.
        label_to_category_id: model label -> COCO ``category_id`` (dict, or list indexed by label).
    """
    b = len(image_ids)
    for name, x in (("boxes", boxes), ("scores", scores), ("labels", labels), ("orig_sizes", orig_sizes)):
        if len(x) != b:
            raise ValueError(f"{name} covers {len(x)} images but image_ids has {b}")
    sizes = torch.as_tensor(orig_sizes, dtype=torch.float64)
    if sizes.shape != (b, 2):
        raise ValueError(f"orig_sizes must be [B, 2] (height, width), got shape {tuple(sizes.shape)}")
    out: list[dict[str, Any]] = []
    for i, img_id in enumerate(image_ids):
        bx, sc, lb = torch.as_tensor(boxes[i]), torch.as_tensor(scores[i]), torch.as_tensor(labels[i])
        if bx.ndim != 2 or bx.shape[-1] != 4:
            raise ValueError(f"boxes of image {img_id} must be [N, 4] cxcywh, got shape {tuple(bx.shape)}")
        if sc.shape != bx.shape[:1] or lb.shape != bx.shape[:1]:
            raise ValueError(
                f"image {img_id}: scores {tuple(sc.shape)} and labels {tuple(lb.shape)} must be [N] with N = "
                f"{bx.shape[0]} boxes"
            )
        h, w = sizes[i].tolist()
        xywh = box_convert(bx.detach().to(torch.float64).cpu(), "cxcywh", "xywh")
        xywh = xywh * torch.tensor([w, h, w, h], dtype=torch.float64)
        for box, s, lab in zip(xywh.tolist(), sc.tolist(), lb.tolist()):
            try:
                if int(lab) < 0:  # a list would wrap negative labels around silently
                    raise KeyError(lab)
                cat = label_to_category_id[int(lab)]
            except (KeyError, IndexError):
                raise ValueError(
                    f"image {img_id}: label {lab} has no entry in label_to_category_id"
                ) from None
            out.append({"image_id": int(img_id), "category_id": int(cat), "bbox": box, "score": float(s)})
    return out
