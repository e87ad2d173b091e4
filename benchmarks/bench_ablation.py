"""The visual-learning ablation (`benchmarks/ablation.py`) in its quick mode, so that it keeps running: 1 seed,
2 pretraining and 2 fine-tuning steps on a 48-image world, all six variants. Only the structure of the results
is checked (every variant and task present, accuracies in [0, 100], the markdown table renders, the docs section
is replaced and nothing else); a 2-step run's accuracies mean nothing. The reading's arithmetic is checked on
hand-made summaries.

The full run (3 seeds, `make ablation`) writes the table of docs/paper_fidelity.md.
"""

from __future__ import annotations

import json
import re
from xml.etree import ElementTree

import markdown
import pytest

from benchmarks.ablation import DOCS_BEGIN, DOCS_END, TASKS, VARIANTS, main, reading

MARKERS = re.compile(re.escape(DOCS_BEGIN) + r".*?" + re.escape(DOCS_END), re.S)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablation")
    docs = tmp / "paper_fidelity.md"
    docs.write_text(f"# Paper fidelity\n\nBefore.\n\n{DOCS_BEGIN}\nold table\n{DOCS_END}\n\nAfter.\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLPKIT_CACHE", str(tmp / "cache"))
        argv = ["--quick", "--workdir", str(tmp / "runs"), "--output", str(tmp / "ablation.json"),
                "--write-docs", str(docs)]
        result = main(argv)
        again = main(argv[:-2])  # the recorded runs are reused
    return result, again, json.loads((tmp / "ablation.json").read_text()), docs.read_text()


def test_quick_ablation_has_every_variant_and_task(quick):
    result, _, saved, _ = quick
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    assert list(saved["summary"]) == list(VARIANTS)
    assert {(r["variant"], r["seed"]) for r in saved["records"]} == {(v, 0) for v in VARIANTS}
    for variant, entry in saved["summary"].items():
        assert entry["seeds"] == [0]
        assert entry["tasks"] == (list(VARIANTS[variant][1]) if VARIANTS[variant][1] else [])
        for task in TASKS:
            assert len(entry[task]["accuracies"]) == 1 and entry[task]["std"] is None
            assert 0.0 <= entry[task]["mean"] <= 100.0
    for record in saved["records"]:
        assert ("pretrain_seconds" in record) == (record["variant"] != "scratch")
    base = saved["baselines"]
    assert base["nlvr2"]["chance"] == 50.0 and base["vqa"]["ceiling"] == pytest.approx(100.0)
    assert 0.0 < base["vqa"]["chance"] < 100.0 and 0.0 < base["vqa"]["majority"] < 100.0


def test_recorded_runs_are_reused(quick):
    result, again, _, _ = quick
    assert again["timings"]["reused_runs"] == len(VARIANTS)
    assert again["summary"] == result["summary"]


def test_markdown_table_renders_and_replaces_only_the_docs_section(quick):
    result, _, _, docs = quick
    html = markdown.markdown(result["markdown"], extensions=["tables"])
    table = ElementTree.fromstring(re.search(r"<table>.*?</table>", html, re.S).group(0))
    rows = [[cell.text for cell in row] for row in table.iter("tr")]
    assert len(rows) == 1 + len(VARIANTS) and all(len(row) == 6 for row in rows)
    assert [row[0] for row in rows[1:]] == [label for label, _ in VARIANTS.values()]
    assert rows[1][4:] == ["70.76", "72.12"] and rows[-1][4:] == ["-", "-"]  # the paper's Table 3 beside ours
    assert MARKERS.sub("", docs) == "# Paper fidelity\n\nBefore.\n\n\n\nAfter.\n"
    assert MARKERS.search(docs).group(0) == f"{DOCS_BEGIN}\n{result['markdown']}{DOCS_END}"


def test_docs_without_the_markers_are_refused_before_the_run(tmp_path, capsys):
    docs = tmp_path / "paper_fidelity.md"
    docs.write_text(f"# Paper fidelity\n\n{DOCS_BEGIN}\nno end marker\n")
    with pytest.raises(SystemExit):
        main(["--quick", "--workdir", str(tmp_path / "runs"), "--write-docs", str(docs)])
    assert "found 1 begin and 0 end marker(s)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _summary(rows: dict[str, tuple[float, float | None, float, float | None]]) -> dict:
    return {v: {"label": VARIANTS[v][0], "vqa": {"mean": a, "std": sa}, "nlvr2": {"mean": b, "std": sb}}
            for v, (a, sa, b, sb) in rows.items()}


def test_reading_flags_differences_beyond_twice_the_pooled_std():
    # pooled std of (3, 4) = sqrt((9 + 16) / 2) = 3.536: threshold 7.07; of (3, 1): sqrt(5) = 2.236: 4.47
    lines = reading(_summary({"full": (50.0, 3.0, 60.0, 1.0), "no_detection": (42.0, 4.0, 57.0, 1.0),
                              "no_caption": (51.0, 1.0, 58.0, 1.0), "scratch": (43.0, 4.0, 60.0, 1.0)}), {})
    assert len(lines) == 4
    assert "VQA -8.00 (exceeds 2 x pooled std = 7.07), same direction as the paper's -1.91" in lines[0]
    assert "NLVR2 -3.00 (exceeds 2 x pooled std = 2.00)" in lines[0]
    assert "VQA +1.00 (within 2 x pooled std = 4.47), opposite to the paper's -0.56" in lines[1]
    assert "NLVR2 -2.00 (within 2 x pooled std = 2.00)" in lines[1]  # not strictly beyond
    assert "VQA -7.00 (within 2 x pooled std = 7.07)" in lines[2] and "paper" not in lines[2]
    assert "NLVR2 +0.00 (within" in lines[2]
    assert "2 of the 4 differences the paper reports" in lines[3]


def test_reading_against_the_blind_baselines():
    summary = _summary({"full": (50.0, 2.0, 55.0, 1.0), "scratch": (45.0, 1.0, 51.0, 1.0)})
    lines = reading(summary, {"vqa": {"majority": 44.0}, "nlvr2": {"majority": 54.0}})
    assert lines[0] == "- VQA: 1 of 2 variants beat the blind majority baseline (44.00): all tasks."  # 50 - 4 > 44 > 45 - 2
    assert lines[1].startswith("- **NLVR2: no variant beats the blind majority baseline (54.00)**")


def test_reading_with_one_seed_or_without_the_full_model():
    lines = reading(_summary({"full": (50.0, None, 60.0, None), "no_caption": (51.0, None, 59.0, None),
                              "no_attributes": (50.0, None, 59.0, None)}), {})
    assert "VQA +1.00 (one seed: no spread to compare with), opposite to the paper's -0.56" in lines[0]
    assert "NLVR2 -1.00 (one seed: no spread to compare with), same direction as" in lines[0]
    assert "VQA +0.00 (one seed: no spread to compare with), no change where the paper has -0.84" in lines[1]
    assert "0 of the 4 differences" in lines[2]
    assert reading(_summary({"scratch": (1.0, None, 2.0, None)}), {}) == [
        "- (the full model was not run: nothing to compare with)"]
