"""Caption decoding speed: cached vs uncached, beam 4 vs greedy, and vlpkit vs `transformers` generate.

Every run decodes exactly `max_length` tokens (min_length = max_length), so that all methods do the same
amount of work on random-init models (which seldom emit EOS). The encoder output is synthetic (random memory
of S = 2 + grid positions): only decoding is timed.

Targets (full mode, length 40): cached >= 3x faster than uncached; beam 4 <= 2x greedy per batch; vlpkit not
slower than Hugging Face `BertLMHeadModel.generate(num_beams=4)` with the same width, depth, heads, FFN size,
vocabulary and memory length. A summary table of these ratios is printed at the end of the module (`-s`).

    quick (make test):  e2evlp-tiny decoder, batch 2, length 8, memory 2 + 4x4, one round
    full  (make bench): e2evlp-tiny and e2evlp-6-r50 decoders, batch 8 and 32, length 40, memory 2 + 20x20
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import pick
from vlpkit.builder import build_e2evlp
from vlpkit.generation import generate
from vlpkit.outputs import EncoderOutput

PRESETS = pick(["e2evlp-tiny"], ["e2evlp-tiny", "e2evlp-6-r50"])
BATCHES = pick([2], [8, 32])
MAX_LENGTH = pick(8, 40)
GRID = pick(4, 20)
ROUNDS = pick(1, 3)  # uncached decoding (the slow reference, ~10x slower) runs one round in full mode too
METHODS = ["cached", "uncached", "greedy", "hf"]

_models: dict = {}
_medians: dict = {}


def vlpkit_model(preset: str):
    if preset not in _models:
        torch.manual_seed(0)
        _models[preset] = build_e2evlp(preset).eval()
    return _models[preset]


def hf_peer(preset: str):
    """A random-init `BertLMHeadModel` decoder (self-attention, cross-attention, FFN, post-norm) of our sizes."""
    from transformers import BertConfig, BertLMHeadModel

    key = (preset, "hf")
    if key not in _models:
        cfg = vlpkit_model(preset).config
        torch.manual_seed(0)
        _models[key] = BertLMHeadModel(BertConfig(
            is_decoder=True, add_cross_attention=True, hidden_size=cfg.d_model,
            num_hidden_layers=cfg.num_decoder_layers, num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.dim_feedforward, vocab_size=cfg.vocab_size,
            max_position_embeddings=cfg.max_position_embeddings, pad_token_id=cfg.pad_token_id,
            bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)).eval()
    return _models[key]


def synthetic_encoding(d_model: int, batch: int) -> EncoderOutput:
    g = torch.Generator().manual_seed(1)
    length = 2 + GRID * GRID
    return EncoderOutput(torch.randn(batch, length, d_model, generator=g),
                         torch.zeros(batch, length, dtype=torch.bool),
                         torch.randn(batch, length, d_model, generator=g), 2, (GRID, GRID))


def run_hf(model, encoding: EncoderOutput, bos: int):
    from transformers import DynamicCache, EncoderDecoderCache

    batch = encoding.memory.shape[0]
    with torch.no_grad():
        # transformers 5.x creates a plain DynamicCache for decoder-only models, which Bert's cross-attention
        # cannot use ('DynamicCache' object has no attribute 'is_updated'); an EncoderDecoderCache also makes it
        # project the memory's cross-attention keys/values once, as we do.
        return model.generate(input_ids=torch.full((batch, 1), bos), encoder_hidden_states=encoding.memory,
                              encoder_attention_mask=torch.ones(encoding.memory.shape[:2], dtype=torch.long),
                              num_beams=4, max_new_tokens=MAX_LENGTH, min_new_tokens=MAX_LENGTH, do_sample=False,
                              length_penalty=0.9, early_stopping=False,
                              cache=EncoderDecoderCache(DynamicCache(), DynamicCache()))


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if not _medians:
        return
    lines = [f"\ncaption decoding, beam 4, length {MAX_LENGTH}, memory 2+{GRID}x{GRID} (median s)",
             "| decoder | batch | cached | uncached | greedy | HF beam 4 | uncached/cached | beam4/greedy | HF/vlpkit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for preset in PRESETS:
        for batch in BATCHES:
            t = {m: _medians.get((preset, batch, m), float("nan")) for m in METHODS}
            lines.append(f"| {preset} | {batch} | {t['cached']:.3f} | {t['uncached']:.3f} | {t['greedy']:.3f} | "
                         f"{t['hf']:.3f} | {t['uncached'] / t['cached']:.1f}x | {t['cached'] / t['greedy']:.2f}x | "
                         f"{t['hf'] / t['cached']:.2f}x |")
    print("\n".join(lines))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("preset", PRESETS)
def test_generation_speed(benchmark, preset, batch, method):
    model = vlpkit_model(preset)
    encoding = synthetic_encoding(model.config.d_model, batch)
    benchmark.group = f"generate {preset} batch {batch}"
    if method == "hf":
        peer = hf_peer(preset)
        out = benchmark.pedantic(run_hf, args=(peer, encoding, model.config.bos_token_id), rounds=ROUNDS,
                                 iterations=1, warmup_rounds=1 if ROUNDS > 1 else 0)
        assert out.shape == (batch, MAX_LENGTH + 1)
    else:
        kwargs = dict(num_beams=1 if method == "greedy" else 4, max_length=MAX_LENGTH, min_length=MAX_LENGTH,
                      use_cache=method != "uncached")
        rounds = 1 if method == "uncached" else ROUNDS
        out = benchmark.pedantic(generate, args=(model, encoding), kwargs=kwargs, rounds=rounds, iterations=1,
                                 warmup_rounds=1 if rounds > 1 else 0)
        assert out.sequences.shape == (batch, MAX_LENGTH)
    _medians[(preset, batch, method)] = benchmark.stats.stats.median
