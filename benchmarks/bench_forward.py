"""Forward-pass speed: encode + detect against input size, against a `transformers` DETR peer, and against this
machine's matrix-multiply peak.

- `test_matmul_peak`: a square float32 matrix product; its FLOP/s is the machine's measured peak.
- `test_forward_speed`: encode (40 text tokens + image) and detect, batch 1, inference mode, at each input size.
  Its speed-up is the time at the largest size / the time at this size (the paper's Table 6 reports 5x, 3x and
  1.5x at 448x448, 448x746 and 600x1000 against 800x1333). `extra_info["flops"]` counts the pass's floating-point
  operations (`torch.utils.flop_counter`); its fraction of peak is (flops / time) / (matmul flops / matmul time).
- `test_peer_speed`: `e2evlp-6-r50` encode + detect with 40 text tokens against
  `transformers.DetrForObjectDetection` of the same size (ResNet-50, 6 + 6 layers, d = 256, FFN 1024, 8 heads,
  100 queries, random init) on the same image. Target: ours no slower despite the text tokens.

    quick (make test):  e2evlp-tiny at the paper's sizes halved; peer at 192x320; one round
    full  (make bench): e2evlp-6-r50 and e2evlp-12-r152 at 448x448 ... 800x1333; peer at 800x1333; 3 rounds

Ratios are *paired*: `benchmark_paired` runs the other side of each ratio (the 800x1333 pass, the matmul, the
peer) just before every timed round, so both sides of each pair see the same moment of a shared, noisy machine;
`extra_info["paired"][name]["ratio"]` is the median over rounds of (partner time / own time).

Runs on CUDA when one is present (timings synchronise the device), else on the CPU.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.conftest import FULL, pick
from vlpkit.builder import build_e2evlp

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TEXT_TOKENS = 40
PRESETS = pick(["e2evlp-tiny"], ["e2evlp-6-r50", "e2evlp-12-r152"])
# the paper's sizes (Table 6); quick mode halves them, which keeps their pixel-count ratios
PAPER_SIZES = [(448, 448), (448, 746), (600, 1000), (800, 1333)]
SIZES = pick([(h // 2, w // 2) for h, w in PAPER_SIZES], PAPER_SIZES)
PEER_SIZE = pick((192, 320), (800, 1333))
ROUNDS = pick(1, 3)
MATMUL_N = pick(512, 8192 if DEVICE.type == "cuda" else 2048)
MATMUL_REPEAT = pick(20, 5)  # products per paired matmul call: long enough not to be one scheduler hiccup

_models: dict = {}
_results: dict = {}


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def seconds(fn) -> float:
    """Wall time of one call of `fn`, the device synchronised before and after."""
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def benchmark_paired(benchmark, fn, partners: dict, rounds: int, args: tuple = (), warm_partners: bool = True):
    """`benchmark.pedantic(fn, args)`, each round preceded by one untimed-by-the-benchmark call of every partner.

    Records in `benchmark.extra_info`: "seconds" (fn's round times) and "paired" = {name: {"median_s": the
    partner's median, "ratio": median over rounds of partner time / fn time}}. Warm `fn` up first; the partners
    are warmed up here unless `warm_partners=False`. Returns fn's last output and fn's median time.
    """
    if warm_partners:
        for partner in partners.values():
            partner()
    own: list[float] = []
    theirs: dict[str, list[float]] = {name: [] for name in partners}

    def setup():
        for name, partner in partners.items():
            theirs[name].append(seconds(partner))

    def timed(*a):
        synchronize()
        start = time.perf_counter()
        out = fn(*a)
        synchronize()
        own.append(time.perf_counter() - start)
        return out

    out = benchmark.pedantic(timed, args=args, setup=setup, rounds=rounds, iterations=1)
    benchmark.extra_info["seconds"] = own
    benchmark.extra_info["paired"] = {
        name: {"median_s": statistics.median(ts), "ratio": statistics.median(t / o for t, o in zip(ts, own))}
        for name, ts in theirs.items()}
    return out, statistics.median(own)


def cached_model(preset: str, **overrides):
    """A random-init E2EVLP in eval mode on DEVICE, built once per module and preset."""
    key = (preset, tuple(sorted(overrides.items())))
    if key not in _models:
        torch.manual_seed(0)
        _models[key] = build_e2evlp(preset, **overrides).eval().to(DEVICE)
    return _models[key]


def example_inputs(config, height: int, width: int, text_tokens: int = TEXT_TOKENS, batch: int = 1, seed: int = 0):
    """Random normalised images [B, 3, H, W] (no padding) and `[CLS] t1 .. [SEP]` ids [B, text_tokens] on DEVICE."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, height, width, generator=g)
    ids = torch.randint(5, config.vocab_size, (batch, text_tokens), generator=g)
    ids[:, 0], ids[:, -1] = config.cls_token_id, config.sep_token_id
    return pixels.to(DEVICE), ids.to(DEVICE)


def encode_detect(model, pixels, ids):
    """The timed unit: encode image + text, then detect (DetectionOutput)."""
    out = model.detect(model.encode(pixels, None, ids))
    synchronize()
    return out


def count_flops(fn, *modules) -> int:
    """Floating-point operations of one call of `fn` (torch.utils.flop_counter: matmuls, convolutions, attention).

    Parameters are switched to requires_grad=False while counting: FlopCounterMode's module tracker fails on
    parameters that require grad inside a no-grad forward ("Expected gradient function to be set").
    """
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return counter.get_total_flops()


def detr_peer(num_classes: int):
    """`transformers.DetrForObjectDetection` shaped like e2evlp-6-r50 (HF ResNet-50 backbone, no timm, random)."""
    from transformers import DetrConfig, DetrForObjectDetection

    if "detr" not in _models:
        config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, encoder_layers=6,
                            decoder_layers=6, d_model=256, encoder_ffn_dim=1024, decoder_ffn_dim=1024,
                            encoder_attention_heads=8, decoder_attention_heads=8, num_queries=100,
                            num_labels=num_classes, auxiliary_loss=False)
        torch.manual_seed(0)
        _models["detr"] = DetrForObjectDetection(config).eval().to(DEVICE)
    return _models["detr"]


def matmul_operands():
    if "matmul" not in _models:
        g = torch.Generator().manual_seed(0)
        _models["matmul"] = (torch.randn(MATMUL_N, MATMUL_N, generator=g).to(DEVICE),
                             torch.randn(MATMUL_N, MATMUL_N, generator=g).to(DEVICE))
    return _models["matmul"]


def matmul():
    a, b = matmul_operands()
    return a @ b


def matmul_repeated():
    for _ in range(MATMUL_REPEAT):
        out = matmul()
    return out


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if not _results:
        return
    lines = [f"\nencode + detect, batch 1, {TEXT_TOKENS} text tokens, {DEVICE.type} (paired ratios, median of rounds)"]
    for key, value in _results.items():
        if key[0] == "forward":
            median_s, speedup, fraction = value
            lines.append(f"  {key[1]} {key[2][0]}x{key[2][1]}: {median_s:.3f} s, speed-up {speedup:.2f}x, "
                         f"{fraction:.0%} of matmul peak")
    if "peer" in _results:
        lines.append(f"  peer {PEER_SIZE[0]}x{PEER_SIZE[1]}: DETR time / vlpkit time = {_results['peer']:.2f}")
    print("\n".join(lines))


def test_matmul_peak(benchmark):
    """The machine's float32 matrix-multiply throughput, the denominator of the forward pass's fraction of peak."""
    a, b = matmul_operands()
    benchmark.group = "matmul peak"
    flops = 2 * MATMUL_N**3
    benchmark.extra_info.update(kind="matmul_peak", n=MATMUL_N, flops=flops, device=str(DEVICE),
                                device_name=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
                                threads=torch.get_num_threads(), torch=torch.__version__,
                                mode="full" if FULL else "quick", cpu_capability=torch.backends.cpu.get_cpu_capability(),
                                tf32=DEVICE.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)
    seconds(matmul)
    benchmark.pedantic(seconds, args=(matmul,), rounds=pick(3, 5), iterations=1)
    expected = (a[:2].double() @ b[:, :2].double()).float().cpu()
    assert torch.allclose(matmul()[:2, :2].cpu(), expected, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("preset", PRESETS)
def test_forward_speed(benchmark, preset, size):
    """Paired with the largest size (the speed-up) and with the matmul (the fraction of peak), round by round."""
    model = cached_model(preset)
    pixels, ids = example_inputs(model.config, *size)
    ref_pixels, ref_ids = example_inputs(model.config, *SIZES[-1])
    flops = count_flops(lambda: encode_detect(model, pixels, ids), model)  # also the warm-up round
    partners = {"matmul": matmul_repeated}
    if size != SIZES[-1]:
        partners["reference"] = lambda: encode_detect(model, ref_pixels, ref_ids)
    benchmark.group = f"forward {preset}"
    benchmark.extra_info.update(kind="forward", preset=preset, height=size[0], width=size[1],
                                text_tokens=TEXT_TOKENS, flops=flops, matmul_flops=2 * MATMUL_N**3 * MATMUL_REPEAT,
                                device=str(DEVICE), reference="{}x{}".format(*SIZES[-1]),
                                paper_size="{}x{}".format(*PAPER_SIZES[SIZES.index(size)]))
    with torch.inference_mode():
        out, median_s = benchmark_paired(benchmark, encode_detect, partners, ROUNDS, args=(model, pixels, ids))
    paired = benchmark.extra_info["paired"]
    speedup = paired["reference"]["ratio"] if "reference" in paired else 1.0
    fraction = paired["matmul"]["ratio"] * flops / (2 * MATMUL_N**3 * MATMUL_REPEAT)
    benchmark.extra_info.update(speedup=speedup, fraction_of_peak=fraction)
    grid = (-(-size[0] // 32)) * (-(-size[1] // 32))
    assert out.pred_boxes.shape == (1, model.config.num_queries, 4) and torch.isfinite(out.pred_logits).all()
    assert flops > 2 * grid * model.config.d_model**2  # at least the 1x1 projection of every grid cell
    _results[("forward", preset, size)] = (median_s, speedup, fraction)


def test_peer_speed(benchmark):
    """vlpkit e2evlp-6-r50 encode + detect (timed) paired round by round with the transformers DETR peer."""
    model = cached_model("e2evlp-6-r50")
    peer = detr_peer(model.config.num_classes)
    pixels, ids = example_inputs(model.config, *PEER_SIZE)
    mask = torch.ones(1, *PEER_SIZE, dtype=torch.long, device=DEVICE)

    def run_detr():
        return peer(pixel_values=pixels, pixel_mask=mask)

    flops = count_flops(lambda: encode_detect(model, pixels, ids), model)
    peer_flops = count_flops(run_detr, peer)
    benchmark.group = f"peer {PEER_SIZE[0]}x{PEER_SIZE[1]}"
    benchmark.extra_info.update(
        kind="peer", height=PEER_SIZE[0], width=PEER_SIZE[1], device=str(DEVICE), text_tokens=TEXT_TOKENS,
        flops=flops, peer_flops=peer_flops, parameters=model.num_parameters(),
        peer_parameters=sum(p.numel() for p in peer.parameters()),
        peer_attention=getattr(peer.config, "_attn_implementation", None) or "default")
    with torch.inference_mode():
        out, _ = benchmark_paired(benchmark, encode_detect, {"detr": run_detr}, ROUNDS, args=(model, pixels, ids),
                                  warm_partners=False)  # count_flops ran both once
        detr_boxes = run_detr().pred_boxes
    for boxes in (out.pred_boxes, detr_boxes):
        assert boxes.shape == (1, 100, 4) and bool(((boxes >= 0) & (boxes <= 1)).all())
    _results["peer"] = benchmark.extra_info["paired"]["detr"]["ratio"]
