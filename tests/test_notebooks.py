"""The committed tutorial notebooks hold the outputs of a full-length run of their current code and recipe: every
code cell executed, in order, with the hashes recorded by `notebooks/execute.py` (of the code, and of each shipped
config the code loads) equal to those of the files now; and notebooks/README.md's timings table is the one that
script writes."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
from execute import BEGIN, END, README, code_sha, configs_read, notebooks, timings_table  # noqa: E402

NOTEBOOKS = notebooks()


def test_every_notebook_is_found_and_the_pretraining_one_runs_first():
    assert len(NOTEBOOKS) == 8 and NOTEBOOKS[0].name == "01_pretraining.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_come_from_the_committed_code(path):
    notebook = nbformat.read(path, as_version=4)
    meta = notebook.metadata.get("vlpkit")
    assert meta is not None, f"{path.name} was not executed by notebooks/execute.py (make notebooks)"
    assert meta["mode"] == "full"
    assert meta["source_sha"] == code_sha(notebook), (
        f"{path.name}: its code changed since its outputs were made; run `.venv/bin/python notebooks/execute.py "
        f"{path.stem}`")
    assert meta.get("configs") == configs_read(notebook), (
        f"{path.name}: its outputs come from shipped configs with hashes {meta.get('configs')}, now "
        f"{configs_read(notebook)}; run `.venv/bin/python notebooks/execute.py {path.stem}`")
    counts = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: cells not executed in order once each"
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    assert not errors
    images = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    assert images, f"{path.name} shows no figure"


def test_code_sha_sees_code_and_only_code():
    notebook = nbformat.read(NOTEBOOKS[0], as_version=4)
    before = code_sha(notebook)
    notebook.cells[0].source += "\nmore prose"  # a markdown cell (the title)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    assert notebook.cells[0].cell_type == "markdown" and code_sha(notebook) == before
    next(c for c in notebook.cells if c.cell_type == "code").source += "\nx = 1"
    assert code_sha(notebook) != before


def test_configs_read_names_the_recipes_a_notebook_loads():
    pretraining = configs_read(nbformat.read(NOTEBOOKS[0], as_version=4))
    nlvr2 = configs_read(nbformat.read(ROOT / "notebooks" / "03_nlvr2.ipynb", as_version=4))
    assert set(pretraining) == {"e2evlp-tiny"}
    assert set(nlvr2) == {"e2evlp-tiny", "e2evlp-tiny-grounding"}
    assert all(len(sha) == 12 for sha in nlvr2.values()) and nlvr2["e2evlp-tiny"] == pretraining["e2evlp-tiny"]


def test_readme_timings_are_the_generated_table():
    block = README.read_text().split(BEGIN)[1].split(END)[0]
    assert block.strip() == timings_table().strip()
