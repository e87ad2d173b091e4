"""Padding a batch (pixels or tokens) must not change any real position's output."""

import pytest
import torch

from vlpkit import build_e2evlp


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_e2evlp("e2evlp-tiny").eval()


def _pad_image(img: torch.Tensor, height: int, width: int):
    padded = torch.zeros(img.shape[0], 3, height, width)
    padded[:, :, : img.shape[2], : img.shape[3]] = img
    mask = torch.zeros(img.shape[0], height, width, dtype=torch.bool)
    mask[:, : img.shape[2], : img.shape[3]] = True
    return padded, mask


@pytest.mark.parametrize("size", [(70, 90), (64, 64), (97, 33)])
def test_pixel_padding_leaves_real_outputs_unchanged(model, size):
    img = torch.randn(1, 3, *size)
    ids = torch.tensor([[2, 50, 60, 70, 3]])
    with torch.no_grad():
        alone = model(img, input_ids=ids)
        padded, mask = _pad_image(img, 130, 161)
        batched = model(padded, mask, input_ids=ids)
    enc_a, enc_b = alone.encoder, batched.encoder
    gh, gw = enc_a.grid_size
    real_b = enc_b.image_states.unflatten(1, enc_b.grid_size)[:, :gh, :gw].flatten(1, 2)
    torch.testing.assert_close(real_b, enc_a.image_states, atol=1e-5, rtol=0)
    torch.testing.assert_close(enc_b.text_states, enc_a.text_states, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.detection.pred_boxes, alone.detection.pred_boxes, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.detection.pred_logits, alone.detection.pred_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.itm_logits, alone.itm_logits, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def prior_model():
    """With the optional spatial prior: its Gaussian is placed in each image's own extent, so padding cannot move
    it. The reference points are moved off their grid so that the test does not rest on a symmetric start."""
    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-tiny", detection_spatial_prior=0.15).eval()
    with torch.no_grad():
        model.reference_points.weight.add_(0.2 * torch.randn_like(model.reference_points.weight))
    return model


@pytest.mark.parametrize("which", ["model", "prior_model"])
def test_batch_of_different_sizes_matches_each_alone(request, which):
    model = request.getfixturevalue(which)
    imgs = [torch.randn(1, 3, 80, 64), torch.randn(1, 3, 50, 100)]
    pixels = torch.zeros(2, 3, 80, 100)
    mask = torch.zeros(2, 80, 100, dtype=torch.bool)
    for i, im in enumerate(imgs):
        pixels[i, :, : im.shape[2], : im.shape[3]] = im[0]
        mask[i, : im.shape[2], : im.shape[3]] = True
    with torch.no_grad():
        both = model.detect(model.encode(pixels, mask))
        for i, im in enumerate(imgs):
            single = model.detect(model.encode(im))
            torch.testing.assert_close(both.pred_boxes[i], single.pred_boxes[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(both.pred_logits[i], single.pred_logits[0], atol=1e-5, rtol=0)


def test_pad_tokens_leave_real_outputs_unchanged(model):
    img = torch.randn(1, 3, 64, 96)
    ids = torch.tensor([[2, 11, 12, 13, 3]])
    padded_ids = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    attention = torch.cat([torch.ones(1, 5), torch.zeros(1, 6)], dim=1).long()
    with torch.no_grad():
        a = model(img, input_ids=ids)
        b = model(img, input_ids=padded_ids, attention_mask=attention)
    torch.testing.assert_close(b.encoder.text_states[:, :5], a.encoder.text_states, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.encoder.image_states, a.encoder.image_states, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.mlm_logits[:, :5], a.mlm_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(b.detection.pred_boxes, a.detection.pred_boxes, atol=1e-5, rtol=0)


def test_without_masking_padding_would_leak(model):
    """The backbone's padding masking is what makes the pixel test pass (DETR's plain trunk leaks at borders)."""
    leaky = build_e2evlp("e2evlp-tiny", mask_backbone_padding=False).eval()
    leaky.load_state_dict(model.state_dict())
    img = torch.randn(1, 3, 70, 90) + 1.0
    padded, mask = _pad_image(img, 130, 161)
    with torch.no_grad():
        a = leaky.backbone(img)[0]
        b = leaky.backbone(padded, mask)[0][..., : a.shape[2], : a.shape[3]]
    assert (a - b).abs().max() > 1e-3


def test_stride16_trunk_is_padding_invariant_too():
    model = build_e2evlp("e2evlp-tiny", backbone_last_stage="layer3").eval()
    img = torch.randn(1, 3, 75, 90)
    padded, mask = _pad_image(img, 128, 160)
    with torch.no_grad():
        alone = model.embed_image(img)
        batched = model.embed_image(padded, mask)
    assert alone.grid_size == (5, 6) and batched.grid_size == (8, 10)
    real = batched.features.unflatten(1, batched.grid_size)[:, :5, :6].flatten(1, 2)
    torch.testing.assert_close(real, alone.features, atol=1e-5, rtol=0)
    assert int((~batched.padding_mask).sum()) == 30
