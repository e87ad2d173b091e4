"""`generate` on a tiny E2E-VLP: scores are teacher-forced log-probabilities, cached = uncached, greedy = one
beam, the batch layout (images x beams) never mixes images, and cross-attention keys/values are projected once."""

from __future__ import annotations

import math

import pytest
import torch

from vlpkit.builder import build_e2evlp
from vlpkit.generation import CachedCaptionStep, beam_search, generate, greedy_search, length_penalty
from vlpkit.outputs import GenerationOutput

VOCAB = 12


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_e2evlp("e2evlp-tiny", vocab_size=VOCAB).eval()
    with torch.no_grad():  # peaked, image-dependent distributions so that EOS comes at varied lengths
        m.caption_head.norm.weight.mul_(4.0)
    return m


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(4, 3, 64, 64)


@pytest.fixture(scope="module")
def encoding(model, images):
    with torch.no_grad():
        return model.encode(images)


def trim(seq: list[int], eos: int) -> list[int]:
    return seq[: seq.index(eos) + 1]


def teacher_forced_score(model, encoding, image, seq, alpha, style):
    """Penalised log-probability of `seq` (ending with EOS) under caption_logits on [BOS] + seq[:-1]."""
    cfg = model.config
    ids = torch.tensor([[cfg.bos_token_id, *seq[:-1]]])
    with torch.no_grad():
        rows = encoding.repeat_interleave(1)
        one = type(rows)(rows.memory[image:image + 1], rows.memory_padding_mask[image:image + 1],
                         rows.memory_pos[image:image + 1], rows.text_length, rows.grid_size)
        logp = model.caption_logits(one, ids)[0].double().log_softmax(-1)
    summed = logp.gather(-1, torch.tensor(seq)[:, None]).sum().item()
    return summed / length_penalty(len(seq), alpha, style).item()


@pytest.mark.parametrize("style,alpha", [("gnmt", 0.9), ("power", 0.6), ("none", 0.0)])
def test_scores_are_penalised_teacher_forced_logprobs(model, encoding, style, alpha):
    out = generate(model, encoding, num_beams=4, max_length=8, min_length=2, length_penalty=alpha,
                   length_penalty_style=style, num_return_sequences=4)
    eos = model.config.eos_token_id
    lengths = set()
    for image in range(4):
        for seq, score in zip(out.all_sequences[image].tolist(), out.all_scores[image].tolist()):
            seq = trim(seq, eos)
            lengths.add(len(seq))
            assert score == pytest.approx(teacher_forced_score(model, encoding, image, seq, alpha, style), abs=1e-4)
        assert out.all_scores[image].diff().le(0).all()  # best first
    assert len(lengths) >= 2  # the check covers sequences of several lengths, not only max_length
    assert torch.equal(out.sequences, out.all_sequences[:, 0]) and torch.equal(out.scores, out.all_scores[:, 0])


def test_greedy_scores_are_teacher_forced_logprobs(model, encoding):
    out = generate(model, encoding, num_beams=1, max_length=8, length_penalty=0.9)
    for image in range(4):
        seq = trim(out.sequences[image].tolist(), model.config.eos_token_id)
        assert out.scores[image].item() == pytest.approx(
            teacher_forced_score(model, encoding, image, seq, 0.9, "gnmt"), abs=1e-4)


def test_one_beam_is_greedy_token_for_token(model, encoding):
    cfg = model.config
    out = generate(model, encoding, num_beams=1, max_length=10)
    # independent greedy: argmax of caption_logits on the whole prefix, one image at a time
    for image in range(4):
        one = encoding.repeat_interleave(1)
        one = type(one)(one.memory[image:image + 1], one.memory_padding_mask[image:image + 1],
                        one.memory_pos[image:image + 1], one.text_length, one.grid_size)
        ids = [cfg.bos_token_id]
        while len(ids) <= 10:
            with torch.no_grad():
                logits = model.caption_logits(one, torch.tensor([ids]))[0, -1]
            logits[cfg.pad_token_id] = -math.inf
            token = cfg.eos_token_id if len(ids) == 10 else int(logits.argmax())
            ids.append(token)
            if token == cfg.eos_token_id:
                break
        assert trim(out.sequences[image].tolist(), cfg.eos_token_id) == ids[1:]
    # and the beam-search code path with one beam (no length penalty to favour longer hypotheses) agrees
    step = CachedCaptionStep(model, encoding)
    with torch.no_grad():
        beam = beam_search(step, 4, num_beams=1, max_length=10, length_penalty_style="none",
                           reorder_fn=step.reorder, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
                           pad_token_id=cfg.pad_token_id)
    assert torch.equal(beam.sequences, out.sequences)


@pytest.mark.parametrize("num_beams", [1, 4])
def test_cached_and_uncached_decoding_agree(model, encoding, num_beams):
    kw = dict(num_beams=num_beams, max_length=12, min_length=2, num_return_sequences=num_beams)
    cached = generate(model, encoding, use_cache=True, **kw)
    uncached = generate(model, encoding, use_cache=False, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.scores, uncached.scores, atol=1e-5, rtol=0)
    if num_beams > 1:
        assert torch.equal(cached.all_sequences, uncached.all_sequences)


def test_images_do_not_mix_across_the_batch(model, encoding):
    batch = generate(model, encoding, num_beams=3, max_length=10, num_return_sequences=3)
    eos = model.config.eos_token_id
    for image in range(4):
        one = encoding.repeat_interleave(1)
        one = type(one)(one.memory[image:image + 1], one.memory_padding_mask[image:image + 1],
                        one.memory_pos[image:image + 1], one.text_length, one.grid_size)
        alone = generate(model, one, num_beams=3, max_length=10, num_return_sequences=3)
        for a, b in zip(alone.all_sequences[0].tolist(), batch.all_sequences[image].tolist()):
            assert trim(a, eos) == trim(b, eos)
        torch.testing.assert_close(alone.all_scores[0], batch.all_scores[image], atol=1e-5, rtol=0)


def test_cross_attention_projected_once_for_all_beams(model, encoding, monkeypatch):
    calls = []
    original = model.decoder.memory_kv

    def counting(memory, memory_pos):
        calls.append(memory.shape[0])
        return original(memory, memory_pos)

    monkeypatch.setattr(model.decoder, "memory_kv", counting)
    generate(model, encoding, num_beams=4, max_length=10)
    assert calls == [4]  # projected once per image for the whole search (then repeated per beam)
    calls.clear()
    generate(model, encoding, num_beams=4, max_length=10, use_cache=False)
    assert len(calls) > 1  # the uncached reference really recomputes


def test_output_layout(model, images):
    cfg = model.config
    out = model.generate(pixel_values=images, num_beams=2, max_length=6, min_length=3)
    assert isinstance(out, GenerationOutput) and out.all_sequences is None
    assert out.sequences.dtype == torch.long and out.sequences.shape[0] == 4 and out.sequences.shape[1] <= 6
    assert out.scores.shape == (4,) and out.scores.isfinite().all()
    is_eos = out.sequences == cfg.eos_token_id
    assert is_eos.sum(1).eq(1).all()  # BOS excluded, exactly one EOS
    lengths = is_eos.float().argmax(1) + 1
    assert lengths.min() >= 3
    after = torch.arange(out.sequences.shape[1]) >= lengths[:, None]
    assert out.sequences[after].eq(cfg.pad_token_id).all() and out.sequences[~after].ne(cfg.pad_token_id).all()
    direct = generate(model, model.encode(images), num_beams=2, max_length=6, min_length=3)
    assert torch.equal(out.sequences, direct.sequences)


def test_bad_arguments_are_named(model, encoding):
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        generate(model, encoding, max_length=65)
    with pytest.raises(ValueError, match="num_return_sequences=2"):
        generate(model, encoding, num_beams=1, num_return_sequences=2)
    with pytest.raises(TypeError, match="EncoderOutput"):
        generate(model, encoding.memory)
    with pytest.raises(ValueError, match="length_penalty_style"):
        generate(model, encoding, length_penalty_style="linear")


def test_search_functions_are_exported():
    assert callable(greedy_search) and callable(beam_search)
