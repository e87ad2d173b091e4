"""Raw images -> model inputs: the preprocessing of images given at inference time, used by the predictor
(`vlpkit.inference`) and by the task models' own inference (`CaptionModel.caption`, `RetrievalModel.match`,
`VQAModel.top_answers`, `NLVR2Model.predict`).

Accepted: a PIL image (any mode, converted to RGB by the transform), a tensor [3, H, W] (uint8 in 0..255, or
float in [0, 1], converted to uint8 first, as the evaluation transforms expect), a batch tensor [N, 3, H, W],
or a non-empty list or tuple of these. Every error names the image by its index in the caller's list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .batch import collate_images

__all__ = ["PreparedImages", "as_image_list", "prepare_images"]


@dataclass
class PreparedImages:
    """pixel_values [N, 3, H, W], pixel_mask [N, H, W] (True = real pixel), orig_sizes [N, 2] (height, width) of
    the images as given."""

    pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    orig_sizes: torch.Tensor

    def to(self, device: str | torch.device) -> PreparedImages:
        return PreparedImages(self.pixel_values.to(device), self.pixel_mask.to(device), self.orig_sizes)


def as_image_list(images: Any) -> list:
    """One image, a batch tensor or a list of images -> a list of images.

    Raises:
        ValueError: a tensor that is neither [3, H, W] nor [N, 3, H, W], or an empty list.
        TypeError: anything else.
    """
    if isinstance(images, Image.Image) or (isinstance(images, torch.Tensor) and images.dim() == 3):
        return [images]
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"images: expected a tensor [3, H, W] or [N, 3, H, W], got shape {tuple(images.shape)}")
        return list(images.unbind(0))
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images: got an empty list")
        return list(images)
    raise TypeError(f"images: expected a PIL image, an image tensor [3, H, W] or a list of them, got "
                    f"{type(images).__name__}")


def _as_uint8(image: Any, index: int) -> Any:
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        if image.numel() and (image.min() < 0 or image.max() > 1):
            raise ValueError(f"image {index}: a float image tensor must hold values in [0, 1] (uint8 0..255 also "
                             f"works), got [{float(image.min()):.3g}, {float(image.max()):.3g}]")
        return (image * 255).round().to(torch.uint8)
    return image


def prepare_images(images: Any, transforms: Callable, first_index: int = 0,
                   names: Sequence[Any] | None = None) -> PreparedImages:
    """`images` through the evaluation `transforms` (e.g. `make_eval_transforms(800, 1333)`), then padded into one
    batch. Images are named in errors by `names` (one per image, e.g. "left[3]"), else by their index counted from
    `first_index` (the caller's chunk offset)."""
    pixels, sizes = [], []
    images = as_image_list(images)
    if names is None:
        names = range(first_index, first_index + len(images))
    elif len(names) != len(images):
        raise ValueError(f"prepare_images: {len(names)} names for {len(images)} images")
    for i, image in zip(names, images):
        # the transform's own checks name the image by target["image_id"]: its index in the caller's list
        pixel_values, target, _ = transforms(_as_uint8(image, i), {"image_id": i}, None)
        pixels.append(pixel_values)
        sizes.append(target["orig_size"])
    pixel_values, pixel_mask = collate_images(pixels)
    return PreparedImages(pixel_values, pixel_mask, torch.stack(sizes))
