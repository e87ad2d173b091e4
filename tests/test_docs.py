"""The documentation site builds strictly, and generated tables in it match their generators."""

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from html import escape as html_escape
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_parameter_table_matches_generator():
    from vlpkit.params import parameter_table

    text = (ROOT / "docs" / "paper_fidelity.md").read_text()
    table = re.search(r"<!-- params-table -->\n(.*?)\n<!-- /params-table -->", text, re.S).group(1)
    assert table.strip() == parameter_table().strip()


def test_payoff_table_comes_from_the_shipped_config():
    """The table of `benchmarks/payoff.py` in docs/pretraining.md names the hash of the e2evlp-tiny.yaml it was
    produced with; once the shipped config changes, the table must be regenerated (or removed)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.payoff import DOCS_BEGIN, DOCS_END, config_sha

    text = (ROOT / "docs" / "pretraining.md").read_text()
    assert text.count(DOCS_BEGIN) == 1 and text.count(DOCS_END) == 1
    block = text.split(DOCS_BEGIN)[1].split(DOCS_END)[0]
    found = re.search(r"config `e2evlp-tiny` sha256 (\w+)", block)
    if found is None:  # no table generated yet: the block must not hold a hand-written one
        assert "|" not in block
        return
    assert found.group(1) == config_sha(), (
        "docs/pretraining.md's payoff table was generated from another vlpkit/configs/e2evlp-tiny.yaml; rerun "
        "python benchmarks/payoff.py --run RUN --write-docs docs/pretraining.md")
    assert "The run changed the shipped config" not in block, "the payoff table must come from the shipped recipe"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site of ``mkdocs build --strict``, built once for this module's tests."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists() and shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed (install the dev extras)")
    out = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run([str(mkdocs) if mkdocs.exists() else "mkdocs", "build", "--strict", "-d", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out


def test_mkdocs_build_strict(site):
    assert (site / "index.html").is_file()
    # the docs hook lives under docs/ but is excluded from the site
    assert not (site / "hooks").exists()


def _notebooks():
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_every_notebook_is_a_tutorial_page(site):
    """Each notebook of notebooks/ is in the nav and rendered (unexecuted) at notebooks/<name>/."""
    notebooks = _notebooks()
    assert [p.stem[:2] for p in notebooks] == [f"{i:02d}" for i in range(8)], [p.name for p in notebooks]
    nav = (ROOT / "mkdocs.yml").read_text()
    for path in notebooks:
        assert f"notebooks/{path.name}" in nav, f"{path.name} is missing from the nav of mkdocs.yml"
        page = site / "notebooks" / path.stem / "index.html"
        assert page.is_file(), f"{path.name} was not rendered to {page.relative_to(site)}"
        html = page.read_text()
        first_heading = json.loads(path.read_text())["cells"][0]["source"]
        title = "".join(first_heading).splitlines()[0].lstrip("# ").strip()
        assert f"<title>{html_escape(title, quote=False)} - vlpkit</title>" in html
        assert "Real data instead of the shapes world" in html
        assert "jp-CodeCell" in html, f"{path.name}: no code cell rendered"
        # include_source: the notebook itself can be downloaded beside its page
        assert (page.parent / path.name).read_bytes() == path.read_bytes()
    overview = (site / "notebooks" / "index.html").read_text()
    assert "Tutorial notebooks" in overview


def test_each_notebook_says_how_to_use_the_real_dataset():
    """The first cell of every notebook is markdown and explains how to swap the shapes world for real data."""
    for path in _notebooks():
        first = json.loads(path.read_text())["cells"][0]
        text = "".join(first["source"])
        assert first["cell_type"] == "markdown", path.name
        assert "**Real data instead of the shapes world.**" in text, path.name


# `vlpkit <command> ...` as the docs, the README and the notebooks' markdown write it (inline or in a code block);
# a bare `vlpkit pretrain` in prose is a name, not a command line, and is left alone.
_COMMAND = re.compile(r"(?:^|[`\s(])(?:python -m )?vlpkit ((?:demo|pretrain|finetune|evaluate|smoke|params)\b[^`\n#)]*)")


# command-line task name -> (module of vlpkit.tasks, its recipe class), for the fields of `--set task.KEY=VALUE`
def _documented_commands():
    texts = [(p.relative_to(ROOT), p.read_text()) for p in sorted((ROOT / "docs").rglob("*.md"))]
    texts += [(p.relative_to(ROOT), p.read_text()) for p in (ROOT / "README.md", ROOT / "notebooks" / "README.md")]
    for path in _notebooks():
        cells = json.loads(path.read_text())["cells"]
        texts.append((path.relative_to(ROOT), "\n".join("".join(c["source"]) for c in cells
                                                          if c["cell_type"] == "markdown")))
    for where, text in texts:
        for match in _COMMAND.finditer(re.sub(r"\\\n\s*", " ", text)):  # join shell continuation lines
            try:  # as a shell splits it: quoted `--set "key={a: 1}"` values hold spaces
                argv = shlex.split(match.group(1))
            except ValueError:  # an unbalanced quote: the pattern ran into prose
                argv = match.group(1).split()
            if len(argv) > 1 or argv[0] in ("demo", "params", "smoke"):
                yield str(where), argv


def test_documented_command_lines_parse():
    """Every command line the docs show is accepted by `vlpkit`'s parser, and its `--set` keys exist.

    `...` stands for elided values; the rest must be valid: the sub-command and its task, the required options,
    `--set` sections, and the fields named for `vlpkit finetune` (task config or TrainerConfig fields).
    """
    import dataclasses

    from vlpkit.cli import _split_overrides, build_parser
    from vlpkit.engine import TrainerConfig
    from vlpkit.pretraining.run import load_config
    from vlpkit.tasks.registry import get_task

    parser = build_parser()
    trainer_fields = {f.name for f in dataclasses.fields(TrainerConfig)}
    checked, problems = 0, []
    for where, argv in _documented_commands():
        # `--opt ...` elides a value (kept as a placeholder); a free-standing `...` elides further options
        argv = [("X" if argv[i - 1].startswith("--") else None) if t == "..." else t for i, t in enumerate(argv)]
        argv = [t for t in argv if t is not None]
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                args = parser.parse_args(argv)
        except SystemExit:
            problems.append(f"{where}: `vlpkit {' '.join(argv)}` is rejected by the parser")
            continue
        checked += 1
        sets = [s for s in (getattr(args, "set", None) or []) if s != "X"]
        try:
            if args.command == "pretrain" and not args.config.endswith(".yaml"):  # a user's file is not here
                load_config(args.config, sets)
            elif args.command in ("finetune", "evaluate"):
                task, trainer = _split_overrides(sets)
                get_task(args.task).config_class.from_dict(task)
                assert set(trainer) <= trainer_fields, f"unknown trainer field(s) {sorted(set(trainer) - trainer_fields)}"
        except (SystemExit, Exception) as err:  # noqa: BLE001 - every failure is reported with its place
            problems.append(f"{where}: `vlpkit {' '.join(argv)}`: {err}")
    assert not problems, "\n".join(problems)
    assert checked >= 10, f"only {checked} documented command lines found; is the pattern still right?"


def test_task_table_matches_the_registry():
    from vlpkit.tasks.registry import get_task, task_names

    text = (ROOT / "docs" / "tasks" / "index.md").read_text()
    table = re.search(r"<!-- tasks-table -->\n(.*?)\n<!-- /tasks-table -->", text, re.S).group(1)
    rows = ["| name | task |", "|---|---|"] + [f"| `{n}` | {get_task(n).summary} |" for n in task_names()]
    assert table.strip() == "\n".join(rows)


def test_every_module_has_an_api_reference():
    """Each module of vlpkit is rendered by some `::: module` directive of the docs (entry points excepted)."""
    documented = set()
    for page in (ROOT / "docs").rglob("*.md"):
        documented.update(re.findall(r"^::: *([\w.]+)\s*$", page.read_text(), re.M))
    entry_points = {"vlpkit.__main__", "vlpkit.cli", "vlpkit.demo"}
    modules = set()
    for path in (ROOT / "vlpkit").rglob("*.py"):
        if path.name != "__init__.py":
            modules.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    missing = sorted(modules - documented - entry_points)
    assert not missing, f"modules without an API reference page (add `::: name` to a page of docs/): {missing}"
    unknown = sorted(d for d in documented if d not in modules and not (ROOT / d.replace(".", "/")).is_dir())
    assert not unknown, f"`:::` directives naming no vlpkit module: {unknown}"


def test_reliability_cases_name_tests_that_exist():
    """Every row of docs/reliability.md's run-folder table names a test function that exists (so the page cannot
    claim a case nobody checks)."""
    root = ROOT
    page = (root / "docs" / "reliability.md").read_text()
    table = page.split("<!-- run-folder-cases -->")[1].split("<!-- /run-folder-cases -->")[0]
    named = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", table)
    assert len(named) >= 11
    for path, name in named:
        assert re.search(rf"^def {name}\(", (root / path).read_text(), re.M), f"{path}::{name} is not a test"


def test_readme_demo_card_is_current():
    """The demo figure and the table in the README and docs/pretraining.md come from `benchmarks/demo_card.py` on a
    demo of the shipped e2evlp-tiny.yaml: a changed config (rerun the demo and the script) or a hand-edited table
    fails here."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.demo_card import BEGIN, CARD, END, FIGURE, PAGES, table
    from benchmarks.payoff import config_sha

    card = json.loads(CARD.read_text())
    assert card["config_sha"] == config_sha(), (
        "vlpkit/configs/e2evlp-tiny.yaml changed since the README's demo card was made: run `vlpkit demo` and "
        "`python benchmarks/demo_card.py --run RUN`")
    for page in PAGES:
        block = page.read_text().split(BEGIN)[1].split(END)[0]
        assert block.strip() == table(card).strip(), f"{page.name}: run `python benchmarks/demo_card.py --run RUN`"
    assert FIGURE.stat().st_size > 10_000


def test_loader_vs_step_table_is_current():
    """docs/data/real_datasets.md's loader and GPU-time table comes from `benchmarks/loader_vs_step.py` on the
    shipped e2evlp-6-r50.yaml: a changed config (rerun the script) or a hand-edited table fails here."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.loader_vs_step import BEGIN, CONFIG, DOCS, END, RESULT, table
    from benchmarks.provenance import config_sha

    result = json.loads(RESULT.read_text())
    assert result["config_sha"] == config_sha(CONFIG.stem), (
        "vlpkit/configs/e2evlp-6-r50.yaml changed since docs/data/loader_vs_step.json was measured: run "
        "`python benchmarks/loader_vs_step.py`")
    assert DOCS.read_text().split(BEGIN)[1].split(END)[0].strip() == table(result).strip()


RUNNABLE = re.compile(r"<!-- runnable -->\s*\n```(python|bash)\n(.*?)\n```", re.S)


def test_runnable_examples_run(tmp_path):
    """Every fenced example marked `<!-- runnable -->` in the README and docs/ runs: a page's Python blocks in
    order as one script, each `vlpkit ...` line of its bash blocks as a command, in a scratch folder."""
    import shlex

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    ran = 0
    for page in pages:
        blocks = RUNNABLE.findall(page.read_text())
        if not blocks:
            continue
        work = tmp_path / page.stem
        work.mkdir()
        script = "\n".join(code for lang, code in blocks if lang == "python")
        commands = [shlex.split(line.split("#")[0]) for lang, code in blocks if lang == "bash"
                    for line in code.splitlines() if line.split("#")[0].strip()]
        assert all(c[0] == "vlpkit" for c in commands), f"{page}: runnable bash blocks hold vlpkit commands only"
        runs = ([[sys.executable, "-c", script]] if script else []) + [
            [sys.executable, "-m", "vlpkit", *c[1:]] for c in commands]
        for argv in runs:
            done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{page.relative_to(ROOT)}: {argv[2:]} failed:\n{done.stderr[-2000:]}"
            ran += 1
    assert ran >= 3
