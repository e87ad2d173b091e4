"""`vlpkit.data.raw_images`: the one preprocessing of raw images at inference time."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlpkit.data.raw_images import as_image_list, prepare_images
from vlpkit.data.transforms import make_eval_transforms

TRANSFORMS = make_eval_transforms(32, 48)


def test_every_accepted_form_becomes_a_list():
    pil = Image.new("RGB", (20, 10))
    one = torch.zeros(3, 8, 8, dtype=torch.uint8)
    assert as_image_list(pil) == [pil] and as_image_list((pil, pil)) == [pil, pil]
    assert len(as_image_list(one)) == 1 and len(as_image_list(torch.zeros(2, 3, 8, 8))) == 2
    with pytest.raises(ValueError, match=r"expected a tensor \[3, H, W\] or \[N, 3, H, W\], got shape \(8, 8\)"):
        as_image_list(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="empty list"):
        as_image_list([])
    with pytest.raises(TypeError, match="got str"):
        as_image_list("a.png")


def test_a_float_image_in_0_1_equals_its_uint8_form_and_sizes_are_the_originals():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8, generator=g)
    a = prepare_images([image, Image.new("RGB", (15, 40))], TRANSFORMS)
    b = prepare_images([image.float() / 255, Image.new("RGB", (15, 40))], TRANSFORMS)
    assert torch.equal(a.pixel_values, b.pixel_values) and torch.equal(a.pixel_mask, b.pixel_mask)
    assert a.orig_sizes.tolist() == [[20, 30], [40, 15]]
    assert a.pixel_values.shape[0] == 2 and a.pixel_mask[1].sum() < a.pixel_mask[1].numel()  # the second is padded


def test_errors_name_the_image_counted_from_the_callers_offset():
    ok = torch.zeros(3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"image 6: a float image tensor must hold values in \[0, 1\]"):
        prepare_images([ok, torch.full((3, 8, 8), 2.0)], TRANSFORMS, first_index=5)
    with pytest.raises(TypeError, match="image 1: expected a PIL image"):
        prepare_images([ok, None], TRANSFORMS)
