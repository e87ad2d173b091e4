#!/usr/bin/env bash
# The GPU check, end to end, in one command (a few minutes on one GPU; no downloads):
#   1. latency per image-question pair of e2evlp-12-r152 at 800x1333 (batch 1, a 40-token question: encode +
#      the [CLS] head), float32 and bf16 autocast, beside the paper's 192 ms; encode + detect too;
#   2. the Hungarian matcher on the GPU (vlpkit against DETR's full-matrix matcher, B=32, T=30, K=1600);
#   3. beam search (beam 4, 20 tokens) from the 800x1333 image-only encoding, cached and uncached, and greedy;
# then prints a short table (and writes it as JSON where $OUT or GPU_BENCH_JSON says).
#
#   benchmarks/gpu.sh            # on a GPU machine
#   benchmarks/gpu.sh --smoke    # tiny model and sizes, any device: checks this script (CPU-friendly)
#   benchmarks/gpu.sh --suite    # also the full pytest-benchmark suite on the GPU and its report
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
MODE=${1:-}
case "$MODE" in ""|--smoke|--suite) ;; *) echo "usage: $0 [--smoke|--suite]" >&2; exit 2 ;; esac

"$PY" - "$MODE" <<'PYTHON'
import json
import os
import statistics
import sys
import time

import torch

from benchmarks.bench_matcher import detr_full_matrix_match, make_inputs
from vlpkit.builder import build_e2evlp
from vlpkit.generation import generate
from vlpkit.ops import HungarianMatcher

smoke = sys.argv[1] == "--smoke"
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if device.type == "cpu" and not smoke:
    sys.exit("gpu.sh: no CUDA device here; run it on a GPU machine, or with --smoke to check the script")
preset, (height, width) = ("e2evlp-tiny", (224, 373)) if smoke else ("e2evlp-12-r152", (800, 1333))
warmup, rounds = (1, 3) if smoke else (5, 20)
beam_length = 8 if smoke else 20


def timed(fn, warmup=warmup, rounds=rounds):
    """Median seconds of `fn()` (device synchronised), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


torch.manual_seed(0)
model = build_e2evlp(preset).eval().to(device)
cfg = model.config
g = torch.Generator().manual_seed(0)
pixels = torch.randn(1, 3, height, width, generator=g).to(device)
question = torch.randint(5, cfg.vocab_size, (1, 40), generator=g)
question[:, 0], question[:, -1] = cfg.cls_token_id, cfg.sep_token_id
question = question.to(device)
rows = []


def bf16():
    return torch.autocast(device.type, dtype=torch.bfloat16)


with torch.inference_mode():
    pair = lambda: model.itm_logits(model.encode(pixels, None, question))  # noqa: E731
    detect = lambda: model.detect(model.encode(pixels, None, question))  # noqa: E731
    # bf16 only on the GPU: a CPU without native bf16 emulates it, 30x slower
    for precision in ("fp32", "bf16") if device.type == "cuda" else ("fp32",):
        with bf16() if precision == "bf16" else torch.autocast(device.type, enabled=False):
            rows.append((f"image-question pair, {precision}", f"{preset} {height}x{width}", timed(pair), 0.192))
            rows.append((f"encode + detect, {precision}", f"{preset} {height}x{width}", timed(detect), None))

    encoding = model.encode(pixels)
    for name, kwargs in (("beam 4, cached", dict(num_beams=4)), ("beam 4, uncached", dict(num_beams=4, use_cache=False)),
                         ("greedy, cached", dict(num_beams=1))):
        run = lambda kwargs=kwargs: generate(model, encoding, max_length=beam_length, min_length=beam_length,  # noqa: E731
                                             **kwargs)
        rows.append((f"caption {beam_length} tokens, {name}", f"{preset} {height}x{width}, batch 1",
                     timed(run, warmup=1, rounds=max(3, rounds // 4)), None))

batch, targets, classes = (4, 7, 91) if smoke else (32, 30, 1600)
outputs, tgts = make_inputs(batch, targets, classes, str(device))
matcher = HungarianMatcher()
rows.append(("matcher, vlpkit", f"B={batch} T={targets} K={classes}", timed(lambda: matcher(outputs, tgts)), None))
rows.append(("matcher, DETR full matrix", f"B={batch} T={targets} K={classes}",
             timed(lambda: detr_full_matrix_match(outputs, tgts)), None))

name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
print(f"\n{name}, torch {torch.__version__}{' (smoke: tiny sizes)' if smoke else ''}")
print(f"| {'what':38} | {'setting':36} | {'median ms':>9} | {'paper ms':>8} |")
print(f"|{'-' * 40}|{'-' * 38}|{'-' * 11}|{'-' * 10}|")
for what, setting, seconds, paper in rows:
    print(f"| {what:38} | {setting:36} | {seconds * 1e3:9.1f} | {'' if paper is None else f'{paper * 1e3:.0f}':>8} |")
median = {what: seconds for what, _, seconds, _ in rows}
pairs = ", ".join(f"{0.192 / t:.2f} ({w.split(', ')[1]})" for w, t in median.items() if w.startswith("image-question"))
print(f"\nimage-question pair: paper 192 ms / ours = {pairs}")
print(f"matcher: DETR / vlpkit = {median['matcher, DETR full matrix'] / median['matcher, vlpkit']:.2f}; beam 4 "
      f"uncached / cached = {median[f'caption {beam_length} tokens, beam 4, uncached'] / median[f'caption {beam_length} tokens, beam 4, cached']:.2f}")
target = os.environ.get("GPU_BENCH_JSON") or (os.path.join(os.environ["OUT"], "gpu.json") if os.environ.get("OUT") else None)
if target:
    with open(target, "w") as f:
        json.dump({"device": name, "torch": torch.__version__, "smoke": smoke,
                   "rows": [dict(what=w, setting=s, median_s=t, paper_s=p) for w, s, t, p in rows]}, f, indent=1)
PYTHON

if [ "$MODE" = "--suite" ]; then
    RESULTS=${OUT:-.benchmarks}/gpu-suite.json
    mkdir -p "$(dirname "$RESULTS")"
    VLPKIT_BENCH_FULL=1 "$PY" -m pytest benchmarks -q -p no:cacheprovider --benchmark-json="$RESULTS"
    "$PY" benchmarks/report.py "$RESULTS" --output "${OUT:-.benchmarks}/benchmarks-gpu.md" | tail -n 60
fi
