"""vlpkit.data.transforms: flip/resize/crop against independent formulations, input conversion and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2

from vlpkit.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PrepareInputs,
    RandomHorizontalFlip,
    RandomSizeCrop,
    ToModelInputs,
    make_eval_transforms,
    make_train_transforms,
    swap_left_right,
)

MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None]
STD = torch.tensor(IMAGENET_STD)[:, None, None]


def image(h: int = 60, w: int = 90, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def target() -> dict:
    return {
        "boxes": torch.tensor([[10.0, 5.0, 40.0, 30.0], [50.0, 20.0, 89.0, 59.0], [0.0, 0.0, 90.0, 60.0]]),
        "labels": torch.tensor([3, 7, 1]),
        "attributes": [["red"], ["small", "wooden"], []],
        "image_id": 42,
    }


def normalised_cxcywh(boxes_xyxy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return box_convert(boxes_xyxy, "xyxy", "cxcywh") / torch.tensor([w, h, w, h])


def unnormalise(pixels: torch.Tensor) -> torch.Tensor:
    return pixels * STD + MEAN


# ------------------------------------------------------------------------------------------------------------ flip


def test_flip_mirrors_image_boxes_and_text():
    t = v2.Compose([PrepareInputs(), RandomHorizontalFlip(p=1.0), ToModelInputs()])
    img, tgt = image(), target()
    out_img, out, text = t(img, tgt, "The cat LEFT of the dog, on the left-hand side; leftover bright rights.")
    expected = normalised_cxcywh(tgt["boxes"], 60, 90)
    expected[:, 0] = 1 - expected[:, 0]  # mirror: cx -> 1 - cx
    torch.testing.assert_close(out["boxes"], expected)
    torch.testing.assert_close(unnormalise(out_img), img.flip(-1).float() / 255, atol=1e-6, rtol=0)
    assert text == "The cat RIGHT of the dog, on the right-hand side; leftover bright rights."
    assert out["labels"].tolist() == [3, 7, 1] and out["attributes"] == tgt["attributes"]


def test_flip_probability_zero_is_identity_and_half_is_half():
    t = v2.Compose([PrepareInputs(), RandomHorizontalFlip(p=0.0), ToModelInputs()])
    _, out, text = t(image(), target(), "left")
    torch.testing.assert_close(out["boxes"], normalised_cxcywh(target()["boxes"], 60, 90))
    assert text == "left"
    flip = RandomHorizontalFlip(p=0.5)
    prepared = PrepareInputs()(image(8, 8), None, "left")
    flips = sum(flip(*prepared)[2] == "right" for _ in range(2000))
    assert abs(flips - 1000) <= 5 * (2000 * 0.25) ** 0.5


@pytest.mark.parametrize(
    "text, expected",
    [
        ("left", "right"),
        ("Right", "Left"),
        ("LEFT and RIGHT", "RIGHT and LEFT"),
        ("to the left.", "to the right."),
        ("leftmost, bright, copyright", "leftmost, bright, copyright"),
        (None, None),
        (["what is on the left?", "right"], ["what is on the right?", "left"]),
    ],
)
def test_swap_left_right(text, expected):
    assert swap_left_right(text) == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["left", "Left", "LEFT", "right", "Right", "RIGHT", "the", "bright", ",", "."])))
def test_swap_left_right_is_an_involution(words):
    text = " ".join(words)
    swapped = swap_left_right(text)
    assert swap_left_right(swapped) == text
    assert swapped.lower().count("left") == text.lower().count("right") - text.lower().count("bright")


# ---------------------------------------------------------------------------------------------------------- resize


def test_eval_resize_scales_boxes_with_the_image():
    img, tgt = image(60, 90), target()
    out_img, out, _ = make_eval_transforms(size=40, max_size=200)(img, tgt, None)
    assert out_img.shape == (3, 40, 60)
    assert out["size"].tolist() == [40, 60] and out["orig_size"].tolist() == [60, 90]
    # Normalised coordinates are scale-free, so they equal the input's.
    torch.testing.assert_close(out["boxes"], normalised_cxcywh(tgt["boxes"], 60, 90))
    # Independent check of the pixels: the same resize by torchvision's functional API.
    ref = v2.functional.resize(img, [40, 60], antialias=True).float() / 255
    torch.testing.assert_close(unnormalise(out_img), ref, atol=1e-5, rtol=0)


def test_eval_resize_caps_the_longer_side():
    _, out, _ = make_eval_transforms(size=64, max_size=128)(image(50, 200), None, None)
    assert out["size"].tolist() == [32, 128]


def test_normalisation_matches_imagenet_formula():
    img = image(40, 50)
    out_img, _, _ = make_eval_transforms(size=40, max_size=100)(img, None, None)
    expected = (img.float() / 255 - MEAN) / STD
    torch.testing.assert_close(out_img, expected, atol=1e-5, rtol=0)
    assert out_img.dtype == torch.float32


@settings(max_examples=25, deadline=None)
@given(h=st.integers(20, 120), w=st.integers(20, 120), seed=st.integers(0, 2**16))
def test_train_resize_sizes_and_boxes(h, w, seed):
    torch.manual_seed(seed)
    scales, max_size = (32, 48, 64), 80
    t = make_train_transforms(scales=scales, max_size=max_size, crop=False, flip=False)
    box = torch.tensor([[1.0, 2.0, w - 1.0, h - 3.0]])
    _, out, _ = t(image(h, w), {"boxes": box, "labels": [0]}, None)
    oh, ow = out["size"].tolist()
    assert max(oh, ow) <= max_size
    # Shorter side = the drawn scale, unless that would make the longer side exceed the cap, in which case the
    # longer side is the cap.
    assert min(oh, ow) in scales or max(oh, ow) == max_size
    assert abs(oh / h - ow / w) < 1 / h + 1 / w  # one scale ratio for both sides
    # Boxes scale by exactly the image's ratio per axis, so their normalised coordinates do not change.
    torch.testing.assert_close(out["boxes"], normalised_cxcywh(box, h, w), atol=1e-5, rtol=0)


def test_default_detr_scales():
    torch.manual_seed(0)
    t = make_train_transforms(crop=False, flip=False)
    sizes = {tuple(t(image(24, 32), None, None)[1]["size"].tolist()) for _ in range(40)}
    assert {min(s) for s in sizes} <= set(range(480, 801, 32))
    assert all(max(s) <= 1333 for s in sizes)
    assert len(sizes) > 3


def test_train_pipeline_is_reproducible_under_a_seed():
    t = make_train_transforms(scales=(40, 48), max_size=90)
    torch.manual_seed(9)
    a = [t(image(), target(), "left")[1]["boxes"] for _ in range(6)]
    torch.manual_seed(9)
    b = [t(image(), target(), "left")[1]["boxes"] for _ in range(6)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------------------------ crop


def coordinate_image(h: int, w: int) -> torch.Tensor:
    """Channel 0 = x, channel 1 = y (both < 256), so a crop's offset can be read from its top-left pixel."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)]).to(torch.uint8)


def test_crop_cuts_boxes_and_drops_outside_ones_with_all_fields():
    h, w = 100, 120
    boxes = torch.tensor(
        [[5.0, 5.0, 25.0, 20.0], [90.0, 70.0, 118.0, 98.0], [30.0, 10.0, 80.0, 90.0], [0.0, 0.0, 120.0, 100.0]]
    )
    tgt = {"boxes": boxes, "labels": [10, 11, 12, 13], "attributes": [["a"], ["b"], ["c"], ["d"]],
           "iscrowd": [0, 1, 0, 0]}
    t = v2.Compose([PrepareInputs(), RandomSizeCrop(30, 70)])
    dropped_some = False
    for seed in range(40):
        torch.manual_seed(seed)
        img, out, _ = t(coordinate_image(h, w), tgt, None)
        ch, cw = img.shape[-2:]
        left, top = int(img[0, 0, 0]), int(img[1, 0, 0])
        assert 30 <= ch <= 70 and 30 <= cw <= 70
        # Independent formulation: intersect each box with the crop window, keep those with positive area.
        window = torch.tensor([left, top, left + cw, top + ch], dtype=torch.float32)
        inter = torch.cat([torch.maximum(boxes[:, :2], window[:2]), torch.minimum(boxes[:, 2:], window[2:])], 1)
        keep = (inter[:, 2] > inter[:, 0]) & (inter[:, 3] > inter[:, 1])
        expected = inter[keep] - torch.tensor([left, top, left, top], dtype=torch.float32)
        torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), expected)
        idx = keep.nonzero().squeeze(1)
        assert out["box_index"].tolist() == idx.tolist()
        assert out["labels"].tolist() == [10 + int(i) for i in idx]
        assert out["attributes"] == [[["a"], ["b"], ["c"], ["d"]][int(i)][0:1] for i in idx]
        assert out["iscrowd"].tolist() == [[0, 1, 0, 0][int(i)] for i in idx]
        dropped_some |= bool((~keep).any())
    assert dropped_some


def test_only_the_crop_drops_boxes():
    """Downscaling makes a 2-pixel box 0.2 pixel wide; it must survive (no SanitizeBoundingBoxes-style filter)."""
    tgt = {"boxes": [[100.0, 100.0, 102.0, 102.0], [0.0, 0.0, 320.0, 320.0]], "labels": [0, 1]}
    torch.manual_seed(0)
    for t in (make_eval_transforms(size=32, max_size=64),
              make_train_transforms(scales=(32,), max_size=64, crop=False)):
        _, out, _ = t(image(320, 320), tgt, None)
        assert out["boxes"].shape == (2, 4) and out["labels"].tolist() == [0, 1]
        assert (out["boxes"][0, 2:] > 0).all()


def test_train_with_crop_keeps_fields_aligned_and_boxes_normalised():
    t = make_train_transforms(scales=(48, 64), max_size=100)
    tgt = target()
    for seed in range(30):
        torch.manual_seed(seed)
        img, out, _ = t(image(), tgt, "x")
        n = len(out["boxes"])
        assert len(out["labels"]) == len(out["attributes"]) == len(out["box_index"]) == n
        assert out["labels"].tolist() == [tgt["labels"][i].item() for i in out["box_index"]]
        assert (out["boxes"] >= 0).all() and (out["boxes"] <= 1 + 1e-6).all()
        assert out["size"].tolist() == list(img.shape[-2:])
        assert out["image_id"] == 42


def test_small_image_preset_derives_crop_sizes():
    t = make_train_transforms(scales=(224, 256), max_size=384)
    crop = t.transforms[2].transforms[1].transforms[1]
    assert (crop.min_size, crop.max_size) == (123, 192)  # DETR's (384, 600) scaled by 256 / 800
    default = make_train_transforms().transforms[2].transforms[1]
    assert [r.size for r in default.transforms[0].transform.transforms] == [[400], [500], [600]]
    assert (default.transforms[1].min_size, default.transforms[1].max_size) == (384, 600)


# ----------------------------------------------------------------------------------------------- input conversion


def test_grayscale_and_rgba_become_rgb():
    gray = torch.randint(0, 256, (1, 12, 16), dtype=torch.uint8)
    rgba = torch.randint(0, 256, (4, 12, 16), dtype=torch.uint8)
    prep = PrepareInputs()
    for given_image, expected in [
        (gray, gray.expand(3, -1, -1)),
        (Image.fromarray(gray[0].numpy(), mode="L"), gray.expand(3, -1, -1)),
        (rgba, rgba[:3]),
        (Image.fromarray(rgba.permute(1, 2, 0).numpy(), mode="RGBA"), rgba[:3]),
        (Image.fromarray(rgba[:3].permute(1, 2, 0).numpy(), mode="RGB"), rgba[:3]),
    ]:
        out, _, _ = prep(given_image, None, None)
        assert isinstance(out, tv_tensors.Image) and out.dtype == torch.uint8
        assert torch.equal(out.as_subclass(torch.Tensor), expected)


def test_boxes_in_another_format_and_lists_are_accepted():
    xyxy = target()["boxes"]
    cxcywh = tv_tensors.BoundingBoxes(box_convert(xyxy, "xyxy", "cxcywh"), format="CXCYWH", canvas_size=(60, 90))
    t = make_eval_transforms(size=60, max_size=200)
    a = t(image(), {"boxes": cxcywh, "labels": [3, 7, 1]}, None)[1]["boxes"]
    b = t(image(), {"boxes": xyxy.tolist(), "labels": [3, 7, 1]}, None)[1]["boxes"]
    torch.testing.assert_close(a, b)


def test_boxes_slightly_outside_are_clamped():
    _, out, _ = PrepareInputs()(image(), {"boxes": [[-0.4, 2.0, 90.3, 60.2]], "labels": [1]}, None)
    assert out["boxes"].tolist() == [[0.0, 2.0, 90.0, 60.0]]


@pytest.mark.parametrize(
    "img, tgt, error, match",
    [
        (image().float(), None, TypeError, "dtype torch.float32"),
        (image().permute(1, 2, 0).contiguous(), None, ValueError, "channels-last"),
        (torch.zeros(2, 5, 5, dtype=torch.uint8), None, ValueError, "got shape \\(2, 5, 5\\)"),
        (torch.zeros(5, 5, dtype=torch.uint8), None, ValueError, "\\[C, H, W\\]"),
        (torch.zeros(3, 0, 5, dtype=torch.uint8), None, ValueError, "empty image"),
        (np.zeros((5, 5, 3), dtype=np.uint8), None, TypeError, "ndarray"),
        (image(), {"boxes": [[1, 2, 3]], "labels": [0], "image_id": 9}, ValueError, "image 9.*\\[N, 4\\]"),
        (image(), {"boxes": [[5, 5, 2, 8]], "labels": [0], "image_id": 9}, ValueError, "image 9: box 0"),
        (image(), {"boxes": [[1, 1, 5, 5], [1, float("nan"), 5, 5]], "labels": [0, 1]}, ValueError, "box 1"),
        (image(), {"boxes": [[95, 1, 99, 5]], "labels": [0]}, ValueError, "outside the image"),
        (image(), {"boxes": [[1, 1, 5, 5]]}, ValueError, "no 'labels'"),
        (image(), {"boxes": [[1, 1, 5, 5]], "labels": [0, 1]}, ValueError, "'labels'.* 2 entries for 1 boxes"),
        (image(), {"boxes": [[1, 1, 5, 5]], "labels": [0], "attributes": []}, ValueError, "'attributes'"),
        (
            image(),
            {"boxes": tv_tensors.BoundingBoxes([[1, 1, 5, 5]], format="XYXY", canvas_size=(10, 10)), "labels": [0]},
            ValueError,
            "canvas_size",
        ),
    ],
)
def test_input_errors_name_the_problem(img, tgt, error, match):
    with pytest.raises(error, match=match):
        make_eval_transforms(size=32, max_size=64)(img, tgt, None)
