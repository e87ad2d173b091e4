"""The README's demo card: the figure and the table of a finished `vlpkit demo` run, with what produced them.

    vlpkit demo --set trainer.output_dir=/tmp/demo_run      # or `make demo` (runs/demo)
    python benchmarks/demo_card.py --run /tmp/demo_run

copies `<run>/demo_predictions.png` to `docs/images/demo_predictions.png`, writes `docs/images/demo_card.json`
(the metrics, the wall time, the hash of vlpkit/configs/e2evlp-tiny.yaml and the commit) and rewrites the table
between the `<!-- demo-card:begin -->` / `<!-- demo-card:end -->` markers of the README and docs/pretraining.md.
`tests/test_docs.py` fails when the shipped config's hash differs from the card's (rerun the demo and this script)
or when either page's table differs from the card.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.provenance import config_sha, git_commit, replace_block  # noqa: E402

CARD = ROOT / "docs" / "images" / "demo_card.json"
FIGURE = ROOT / "docs" / "images" / "demo_predictions.png"
BEGIN, END = "<!-- demo-card:begin -->", "<!-- demo-card:end -->"
PAGES = (ROOT / "README.md", ROOT / "docs" / "pretraining.md")
SHOWN = ("detection AP50", "caption CIDEr", "ITM accuracy", "ITM ranking", "MLM accuracy", "grounding probe")


def table(card: dict) -> str:
    """The README's table, from a card."""
    rows = ["| metric (shapes world, 200 val images) | model | trivial baseline |", "|---|---|---|"]
    for name in SHOWN:
        m = card["metrics"][name]
        rows.append(f"| {name} | {m['model']:.3f} | {m['baseline']:.3f} |")
    rows.append("")
    rows.append(f"Measured on {card['machine']}: {card['total_seconds'] / 60:.1f} minutes in all (trunk warm-up "
                f"{'included' if card['warmup_included'] else 'cached'}). Produced by `{card['command']}` then "
                f"`python benchmarks/demo_card.py`, config e2evlp-tiny.yaml {card['config_sha']}, commit "
                f"{card['commit']}.")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the output_dir of a finished `vlpkit demo`")
    parser.add_argument("--machine", default="2 CPU cores of the project's CI machine")
    parser.add_argument("--command", default="vlpkit demo")
    parser.add_argument("--warmup-included", action="store_true", help="the run trained the trunk warm-up")
    args = parser.parse_args(argv)
    run = Path(args.run)
    summary = json.loads((run / "demo_metrics.json").read_text())
    card = {"metrics": {k: summary["metrics"][k] for k in SHOWN}, "total_seconds": summary["total_seconds"],
            "constant_caption": summary["constant_caption"], "machine": args.machine, "command": args.command,
            "warmup_included": args.warmup_included, "config_sha": config_sha(), "commit": git_commit()}
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "demo_predictions.png", FIGURE)
    CARD.write_text(json.dumps(card, indent=1) + "\n")
    for page in PAGES:
        replace_block(page, BEGIN, END, table(card))
    print(table(card))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
