"""DETR-style joint image / box / text transforms, built on ``torchvision.transforms.v2``.

Every step is a callable ``(image, target, text) -> (image, target, text)``; steps compose with
``torchvision.transforms.v2.Compose`` and ``v2.RandomChoice``, which pass the three values along unchanged.

Input of a pipeline:

* ``image``: a PIL image (any mode; converted to RGB) or a ``uint8`` tensor ``[C, H, W]`` with C = 3, or 1
  (grayscale, repeated to RGB) or 4 (RGBA, alpha dropped as PIL's ``convert("RGB")`` does).
* ``target``: ``None`` or a dict with ``"boxes"`` ``[N, 4]`` in absolute pixels, XYXY (or a
  ``tv_tensors.BoundingBoxes`` in any format), ``"labels"`` ``[N]``, optional ``"attributes"`` (list of N lists),
  ``"iscrowd"`` ``[N]``, ``"image_id"``, ``"orig_size"`` ``(h, w)``; any other key is passed through.
* ``text``: ``None``, a string, or a list of strings (e.g. a question and its answers).

Output (after :class:`ToModelInputs`, the last step of the presets):

* ``image``: float32 ``[3, H', W']``, ImageNet-normalised.
* ``target["boxes"]``: float32 ``[N', 4]`` normalised cxcywh in [0, 1]; ``"labels"``, ``"attributes"``,
  ``"iscrowd"`` aligned with it; ``"box_index"`` ``[N']`` the index of each box in the input target;
  ``"orig_size"`` ``[2]`` (h, w) of the input image unless given; ``"size"`` ``[2]`` (h, w) after the transform.

The one place boxes are removed is :class:`RandomSizeCrop`: a box that the crop leaves with zero width or height
is dropped together with every per-box field (DETR's crop semantics). ``"box_index"`` records which boxes survive.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image as PILImage
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PER_BOX_KEYS",
    "ImageBoxTransform",
    "PrepareInputs",
    "RandomHorizontalFlip",
    "RandomSizeCrop",
    "ToModelInputs",
    "make_eval_transforms",
    "make_train_transforms",
    "swap_left_right",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Target keys holding one entry per box; they are filtered together with "boxes" by the crop.
PER_BOX_KEYS = ("labels", "attributes", "iscrowd", "box_index")

Text = str | list[str] | None


def _describe(target: dict | None) -> str:
    if target and "image_id" in target:
        return f"image {target['image_id']!r}"
    return "image"


# --------------------------------------------------------------------------------------------------------------
# Text


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", flags=re.IGNORECASE)


def _swap_word(match: re.Match) -> str:
    word = match.group(0)
    new = "right" if word.lower() == "left" else "left"
    if word.isupper():
        return new.upper()
    if word[0].isupper():
        return new.capitalize()
    return new


def swap_left_right(text: Text) -> Text:
    """Swap the whole words "left" and "right" (any case; "Left" -> "Right", "LEFT" -> "RIGHT").

    Words that merely contain them ("leftover", "rightmost", "bright") are unchanged; hyphenated compounds
    ("left-hand") are swapped. ``text`` may be ``None``, a string or a list of strings.
    """
    if text is None:
        return None
    if isinstance(text, str):
        return _LEFT_RIGHT.sub(_swap_word, text)
    return [_LEFT_RIGHT.sub(_swap_word, t) for t in text]


# --------------------------------------------------------------------------------------------------------------
# Input checks


def _to_image(image: Any, where: str) -> tv_tensors.Image:
    """PIL image or uint8 tensor [C, H, W] -> tv_tensors.Image uint8 [3, H, W]; clear errors otherwise."""
    if isinstance(image, PILImage.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        tensor = F.pil_to_tensor(image)
    elif isinstance(image, torch.Tensor):
        tensor = image.as_subclass(torch.Tensor)
        if tensor.dtype != torch.uint8:
            raise TypeError(
                f"{where}: expected a uint8 image tensor [3, H, W] with values 0..255, got dtype {tensor.dtype}"
            )
        if tensor.ndim != 3:
            raise ValueError(f"{where}: expected an image tensor [C, H, W], got shape {tuple(tensor.shape)}")
        if tensor.shape[0] not in (1, 3, 4):
            hint = " (it looks channels-last; use .permute(2, 0, 1))" if tensor.shape[-1] in (1, 3, 4) else ""
            raise ValueError(
                f"{where}: expected 1, 3 or 4 channels in dim 0 of [C, H, W], got shape {tuple(tensor.shape)}{hint}"
            )
        if tensor.shape[0] == 4:
            tensor = tensor[:3]  # RGBA: drop alpha, as PIL's convert("RGB") does for PIL input
        elif tensor.shape[0] == 1:
            tensor = F.grayscale_to_rgb(tensor)
    else:
        raise TypeError(f"{where}: expected a PIL image or a uint8 torch tensor [3, H, W], got {type(image).__name__}")
    if tensor.shape[-1] == 0 or tensor.shape[-2] == 0:
        raise ValueError(f"{where}: empty image of shape {tuple(tensor.shape)}")
    return tv_tensors.Image(tensor.contiguous())


def _to_boxes(target: dict, canvas: tuple[int, int], where: str) -> tv_tensors.BoundingBoxes:
    boxes = target.get("boxes")
    if boxes is None:
        boxes = torch.zeros(0, 4)
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        if tuple(boxes.canvas_size) != canvas:
            raise ValueError(
                f"{where}: boxes have canvas_size {tuple(boxes.canvas_size)} but the image is (h, w) = {canvas}"
            )
        boxes = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        data = boxes.as_subclass(torch.Tensor).float()
    else:
        data = torch.as_tensor(boxes, dtype=torch.float32)
        if data.numel() == 0:
            data = data.reshape(0, 4)
    if data.ndim != 2 or data.shape[1] != 4:
        raise ValueError(f"{where}: target['boxes'] must have shape [N, 4] (XYXY pixels), got {tuple(data.shape)}")
    if not torch.isfinite(data).all():
        bad = int((~torch.isfinite(data)).any(dim=1).nonzero()[0])
        raise ValueError(f"{where}: box {bad} has a non-finite coordinate: {data[bad].tolist()}")
    bad_order = ((data[:, 2] <= data[:, 0]) | (data[:, 3] <= data[:, 1])).nonzero()
    if len(bad_order):
        k = int(bad_order[0])
        raise ValueError(
            f"{where}: box {k} = {data[k].tolist()} is not XYXY with x2 > x1 and y2 > y1 "
            "(zero-size boxes must be filtered by the reader; XYWH boxes must be converted)"
        )
    # Coordinates slightly outside the image (common in COCO) are clamped to it.
    boxes = F.clamp_bounding_boxes(tv_tensors.BoundingBoxes(data, format="XYXY", canvas_size=canvas))
    plain = boxes.as_subclass(torch.Tensor)
    outside = ((plain[:, 2] <= plain[:, 0]) | (plain[:, 3] <= plain[:, 1])).nonzero()
    if len(outside):
        k = int(outside[0])
        raise ValueError(f"{where}: box {k} = {data[k].tolist()} lies outside the image of (h, w) = {canvas}")
    return boxes


class PrepareInputs:
    """First step of every pipeline: validate, convert the image to ``tv_tensors.Image`` uint8 RGB and the boxes to
    ``tv_tensors.BoundingBoxes`` XYXY (clamped to the image), and add ``"orig_size"`` and ``"box_index"``.

    Raises a ``TypeError``/``ValueError`` naming the image (by ``target["image_id"]`` when given) and the problem:
    wrong image type, dtype, shape or channel count; boxes not ``[N, 4]``, non-finite, not XYXY or outside the image;
    a per-box field whose length differs from the number of boxes.
    """

    def __call__(self, image: Any, target: dict | None, text: Text = None):
        where = _describe(target)
        img = _to_image(image, where)
        canvas = tuple(img.shape[-2:])
        target = dict(target) if target is not None else {}
        boxes = _to_boxes(target, canvas, where)
        n = len(boxes)
        target["boxes"] = boxes
        if "labels" in target:
            target["labels"] = torch.as_tensor(target["labels"], dtype=torch.long).reshape(-1)
        elif n == 0:
            target["labels"] = torch.zeros(0, dtype=torch.long)
        else:
            raise ValueError(f"{where}: target has {n} boxes but no 'labels'")
        if "iscrowd" in target:
            target["iscrowd"] = torch.as_tensor(target["iscrowd"], dtype=torch.long).reshape(-1)
        if "attributes" in target:
            target["attributes"] = [list(a) for a in target["attributes"]]
        target["box_index"] = torch.arange(n)
        for key in PER_BOX_KEYS:
            if key in target and len(target[key]) != n:
                raise ValueError(f"{where}: target[{key!r}] has {len(target[key])} entries for {n} boxes")
        if "orig_size" in target:
            target["orig_size"] = torch.as_tensor(target["orig_size"], dtype=torch.long).reshape(2)
        else:
            target["orig_size"] = torch.tensor(canvas, dtype=torch.long)
        if text is not None and not isinstance(text, str):
            text = list(text)
            if not all(isinstance(t, str) for t in text):
                raise TypeError(f"{where}: text must be None, a string or a list of strings")
        return img, target, text

    def __repr__(self) -> str:
        return "PrepareInputs()"


# --------------------------------------------------------------------------------------------------------------
# Geometric steps


class ImageBoxTransform:
    """Apply a ``torchvision.transforms.v2`` transform jointly to the image and ``target["boxes"]``.

    The text and the other target fields pass through. Used with ``v2.RandomChoice`` (DETR's random
    resize, drawn among ``v2.Resize`` of each scale) and ``v2.Resize`` (evaluation).
    """

    def __init__(self, transform: v2.Transform):
        self.transform = transform

    def __call__(self, image: tv_tensors.Image, target: dict, text: Text = None):
        image, boxes = self.transform(image, target["boxes"])
        return image, {**target, "boxes": boxes}, text

    def __repr__(self) -> str:
        return f"ImageBoxTransform({self.transform!r})"


class RandomHorizontalFlip:
    """With probability ``p``, mirror the image and boxes and swap "left"/"right" in the text.

    Disable it (``flip=False`` in :func:`make_train_transforms`) for tasks whose labels depend on left/right in a
    way the word swap cannot fix: answers that are not passed as ``text`` (e.g. VQA answer ids), or NLVR2, where
    "left"/"right" name the two images of a pair rather than positions inside one image.
    """

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: tv_tensors.Image, target: dict, text: Text = None):
        if float(torch.rand(())) >= self.p:
            return image, target, text
        return F.horizontal_flip(image), {**target, "boxes": F.horizontal_flip(target["boxes"])}, swap_left_right(text)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomSizeCrop:
    """DETR's random crop: a crop of random width in ``[min_size, min(W, max_size)]`` and random height in
    ``[min_size, min(H, max_size)]`` (each bound capped by the image) at a uniformly random position.

    Boxes are cut to the crop by ``v2.functional.crop``. A box that the crop leaves with zero width or height is
    dropped with its label, attributes and every other :data:`PER_BOX_KEYS` field; this is the only step that
    removes boxes. (``v2.SanitizeBoundingBoxes`` is not used: its ``min_size`` >= 1 pixel would also drop small
    boxes that the crop did not touch.)
    """

    def __init__(self, min_size: int, max_size: int):
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, image: tv_tensors.Image, target: dict, text: Text = None):
        height, width = image.shape[-2:]
        w = int(torch.randint(min(self.min_size, width), min(width, self.max_size) + 1, ()))
        h = int(torch.randint(min(self.min_size, height), min(height, self.max_size) + 1, ()))
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        image = F.crop(image, top, left, h, w)
        boxes = F.crop(target["boxes"], top, left, h, w)
        plain = boxes.as_subclass(torch.Tensor)
        keep = (plain[:, 2] > plain[:, 0]) & (plain[:, 3] > plain[:, 1])
        target = {**target, "boxes": tv_tensors.wrap(boxes[keep], like=boxes)}
        for key in PER_BOX_KEYS:
            if key in target:
                value = target[key]
                target[key] = value[keep] if isinstance(value, torch.Tensor) else [
                    v for v, k in zip(value, keep.tolist()) if k
                ]
        return image, target, text

    def __repr__(self) -> str:
        return f"RandomSizeCrop(min_size={self.min_size}, max_size={self.max_size})"


# --------------------------------------------------------------------------------------------------------------
# Output


class ToModelInputs:
    """Last step: float32 ImageNet-normalised image, boxes as a plain tensor of normalised cxcywh, ``"size"``."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, image: tv_tensors.Image, target: dict, text: Text = None):
        height, width = image.shape[-2:]
        pixels = F.normalize(F.to_dtype(image, torch.float32, scale=True), self.mean, self.std)
        cxcywh = F.convert_bounding_box_format(target["boxes"], new_format=tv_tensors.BoundingBoxFormat.CXCYWH)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        target = {
            **target,
            "boxes": cxcywh.as_subclass(torch.Tensor).float() / scale,
            "size": torch.tensor([height, width], dtype=torch.long),
        }
        return pixels.as_subclass(torch.Tensor), target, text

    def __repr__(self) -> str:
        return f"ToModelInputs(mean={self.mean}, std={self.std})"


# --------------------------------------------------------------------------------------------------------------
# Presets


def _random_resize(scales: Sequence[int], max_size: int | None) -> ImageBoxTransform:
    """Shorter side to a uniformly drawn scale, longer side at most ``max_size`` (DETR's RandomResize)."""
    return ImageBoxTransform(v2.RandomChoice([v2.Resize(int(s), max_size=max_size) for s in scales]))


def make_train_transforms(
    scales: Sequence[int] = tuple(range(480, 801, 32)),
    max_size: int = 1333,
    crop: bool = True,
    flip: bool = True,
    crop_scales: Sequence[int] | None = None,
    crop_size: tuple[int, int] | None = None,
    p_crop: float = 0.5,
) -> v2.Compose:
    """DETR's training augmentation.

    ``flip`` -> then, with probability ``p_crop`` (when ``crop``), resize the shorter side to one of
    ``crop_scales``, take a :class:`RandomSizeCrop` of ``crop_size``, and finally resize the shorter side to a
    random one of ``scales`` with the longer side at most ``max_size``; then normalise.

    Args:
        scales: shorter-side sizes to draw from (DETR: 480, 512, ..., 800).
        max_size: cap on the longer side after resizing (DETR: 1333).
        crop: enable the random crop branch.
        flip: enable :class:`RandomHorizontalFlip` (which also swaps left/right in the text).
        crop_scales: shorter-side sizes before the crop; default scales DETR's (400, 500, 600) by
            ``max(scales) / 800``.
        crop_size: ``(min, max)`` crop side; default scales DETR's (384, 600) by ``max(scales) / 800``.
        p_crop: probability of the crop branch when ``crop``.

    Small images: e.g. ``make_train_transforms(scales=(224, 256), max_size=384)``.

    Returns:
        A ``v2.Compose`` called as ``image, target, text = t(image, target, text)``.
    """
    scales = [int(s) for s in scales]
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive sizes, got {scales}")
    ref = max(scales) / 800
    if crop_scales is None:
        crop_scales = [max(1, round(s * ref)) for s in (400, 500, 600)]
    if crop_size is None:
        crop_size = (max(1, round(384 * ref)), max(1, round(600 * ref)))
    if max(scales) >= max_size:
        raise ValueError(f"max_size ({max_size}) must exceed every scale, got scales {scales}")
    # One v2.Resize per scale rather than v2.RandomShortestSize, whose float truncation can give 63 for 64.
    resize = _random_resize(scales, max_size)
    steps: list = [PrepareInputs()]
    if flip:
        steps.append(RandomHorizontalFlip(0.5))
    if crop:
        cropped = v2.Compose(
            [
                _random_resize(crop_scales, None),
                RandomSizeCrop(*crop_size),
                resize,
            ]
        )
        steps.append(v2.RandomChoice([resize, cropped], p=[1 - p_crop, p_crop]))
    else:
        steps.append(resize)
    steps.append(ToModelInputs())
    return v2.Compose(steps)


def make_eval_transforms(size: int = 800, max_size: int = 1333) -> v2.Compose:
    """Deterministic evaluation transform: shorter side to ``size`` (longer side at most ``max_size``), normalise.

    Small images: e.g. ``make_eval_transforms(size=256, max_size=384)``.
    """
    return v2.Compose(
        [PrepareInputs(), ImageBoxTransform(v2.Resize(size, max_size=max_size)), ToModelInputs()]
    )
