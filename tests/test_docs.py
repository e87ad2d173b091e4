"""The documentation site builds strictly, and generated tables in it match their generators."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_parameter_table_matches_generator():
    from vlpkit.params import parameter_table

    text = (ROOT / "docs" / "paper_fidelity.md").read_text()
    table = re.search(r"<!-- params-table -->\n(.*?)\n<!-- /params-table -->", text, re.S).group(1)
    assert table.strip() == parameter_table().strip()


def test_mkdocs_build_strict(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists() and shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed (install the dev extras)")
    result = subprocess.run([str(mkdocs) if mkdocs.exists() else "mkdocs", "build", "--strict", "-d",
                             str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
