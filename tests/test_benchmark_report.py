"""benchmarks/report.py flags every ratio that misses its target, and only those."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import (  # noqa: E402
    checked,
    generation_section,
    matcher_section,
    peer_training_section,
    training_section,
)


def _bench(name, group, seconds, extra=None, params=None):
    return {"name": name, "group": group, "stats": {"median": seconds}, "extra_info": extra or {},
            "params": params or {}}


def test_checked_flags_only_a_missed_target():
    assert checked(2.0, "<=", 2.0) == "2.00x" and checked(3.5, ">=", 3.0) == "3.50x"
    assert checked(2.21, "<=", 2.0) == "**2.21x (misses <= 2)**"
    assert checked(0.82, ">=", 1.0) == "**0.82x (misses >= 1)**"


def test_generation_and_matcher_rows_name_their_misses():
    gen = [_bench("test_generation_speed", "g", t, params={"preset": "tiny", "batch": 32, "method": m})
           for m, t in (("cached", 1.0), ("uncached", 11.0), ("greedy", 0.45), ("hf", 2.4))]
    rows = "\n".join(generation_section({"generation": gen}))
    assert "| 11.00x | **2.22x (misses <= 2)** | 2.40x |" in rows

    def pair(group, ours, detr):
        return [_bench("test_matcher_speed", f"matcher {group}", ours, {"impl": "vlpkit"}),
                _bench("test_matcher_speed", f"matcher {group}", detr, {"impl": "detr_full_matrix"})]

    matcher = pair("B=2 T=7 K=91 cpu", 1.0, 0.9) + pair("B=32 T=30 K=91 cpu", 1.0, 10.6) + \
        pair("B=32 T=30 K=1600 cpu", 1.0, 7.4) + pair("B=64 T=7 K=91 cpu", 1.0, 1.2)
    lines = matcher_section({"matcher": matcher})
    by_setting = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| B=")}
    assert "**0.90x (misses >= 1)**" in by_setting["B=2 T=7 K=91 cpu"]
    assert by_setting["B=32 T=30 K=91 cpu"].endswith("| 10.60x |")
    assert "**7.40x (misses >= 10)**" in by_setting["B=32 T=30 K=1600 cpu"]
    assert by_setting["B=64 T=7 K=91 cpu"].endswith("| 1.20x |")


def test_training_step_peer_rows_flag_a_ratio_below_target():
    def step(batch, height, width, ours, ratio):
        extra = {"batch": batch, "height": height, "width": width, "text_tokens": 40, "peak_bytes": 2**30,
                 "peer_peak_bytes": 2**29, "trainable": 43.1e6, "peer_trainable": 35.0e6,
                 "paired": {"detr": {"median_s": ours * ratio, "ratio": ratio}}}
        return _bench("test_training_step_against_detr", "t", ours, extra)

    lines = peer_training_section({"peer_training": [step(2, 640, 640, 3.3, 1.05), step(1, 800, 1333, 6.2, 1.21)]})
    rows = [line for line in lines if line.startswith("| 1 x") or line.startswith("| 2 x")]
    assert rows[0].startswith("| 1 x 800x1333 | 6200.0 | 7502.0 | 1.21x | 1024 | 512 | 43.1M / 35.0M |")
    assert "**1.05x (misses >= 1.2)**" in rows[1]


def test_merged_files_name_their_own_run_and_commit(tmp_path):
    from benchmarks.report import main

    def run(path, commit, dirty, benches):
        path.write_text(json.dumps({"datetime": f"run-{commit}", "commit_info": {"id": commit, "dirty": dirty},
                                    "machine_info": {}, "benchmarks": benches}))
        return str(path)

    first = run(tmp_path / "full.json", "a" * 40, False, [_bench("test_x", "g", 0.1)])
    second = run(tmp_path / "more.json", "b" * 40, True, [_bench("test_y", "g", 0.2), _bench("test_z", "g", 0.3)])
    text = main([first, second, "--output", str(tmp_path / "out.md")]).read_text()
    assert f"commit {'a' * 10}\n" in text
    assert f"- Merged from `{tmp_path.as_posix()}/more.json` (2 benchmarks): run at run-{'b' * 40}; " \
           f"commit {'b' * 10} (uncommitted changes)" in text


def test_pretraining_section_gives_the_bf16_pairing():
    step = _bench("test_training_step", "p", 0.8, {"batch": 32, "peak_bytes": 2**28, "image_size": [128, 128]})
    bf16 = _bench("test_training_step_bf16", "b", 0.5, {"batch": 32, "fast_bf16": True,
                                                        "paired": {"fp32": {"median_s": 0.75, "ratio": 1.52}}})
    text = "\n".join(training_section({"training_step": [step], "bf16_training": [bf16]}))
    assert "batch 32: 500.0 ms per step against 750.0 ms in float32, paired rounds: float32 / bf16 = 1.52x " \
           "(oneDNN bf16 on this CPU)." in text
