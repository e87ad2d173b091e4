"""Turn one pytest-benchmark JSON run into docs/benchmarks.md: every figure as a ratio of timings from that run.

    VLPKIT_BENCH_FULL=1 python -m pytest benchmarks --benchmark-json=.benchmarks/full.json
    python benchmarks/report.py .benchmarks/full.json [more.json ...] [--output docs/benchmarks.md]

Several JSON files (e.g. benchmark files run one by one) are merged; the machine is described from the first.
Every ratio is still taken between two timings of the same file and group.

The machines these run on are shared and noisy, so absolute times are printed for reference only; the figures
that matter are the ratios of two timings taken side by side in the same session (speed-ups, peer ratio,
fraction of the matmul peak, loader / step throughput, lever on / off, exported / eager). How each figure is
measured: docs/benchmarks_method.md.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

# The paper's Table 6: inference speed-up of each input size relative to 800x1333.
PAPER_SPEEDUP = {"448x448": 5.0, "448x746": 3.0, "600x1000": 1.5, "800x1333": 1.0}
LEVER_WIN = 1.05  # a lever "wins" when it is at least 5% faster
# The project's targets (docs/benchmarks_method.md): a ratio that misses its target is flagged in the table.
GENERATION_TARGETS = {"uncached / cached": (">=", 3.0), "beam 4 / greedy": ("<=", 2.0), "HF / vlpkit": (">=", 1.0)}
MATCHER_TARGET, MATCHER_TARGET_B32 = 1.0, 10.0  # DETR / vlpkit at every setting; at B = 32
PEER_TRAINING_TARGET = 1.2  # DETR step time / vlpkit step time


def checked(value: float, op: str, target: float) -> str:
    """`value` as a ratio, flagged in bold when it misses `op target`."""
    met = value >= target if op == ">=" else value <= target
    return f"{value:.2f}x" if met else f"**{value:.2f}x (misses {op} {target:g})**"


def median(bench: dict) -> float:
    return bench["stats"]["median"]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds * 1e3:.0f}"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def kind_of(bench: dict) -> str:
    kind = bench["extra_info"].get("kind")
    if kind:
        return kind
    name = bench["name"]
    if name.startswith("test_matcher_speed"):
        return "matcher"
    if name.startswith("test_generation_speed"):
        return "generation"
    return "other"


def machine_section(data: dict, by_kind: dict) -> list[str]:
    info = data.get("machine_info", {})
    cpu = info.get("cpu", {})
    peak = by_kind.get("matmul_peak", [{}])[0].get("extra_info", {})
    commit = data.get("commit_info", {})
    lines = ["## Machine", ""]
    lines.append(f"- CPU: {cpu.get('brand_raw', info.get('processor') or '?')}, {cpu.get('count', '?')} logical "
                 f"cores, {cpu.get('hz_actual_friendly', '?')}, PyTorch CPU capability "
                 f"{peak.get('cpu_capability', '?')}; {info.get('system', '')} {info.get('release', '')}")
    lines.append(f"- Device used: {peak.get('device_name', peak.get('device', '?'))}; torch {peak.get('torch', '?')}, "
                 f"{peak.get('threads', '?')} intra-op threads; Python {info.get('python_version', '?')}")
    lines.append(f"- Mode: {peak.get('mode', '?')}; run at {data.get('datetime', '?')}; commit "
                 f"{commit.get('id', '?')[:10]}{' (uncommitted changes)' if commit.get('dirty') else ''}")
    for source in data.get("merged", []):  # further files (benchmark files run one by one), same machine
        lines.append(f"- Merged from `{source['path']}` ({source['count']} benchmarks): run at {source['datetime']}; "
                     f"commit {source['commit'][:10]}{' (uncommitted changes)' if source['dirty'] else ''}")
    return lines + [""]


def forward_section(by_kind: dict) -> list[str]:
    benches = by_kind.get("forward", [])
    if not benches:
        return []
    lines = ["## Forward pass against input size", "",
             "encode (image + 40 text tokens) + detect, batch 1, inference mode. Speed-up = time at the largest "
             "size / time at this size, each round paired with a pass at the largest size just before it; the "
             "paper's Table 6 gives 5x, 3x, 1.5x. FLOPs from `torch.utils.flop_counter`; fraction of peak = "
             "achieved FLOP/s / matmul FLOP/s, each round paired with a matmul just before it.", ""]
    rows = []
    for b in sorted(benches, key=lambda b: (b["extra_info"]["preset"], b["extra_info"]["height"] *
                                            b["extra_info"]["width"])):
        e = b["extra_info"]
        t = median(b)
        rows.append([e["preset"], f"{e['height']}x{e['width']}", e.get("paper_size", ""), ms(t),
                     f"{e['speedup']:.2f}x", f"{PAPER_SPEEDUP.get(e.get('paper_size'), float('nan')):.1f}x",
                     f"{e['flops'] / 1e9:.1f}", f"{e['flops'] / t / 1e9:.1f}", f"{e['fraction_of_peak']:.1%}"])
    return lines + table(["model", "size", "paper size", "median ms", "speed-up", "paper", "GFLOP", "GFLOP/s",
                          "of matmul peak"], rows)


def peak_section(by_kind: dict) -> list[str]:
    benches = by_kind.get("matmul_peak", [])
    if not benches:
        return []
    e = benches[0]["extra_info"]
    return ["## Throughput limit", "",
            f"Matrix-multiply throughput of this machine: {e['flops'] / benches[0]['stats']['min'] / 1e9:.1f} "
            f"GFLOP/s at best, {e['flops'] / median(benches[0]) / 1e9:.1f} GFLOP/s median (float32 "
            f"{e['n']}x{e['n']} product, {benches[0]['stats']['rounds']} rounds, {e['device']}). The forward "
            "table's fraction of peak pairs each forward round with its own matmul instead.", ""]


def peer_section(by_kind: dict) -> list[str]:
    benches = by_kind.get("peer", [])
    if not benches:
        return []
    e = benches[0]["extra_info"]
    detr = e["paired"]["detr"]
    ratio = detr["ratio"]
    rows = [["vlpkit e2evlp-6-r50 encode + detect", ms(median(benches[0])), f"{e['parameters'] / 1e6:.1f}M",
             e["text_tokens"], f"{e['flops'] / 1e9:.1f}", "sdpa"],
            ["transformers DetrForObjectDetection", ms(detr["median_s"]), f"{e['peer_parameters'] / 1e6:.1f}M", 0,
             f"{e['peer_flops'] / 1e9:.1f}", e["peer_attention"]]]
    verdict = "met" if ratio >= 1.0 else "not met"
    return ["## Peer: transformers DETR", "",
            f"Same image ({e['height']}x{e['width']}, batch 1, inference mode), random init, same sizes (ResNet-50, "
            "6 + 6 layers, d = 256, FFN 1024, 8 heads, 100 queries); each vlpkit round paired with a DETR pass "
            f"just before it. Time DETR / time vlpkit = **{ratio:.2f}** (target >= 1, ours no slower despite "
            f"the text tokens: {verdict}).", ""] + table(
        ["model", "median ms", "parameters", "text tokens", "GFLOP", "attention"], rows)


def training_section(by_kind: dict) -> list[str]:
    steps = {b["extra_info"]["batch"]: b for b in by_kind.get("training_step", [])}
    loaders = {b["extra_info"]["batch"]: b for b in by_kind.get("loader", [])}
    if not steps:
        return []
    rows = []
    for batch in sorted(steps):
        s = steps[batch]
        step_ips = batch / median(s)
        loader = loaders.get(batch)
        loader_ips = loader["extra_info"]["images"] / median(loader) if loader else None
        rows.append([batch, ms(median(s)), f"{step_ips:.1f}", f"{s['extra_info']['peak_bytes'] / 2**20:.0f}",
                     f"{loader_ips:.1f}" if loader_ips else "n/a",
                     checked(loader_ips / step_ips, ">=", 1.0) if loader_ips else "n/a",
                     loader["extra_info"]["workers"] if loader else ""])
    s = next(iter(steps.values()))["extra_info"]
    bf16 = []
    for b in by_kind.get("bf16_training", []):
        e = b["extra_info"]
        fp32 = e["paired"]["fp32"]
        support = "oneDNN bf16 on this CPU" if e["fast_bf16"] else "no oneDNN bf16 on this CPU: reference convolutions"
        bf16.append(f"bf16 autocast (master weights float32), batch {e['batch']}: {ms(median(b))} ms per step "
                    f"against {ms(fp32['median_s'])} ms in float32, paired rounds: float32 / bf16 = "
                    f"{fp32['ratio']:.2f}x ({support}).")
    return ["## Pretraining step", "",
            f"e2evlp-tiny on the shapes world ({s['image_size'][0]}x{s['image_size'][1]} images), all four losses "
            "(MLM, ITM, detection + attributes, caption), forward + backward + clipping + AdamW. Loader = dataset "
            "+ collator alone; loader / step > 1 means the loader is not the bottleneck.", ""] + table(
        ["batch", "step ms", "step images/s", "peak MiB", "loader images/s", "loader / step", "loader workers"],
        rows) + ([" ".join(bf16), ""] if bf16 else [])


def peer_training_section(by_kind: dict) -> list[str]:
    benches = sorted(by_kind.get("peer_training", []), key=lambda b: -b["extra_info"]["height"])
    if not benches:
        return []
    rows = []
    for b in benches:
        e = b["extra_info"]
        detr = e["paired"]["detr"]
        rows.append([f"{e['batch']} x {e['height']}x{e['width']}", ms(median(b)), ms(detr["median_s"]),
                     checked(detr["ratio"], ">=", PEER_TRAINING_TARGET), f"{e['peak_bytes'] / 2**20:.0f}",
                     f"{e['peer_peak_bytes'] / 2**20:.0f}", f"{e['trainable'] / 1e6:.1f}M / {e['peer_trainable'] / 1e6:.1f}M"])
    return ["## Training step: transformers DETR", "",
            "benchmarks/bench_peer_training.py: one detection training step (forward, Hungarian matching, class + "
            "5 L1 + 2 GIoU on the last and each auxiliary decoder layer, backward, AdamW) of e2evlp-6-r50 (image "
            f"+ {benches[0]['extra_info']['text_tokens']} text tokens) and of `DetrForObjectDetection` (image only, "
            "its own matcher and losses), random init, same sizes and dropout, ResNet layer2-4 trainable on both "
            "sides; each vlpkit round paired with a DETR step just before it. Ratio = DETR time / vlpkit time, "
            f"target >= {PEER_TRAINING_TARGET:g}; a miss is in bold. Peak memory of one step as in the pretraining "
            "step table.", ""] + table(
        ["images", "vlpkit ms", "DETR ms", "DETR / vlpkit", "vlpkit peak MiB", "DETR peak MiB",
         "trainable (vlpkit / DETR)"], rows)


def lever_section(by_kind: dict) -> list[str]:
    benches = by_kind.get("lever", [])
    if not benches:
        return []
    e = benches[0]["extra_info"]
    rows = []
    for b in benches:
        info = b["extra_info"]
        variant_s, baseline_s = median(b), info["paired"]["baseline"]["median_s"]
        on_s, off_s = (variant_s, baseline_s) if info["on"] else (baseline_s, variant_s)
        rows.append([info["lever"], ms(off_s), ms(on_s), f"{info['speedup']:.2f}x",
                     f"{info['max_box_error']:.1e} / {info['max_logit_error']:.1e}",
                     "yes" if info["speedup"] >= LEVER_WIN else "no", len(info["seconds"])])
    return ["## Speed levers", "",
            f"{e['preset']} encode + detect at {e['height']}x{e['width']}, batch 1, {e['device']}. Baseline: eager "
            "float32, SDPA, NCHW backbone, `torch.no_grad()`; each row changes one thing and runs the baseline "
            "just before each of its rounds. Speed-up = time off / time on (median over rounds of the paired "
            f"ratio); wins = at least {LEVER_WIN:.2f}x. Error = max |difference| from the baseline's boxes / "
            "logits.", ""] + table(["lever", "off ms", "on ms", "speed-up", "error (boxes / logits)", "wins",
                                    "rounds"], rows)


def export_section(by_kind: dict) -> list[str]:
    rows = []
    for b in by_kind.get("export", []):
        x = b["extra_info"]
        setting = (f"{x['preset']}, {x['height']}x{x['width']}, {x['text_tokens']} text tokens" if "height" in x
                   else f"{x['preset']}, batch {x['batch']}, past {x['past']}, memory {x['memory']}")
        rows.append([x["part"], setting, ms(x["paired"]["eager"]["median_s"]), ms(median(b)), f"{x['speedup']:.2f}x",
                     f"{x['export_seconds']:.1f}", f"{x['max_abs_error']:.1e}"])
    if not rows:
        return []
    return ["## Deployment: torch.export", "",
            "`vlpkit.export` programs (`ExportedProgram.module()`) against the eager model on the same inputs, "
            "each round paired with an eager call just before it. Speed-up = eager / exported; error = max "
            "|exported - eager| (must be <= 1e-4).", ""] + table(
        ["part", "setting", "eager ms", "exported ms", "speed-up", "export s", "max error"], rows)


def matcher_section(by_kind: dict) -> list[str]:
    groups = defaultdict(dict)
    for b in by_kind.get("matcher", []):
        groups[b["group"]][b["extra_info"].get("impl", b["params"].get("impl"))] = b
    rows = []
    for group, impls in groups.items():
        if {"vlpkit", "detr_full_matrix"} <= set(impls):
            ours, detr = impls["vlpkit"], impls["detr_full_matrix"]
            target = MATCHER_TARGET_B32 if group.startswith("matcher B=32 ") else MATCHER_TARGET
            rows.append([group.removeprefix("matcher "), ms(median(ours)), ms(median(detr)),
                         checked(median(detr) / median(ours), ">=", target)])
    if not rows:
        return []
    return ["## Hungarian matcher", "", "benchmarks/bench_matcher.py: vlpkit's per-image costs against DETR's "
            "full-matrix matcher, Q = 100 queries. Ratio = DETR time / vlpkit time. Targets: >= "
            f"{MATCHER_TARGET:g}x at every setting, >= {MATCHER_TARGET_B32:g}x at B = 32; a ratio that misses its "
            "target is in bold.", ""] + table(
        ["setting", "vlpkit ms", "DETR ms", "DETR / vlpkit"], rows)


def generation_section(by_kind: dict) -> list[str]:
    groups = defaultdict(dict)
    for b in by_kind.get("generation", []):
        p = b["params"]
        groups[(p["preset"], p["batch"])][p["method"]] = median(b)
    def ratio(t, a, b, name):
        return checked(t[a] / t[b], *GENERATION_TARGETS[name]) if a in t and b in t else "n/a"

    rows = []
    for (preset, batch), t in groups.items():
        rows.append([preset, batch] + [ms(t[m]) if m in t else "n/a" for m in ("cached", "uncached", "greedy", "hf")]
                    + [ratio(t, "uncached", "cached", "uncached / cached"),
                       ratio(t, "cached", "greedy", "beam 4 / greedy"), ratio(t, "hf", "cached", "HF / vlpkit")])
    if not rows:
        return []
    targets = ", ".join(f"{name} {op} {value:g}" for name, (op, value) in GENERATION_TARGETS.items())
    return ["## Caption generation", "", "benchmarks/bench_generation.py: beam 4 (greedy where named), every "
            f"sequence decoded to the full length. Targets: {targets}; a ratio that misses its target is in "
            "bold.", ""] + table(
        ["decoder", "batch", "cached ms", "uncached ms", "greedy ms", "HF beam 4 ms", "uncached / cached",
         "beam 4 / greedy", "HF / vlpkit"], rows)


def other_section(by_kind: dict) -> list[str]:
    benches = by_kind.get("other", [])
    if not benches:
        return []
    return ["## Other benchmarks", ""] + table(["name", "group", "median ms"],
                                                [[b["name"], b["group"], ms(median(b))] for b in benches])


def render(data: dict, source: str) -> str:
    by_kind = defaultdict(list)
    for b in data["benchmarks"]:
        by_kind[kind_of(b)].append(b)
    peak_lines = peak_section(by_kind)
    lines = ["# Benchmarks", "",
             f"Generated by `benchmarks/report.py` from `{source}`. Every ratio compares two timings taken side by "
             "side in the same pytest session (the machines are shared and noisy: absolute times are for "
             "reference). How to run and what each figure means: [benchmarks_method.md](benchmarks_method.md).",
             ""]
    lines += machine_section(data, by_kind)
    for section in (forward_section(by_kind), peak_lines, peer_section(by_kind), peer_training_section(by_kind),
                    training_section(by_kind),
                    lever_section(by_kind), export_section(by_kind), matcher_section(by_kind),
                    generation_section(by_kind), other_section(by_kind)):
        lines += section
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="pytest-benchmark JSON file(s) (--benchmark-json)")
    parser.add_argument("--output", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    data = None
    for path in map(Path, args.results):
        if not path.is_file():
            raise SystemExit(f"report.py: no benchmark results at {path}; run pytest benchmarks "
                             f"--benchmark-json={path} first")
        run = json.loads(path.read_text())
        if not run.get("benchmarks"):
            raise SystemExit(f"report.py: {path} holds no benchmarks (were they all skipped or deselected?)")
        if data is None:
            data = run
        else:
            data["benchmarks"] = data["benchmarks"] + run["benchmarks"]
            commit = run.get("commit_info", {})
            data.setdefault("merged", []).append({
                "path": path.as_posix(), "count": len(run["benchmarks"]), "datetime": run.get("datetime", "?"),
                "commit": commit.get("id", "?"), "dirty": bool(commit.get("dirty"))})
    text = render(data, ", ".join(Path(p).as_posix() for p in args.results))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return out


if __name__ == "__main__":
    main()
