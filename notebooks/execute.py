"""Execute the tutorial notebooks at full length and write them back with their outputs (`make notebooks`).

    .venv/bin/python notebooks/execute.py                 # all, 01 first (the others reuse its checkpoint)
    .venv/bin/python notebooks/execute.py 04_captioning    # some

Each notebook runs in a fresh kernel from `notebooks/`, with VLPKIT_QUICK unset (the full recipe). Its metadata
gains `vlpkit.source_sha` (the SHA-256 of its code cells, as `code_sha` computes it), `vlpkit.seconds` and
`vlpkit.machine` and `vlpkit.configs` (the content hash of every shipped config its code names, as
`benchmarks.provenance.config_sha` computes it); `tests/test_notebooks.py` fails when a committed notebook's code,
or a shipped config it reads, differs from what produced its outputs. The table of timings in notebooks/README.md
(between its `<!-- timings:begin/end -->` markers) is rewritten from that metadata.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

FOLDER = Path(__file__).resolve().parent
sys.path.insert(0, str(FOLDER.parent))
from benchmarks.provenance import ROOT, config_sha, replace_block  # noqa: E402

README = FOLDER / "README.md"
BEGIN, END = "<!-- timings:begin -->", "<!-- timings:end -->"
FIRST = "01_pretraining"  # writes the pretraining checkpoint the task notebooks fine-tune


def code_sha(notebook) -> str:
    """SHA-256 of the notebook's code cells, in order (sources only: outputs, counts and metadata excluded)."""
    digest = hashlib.sha256()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            digest.update(cell.source.encode())
            digest.update(b"\0")
    return digest.hexdigest()


def configs_read(notebook) -> dict[str, str]:
    """{name: config_sha(name)} for every shipped config (vlpkit/configs/NAME.yaml) named in a code cell as
    `load_config("NAME"...`: the recipe a notebook's outputs come from, beside its code."""
    names = {m for cell in notebook.cells if cell.cell_type == "code"
             for m in re.findall(r'load_config\(\s*"([\w.-]+)"', cell.source)}
    return {name: config_sha(name) for name in sorted(names)
            if (ROOT / "vlpkit" / "configs" / f"{name}.yaml").is_file()}


def notebooks() -> list[Path]:
    paths = sorted(FOLDER.glob("*.ipynb"))
    return sorted(paths, key=lambda p: (p.stem != FIRST, p.name))


def machine() -> str:
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})"


def execute(path: Path, timeout: int) -> float:
    notebook = nbformat.read(path, as_version=4)
    env_quick = os.environ.pop("VLPKIT_QUICK", None)
    start = time.perf_counter()
    try:
        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(FOLDER)}}).execute()
    finally:
        if env_quick is not None:
            os.environ["VLPKIT_QUICK"] = env_quick
    seconds = time.perf_counter() - start
    notebook.metadata["vlpkit"] = {"source_sha": code_sha(notebook), "seconds": round(seconds, 1),
                                   "machine": machine(), "mode": "full",
                                   "configs": configs_read(notebook)}
    nbformat.write(notebook, path)
    return seconds


def timings_table() -> str:
    rows = ["| notebook | full length, wall time | executed on |", "|---|---|---|"]
    for path in notebooks():
        meta = nbformat.read(path, as_version=4).metadata.get("vlpkit")
        if meta:
            rows.append(f"| `{path.name}` | {meta['seconds'] / 60:.1f} min | {meta['machine']} |")
        else:
            rows.append(f"| `{path.name}` | not executed | |")
    return "\n".join(rows) + ("\n\nWritten by `notebooks/execute.py` (`make notebooks`) from each notebook's metadata. "
                              f"`{FIRST}.ipynb` runs first; the others fine-tune its checkpoint.")


def write_readme() -> None:
    replace_block(README, BEGIN, END, timings_table())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)
    chosen = [p for p in notebooks() if not args.names or p.stem in args.names or p.name in args.names]
    missing = sorted(set(args.names) - {p.stem for p in chosen} - {p.name for p in chosen})
    if missing:
        raise SystemExit(f"no notebook named {missing} in {FOLDER}")
    for path in chosen:
        print(f"{path.name} ...", flush=True)
        print(f"{path.name}: {execute(path, args.timeout):.0f} s", flush=True)
    write_readme()
    return 0


if __name__ == "__main__":
    sys.exit(main())
