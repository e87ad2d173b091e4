"""benchmarks/report.py flags every ratio that misses its target, and only those."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.report import checked, generation_section, matcher_section  # noqa: E402


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
