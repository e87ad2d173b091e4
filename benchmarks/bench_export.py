"""Deployment: `torch.export` programs (vlpkit.export) against the eager model, same inputs, same run.

- `test_export_detector_speed`: encode + detect at a fixed input size (batch 1, 40 text tokens, unpadded image),
  `export_detector(...).module()` against eager, both under `torch.inference_mode()`; outputs must agree within
  1e-4. `extra_info["export_seconds"]` is the time `torch.export.export` took.
- `test_export_decode_step_speed`: one incremental caption step (beam width 4 of one image: batch 4, past length
  10, memory of the image-only encoding), `export_decode_step(...).module()` against eager `decode_step`.

The exported program is timed with the eager call run just before each round (`benchmark_paired`); speed-up =
eager time / exported time, the median over rounds.

    quick (make test):  e2evlp-tiny at 128x192, one round
    full  (make bench): e2evlp-6-r50 at 800x1333, 5 rounds (decoding step: 20 rounds)
"""

from __future__ import annotations

import time

import torch

from benchmarks.bench_forward import DEVICE, TEXT_TOKENS, benchmark_paired, example_inputs
from benchmarks.conftest import pick
from vlpkit.builder import build_e2evlp
from vlpkit.export import cache_to_tensors, export_decode_step, export_detector
from vlpkit.models.decoder import DecoderCache

PRESET = pick("e2evlp-tiny", "e2evlp-6-r50")
SIZE = pick((128, 192), (800, 1333))
BEAMS, PAST = 4, 10
TOL = 1e-4

_state: dict = {}


def model():
    if "model" not in _state:
        torch.manual_seed(0)
        _state["model"] = build_e2evlp(PRESET).eval().to(DEVICE)
    return _state["model"]


def detector_program():
    if "detector" not in _state:
        pixels, ids = example_inputs(model().config, *SIZE)
        start = time.perf_counter()
        _state["detector"] = export_detector(model(), pixels, ids).module()
        _state["detector_seconds"] = time.perf_counter() - start
    return _state["detector"]


def decoding_cache():
    """A DecoderCache of BEAMS rows with PAST tokens decoded eagerly, and the next tokens [BEAMS, 1]."""
    if "cache" not in _state:
        m = model()
        pixels, _ = example_inputs(m.config, *SIZE)
        g = torch.Generator().manual_seed(2)
        with torch.inference_mode():
            encoding = m.encode(pixels.expand(BEAMS, -1, -1, -1))
            cache = m.init_decoder_cache(encoding)
            m.decode_step(torch.randint(5, m.config.vocab_size, (BEAMS, PAST), generator=g).to(DEVICE), cache)
        _state["cache"] = cache
        _state["tokens"] = torch.randint(5, m.config.vocab_size, (BEAMS, 1), generator=g).to(DEVICE)
    return _state["cache"], _state["tokens"]


def step_program():
    if "step" not in _state:
        cache, tokens = decoding_cache()
        start = time.perf_counter()
        _state["step"] = export_decode_step(model(), tokens, cache).module()
        _state["step_seconds"] = time.perf_counter() - start
    return _state["step"]


def test_export_detector_speed(benchmark):
    """The exported program, timed, with an eager encode + detect just before each round."""
    m = model()
    pixels, ids = example_inputs(m.config, *SIZE)
    attention = torch.ones_like(ids)
    program = detector_program()

    def eager():
        out = m.detect(m.encode(pixels, None, ids))
        return out.pred_logits, out.pred_boxes, out.pred_attributes

    benchmark.group = "export"
    benchmark.extra_info.update(kind="export", part="encode + detect", preset=PRESET, height=SIZE[0],
                                width=SIZE[1], text_tokens=TEXT_TOKENS, device=str(DEVICE),
                                export_seconds=_state["detector_seconds"])
    with torch.inference_mode():
        expected, _ = eager(), program(pixels, ids, attention)  # warm-up
        out, _ = benchmark_paired(benchmark, program, {"eager": eager}, pick(1, 5), args=(pixels, ids, attention),
                                  warm_partners=False)
    error = max(float((a - b).abs().max()) for a, b in zip(out, expected, strict=True))
    benchmark.extra_info.update(max_abs_error=error, speedup=benchmark.extra_info["paired"]["eager"]["ratio"])
    assert error <= TOL


def test_export_decode_step_speed(benchmark):
    """The exported decoding step, timed, with an eager `decode_step` just before each round."""
    m = model()
    cache, tokens = decoding_cache()
    program = step_program()
    flat = cache_to_tensors(cache)

    def eager():  # decode_step extends the cache it is given: give it a fresh (shallow) copy every time
        return m.decode_step(tokens, DecoderCache(cache.cross_kv, cache.memory_padding_mask, list(cache.self_kv)))

    benchmark.group = "export"
    benchmark.extra_info.update(kind="export", part="decoding step", preset=PRESET, batch=BEAMS, past=PAST,
                                memory=int(cache.memory_padding_mask.shape[1]), device=str(DEVICE),
                                export_seconds=_state["step_seconds"])
    with torch.inference_mode():
        expected, _ = eager(), program(tokens, *flat)  # warm-up
        out, _ = benchmark_paired(benchmark, lambda: program(tokens, *flat)[0], {"eager": eager}, pick(3, 20),
                                  warm_partners=False)
    error = float((out - expected).abs().max())
    benchmark.extra_info.update(max_abs_error=error, speedup=benchmark.extra_info["paired"]["eager"]["ratio"])
    assert out.shape == (BEAMS, 1, m.config.vocab_size) and error <= TOL
