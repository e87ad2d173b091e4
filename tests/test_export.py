"""torch.export of encode + detect and of one decoding step: exported programs agree with the eager model."""

from __future__ import annotations

import pytest
import torch

from vlpkit.builder import build_e2evlp
from vlpkit.export import cache_to_tensors, export_decode_step, export_detector

TOL = 1e-4
H, W = 64, 96


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_e2evlp("e2evlp-tiny").eval()


@pytest.fixture(scope="module")
def padded_batch():
    """Two images, the second with real size 40 x 50 padded to 64 x 96; two texts, the second padded."""
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(2, H, W, dtype=torch.bool)
    mask[1, 40:] = False
    mask[1, :, 50:] = False
    pixels = torch.randn(2, 3, H, W, generator=g) * mask[:, None]
    ids = torch.randint(5, 1000, (2, 7), generator=g)
    attention = torch.ones(2, 7, dtype=torch.long)
    attention[1, 5:] = 0
    ids[1, 5:] = 0
    return pixels, mask, ids, attention


@pytest.fixture(scope="module")
def detector_program(model, padded_batch):
    pixels, mask, ids, attention = padded_batch
    return export_detector(model, pixels, ids, pixel_mask=mask, attention_mask=attention)


def eager_detection(model, pixels, mask, ids, attention):
    with torch.no_grad():
        out = model.detect(model.encode(pixels, mask, ids, attention))
    return out.pred_logits, out.pred_boxes, out.pred_attributes


def max_difference(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def test_exported_detector_matches_eager_on_a_padded_batch(model, padded_batch, detector_program):
    expected = eager_detection(model, *padded_batch)
    with torch.no_grad():
        got = detector_program.module()(*padded_batch)
    assert len(got) == 3 and got[0].shape == (2, model.config.num_queries, model.config.num_classes + 1)
    assert max_difference(got, expected) <= TOL


def test_exported_detector_applies_the_pixel_mask(model, padded_batch, detector_program):
    """The padded image's detections equal those of the same image alone, unpadded (eager): the exported program
    zeroes the padding as the eager backbone does, although it never asks whether the batch is padded."""
    pixels, mask, ids, attention = padded_batch
    alone = eager_detection(model, pixels[1:, :, :40, :50], None, ids[1:, :5], attention[1:, :5])
    with torch.no_grad():
        got = detector_program.module()(*padded_batch)
    assert max_difference([g[1:] for g in got], alone) <= TOL


def test_exported_detector_without_pixel_mask(model, padded_batch):
    pixels, _, ids, _ = padded_batch
    pixels, ids = pixels[:1], ids[:1]
    program = export_detector(model, pixels, ids)
    attention = torch.ones_like(ids)
    with torch.no_grad():
        got = program.module()(pixels, ids, attention)
    assert max_difference(got, eager_detection(model, pixels, None, ids, None)) <= TOL
    with pytest.raises(AssertionError, match="pixel_values"):  # the input size is fixed at export
        program.module()(torch.zeros(1, 3, H, W + 32), ids, attention)


def test_exported_decode_step_reproduces_eager_decoding(model, padded_batch):
    """Greedy decoding with the exported step (past lengths 1, 2, ..., 6 through one program) gives the eager
    logits and caches at every step."""
    pixels, mask = padded_batch[0], padded_batch[1]
    bos = torch.full((2, 1), model.config.bos_token_id)
    with torch.no_grad():
        encoding = model.encode(pixels, mask)
        example = model.init_decoder_cache(encoding)
        model.decode_step(bos, example)
        model.decode_step(bos + 1, example)
        program = export_decode_step(model, bos, example)

        eager = model.init_decoder_cache(encoding)
        token = model.decode_step(bos, eager)[:, -1].argmax(-1, keepdim=True)
        for _ in range(6):
            logits, new_k, new_v = program.module()(token, *cache_to_tensors(eager))
            expected = model.decode_step(token, eager)
            assert float((logits - expected).abs().max()) <= TOL
            assert new_k.shape[3] == eager.length
            assert float((new_k - torch.stack([k for k, _ in eager.self_kv])).abs().max()) <= TOL
            assert float((new_v - torch.stack([v for _, v in eager.self_kv])).abs().max()) <= TOL
            token = expected[:, -1].argmax(-1, keepdim=True)


def test_export_errors_name_the_problem(model, padded_batch):
    pixels, _, ids, _ = padded_batch
    model.train()
    try:
        with pytest.raises(ValueError, match="model.eval"):
            export_detector(model, pixels, ids)
    finally:
        model.eval()
    with torch.no_grad():
        cache = model.init_decoder_cache(model.encode(pixels))
        bos = torch.full((2, 1), model.config.bos_token_id)
        with pytest.raises(ValueError, match="no decoded token"):
            cache_to_tensors(cache)
        model.decode_step(bos, cache)
        with pytest.raises(ValueError, match="at least 2 decoded tokens"):
            export_decode_step(model, bos, cache)
        with pytest.raises(ValueError, match=r"\[B, 1\]"):
            export_decode_step(model, torch.cat([bos, bos], 1), cache)
