"""Speed levers of inference, each measured on and off in the same run: encode + detect, batch 1, 40 text tokens.

The baseline is eager float32 with SDPA attention, a contiguous (NCHW) backbone (`channels_last=False`: the
library's default for a frozen-BatchNorm trunk is channels_last, because this lever wins), under `torch.no_grad()`;
every other variant changes exactly one thing from it:

| variant          | lever                  | on / off                                                                  |
|------------------|------------------------|---------------------------------------------------------------------------|
| `math_attention` | SDPA                   | off: `F.scaled_dot_product_attention` replaced by softmax(QK^T/sqrt(d) + mask) V |
| `channels_last`  | channels_last backbone | on: backbone weights and the image in `torch.channels_last`               |
| `inference_mode` | inference_mode         | on: `torch.inference_mode()` instead of `torch.no_grad()`                 |
| `bf16_autocast`  | bf16 autocast          | on: `torch.autocast(dtype=torch.bfloat16)`                                |
| `compile`        | torch.compile          | on: `torch.compile` of encode + detect (compiled before timing)           |

Each test times its variant with the baseline run just before every round (`benchmark_paired`), so the speed-up
(time off / time on) compares two passes of the same moment of a noisy machine. Every variant must give the
baseline's detections (float32 levers within 1e-3; bf16 within its precision), so a lever that wins is safe to
keep.

    quick (make test):  e2evlp-tiny at 224x373, one round, no torch.compile (compiling takes minutes on a CPU)
                        and no bf16 on a CPU
    full  (make bench): e2evlp-6-r50 at 800x1333, every lever, 3 rounds
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

from benchmarks.bench_forward import DEVICE, benchmark_paired, example_inputs, synchronize
from benchmarks.conftest import pick
from vlpkit.builder import build_e2evlp

PRESET = pick("e2evlp-tiny", "e2evlp-6-r50")
SIZE = pick((224, 373), (800, 1333))
ROUNDS = pick(1, 3)
# quick mode leaves out torch.compile, and bf16 on a CPU (without native bf16 it is emulated: 30x slower here)
VARIANTS = ["math_attention", "channels_last", "inference_mode"] + pick(
    ["bf16_autocast"] if DEVICE.type == "cuda" else [], ["bf16_autocast", "compile"])
LEVERS = {  # variant -> (lever, is the variant the lever's "on" side)
    "math_attention": ("SDPA", False), "channels_last": ("channels_last backbone", True),
    "inference_mode": ("inference_mode", True), "bf16_autocast": ("bf16 autocast", True),
    "compile": ("torch.compile", True),
}

_state: dict = {}


def math_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """softmax(Q K^T / sqrt(d) + mask) V written out, the "SDPA off" path (no fused kernel, full score matrix)."""
    if dropout_p or is_causal or enable_gqa:
        raise NotImplementedError("math_attention covers inference calls only (no dropout, causal flag or GQA)")
    scores = query @ key.transpose(-2, -1) * (query.shape[-1] ** -0.5 if scale is None else scale)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return scores.softmax(dim=-1) @ value


@contextlib.contextmanager
def explicit_attention():
    """Route `F.scaled_dot_product_attention` (which vlpkit.models.attention calls) to `math_attention`."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = math_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def base_model():
    if "model" not in _state:
        torch.manual_seed(0)
        _state["model"] = build_e2evlp(PRESET, channels_last=False).eval().to(DEVICE)
    return _state["model"]


def runner(variant: str, pixels: torch.Tensor, ids: torch.Tensor):
    """A no-argument function running encode + detect under `variant` ("baseline" or one of VARIANTS)."""
    model = base_model()
    if variant == "channels_last":
        model = copy.deepcopy(model)
        model.backbone.trunk.to(memory_format=torch.channels_last)
        model.backbone.channels_last = True  # what build_e2evlp(channels_last=True) sets up
    autocast = (lambda: torch.autocast(DEVICE.type, dtype=torch.bfloat16)) if variant == "bf16_autocast" else (
        contextlib.nullcontext)

    def forward(pixels, ids):
        with autocast():
            return model.detect(model.encode(pixels, None, ids))

    if variant == "compile":
        forward = torch.compile(forward)
    grad_mode = torch.inference_mode if variant == "inference_mode" else torch.no_grad
    attention = explicit_attention if variant == "math_attention" else contextlib.nullcontext

    def run():
        with grad_mode(), attention():
            out = forward(pixels, ids)
        synchronize()
        return out

    return run


@pytest.mark.parametrize("variant", VARIANTS)
def test_lever_speed(benchmark, variant):
    model = base_model()
    pixels, ids = example_inputs(model.config, *SIZE)
    baseline, run = runner("baseline", pixels, ids), runner(variant, pixels, ids)
    lever, on = LEVERS[variant]
    benchmark.group = f"levers {PRESET} {SIZE[0]}x{SIZE[1]}"
    benchmark.extra_info.update(kind="lever", variant=variant, lever=lever, on=on, preset=PRESET,
                                height=SIZE[0], width=SIZE[1], device=str(DEVICE))
    # bf16 emulated on a CPU is ~30x slower: one round, no warm-up, tells enough
    slow = variant == "bf16_autocast" and DEVICE.type == "cpu"
    reference = baseline()  # warm-up
    if not slow:
        run()  # warm-up (compiles for torch.compile)
    out, _ = benchmark_paired(benchmark, run, {"baseline": baseline}, 1 if slow else ROUNDS, warm_partners=False)
    ratio = benchmark.extra_info["paired"]["baseline"]["ratio"]  # baseline time / variant time
    benchmark.extra_info["speedup"] = ratio if on else 1 / ratio  # time off / time on
    box_error = float((out.pred_boxes.float() - reference.pred_boxes).abs().max())
    logit_error = float((out.pred_logits.float() - reference.pred_logits).abs().max())
    benchmark.extra_info.update(max_box_error=box_error, max_logit_error=logit_error)
    box_tol, logit_tol = (0.01, 0.1) if variant == "bf16_autocast" else (1e-3, 1e-3)
    assert box_error <= box_tol and logit_error <= logit_tol
