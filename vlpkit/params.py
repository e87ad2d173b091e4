"""Parameter counts of every preset beside the paper's Table 5, broken down by block."""

from __future__ import annotations

from .builder import build_e2evlp
from .presets import PAPER_PARAMETERS_M, PRESETS


def parameter_breakdown(name: str) -> dict[str, int]:
    """Parameters of a preset per top-level block (tied weights counted once, under the first block using them)."""
    model = build_e2evlp(name)
    seen: set[int] = set()
    counts: dict[str, int] = {}
    for full_name, p in model.named_parameters():  # named_parameters yields a tied tensor once
        if id(p) in seen:
            continue
        seen.add(id(p))
        block = full_name.split(".")[0]
        if block == "backbone":
            block = "backbone.trunk" if full_name.startswith("backbone.trunk") else "backbone.input_proj"
        counts[block] = counts.get(block, 0) + p.numel()
    counts["total"] = sum(counts.values())
    return counts


def parameter_table() -> str:
    """A markdown table: preset, paper (M), ours (M), and the main blocks (M)."""
    blocks = ["backbone.trunk", "text_embeddings", "encoder", "decoder", "heads"]
    lines = ["| preset | paper (M) | ours (M) | trunk | embeddings | encoder | decoder | heads + rest |",
             "|---|---|---|---|---|---|---|---|"]
    for name in PRESETS:
        c = parameter_breakdown(name)
        rest = c["total"] - sum(c.get(b, 0) for b in blocks[:-1])
        vals = [c.get(b, 0) / 1e6 for b in blocks[:-1]] + [rest / 1e6]
        paper = PAPER_PARAMETERS_M.get(name)
        lines.append(f"| {name} | {paper if paper else '-'} | {c['total'] / 1e6:.1f} | "
                     + " | ".join(f"{v:.1f}" for v in vals) + " |")
    return "\n".join(lines)
