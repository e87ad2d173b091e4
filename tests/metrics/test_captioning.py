"""COCO caption metrics: the published coco-caption demo numbers, the PR #52 cases, and the tokenizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlpkit.metrics.captioning import (
    best_constant_caption,
    compute_caption_metrics,
    evaluate_caption_files,
    evaluate_captions,
    java_available,
    load_caption_results,
    simple_ptb_tokenize,
    tokenize_captions,
    write_caption_results,
)

needs_java = pytest.mark.skipif(not java_available(), reason="java not on PATH (PTBTokenizer / METEOR)")


@pytest.fixture(scope="module")
def demo(realdata_dir):
    """The 1000 coco-caption demo images: PTB-tokenized refs and candidates (the PR #31 SPICE input file)."""
    data = json.loads((realdata_dir / "coco_caption/fakecap_1000_tokenized_refs_and_test.json").read_text())
    gts = {e["image_id"]: e["refs"] for e in data}
    res = {e["image_id"]: e["test"] for e in data}
    return gts, res


@pytest.fixture(scope="module")
def realdata_dir():
    # `realdata` is function-scoped in tests/conftest.py; this module-scoped twin lets the demo load once.
    path = Path(__file__).resolve().parents[2].parent / "shared" / "realdata"
    if not path.is_dir():
        pytest.skip(f"real-data samples not found at {path}")
    return path


@pytest.fixture(scope="module")
def demo_scores(demo):
    gts, res = demo
    return compute_caption_metrics(gts, res, metrics=("Bleu", "ROUGE_L", "CIDEr"))


def test_demo_reproduces_published_scores(realdata_dir, demo_scores):
    expected = json.loads((realdata_dir / "coco_caption/expected_scores.json").read_text())
    exact = expected["reproduced_here_with_pycocoevalcap_1.2_on_fakecap_1000_tokenized_refs_and_test.json"]
    published = expected["published_3dp"]
    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert demo_scores.corpus[name] == pytest.approx(exact[name], rel=1e-12, abs=0), name
        assert round(demo_scores.corpus[name], 3) == pytest.approx(published[name]), name
    assert demo_scores.corpus["Bleu_4"] == pytest.approx(0.1908290437674253, rel=1e-12)
    assert demo_scores.corpus["CIDEr"] == pytest.approx(0.5997905185184199, rel=1e-12)


def test_demo_per_image_scores(realdata_dir, demo_scores):
    derived = json.loads(
        (realdata_dir / "coco_caption/derived_pycocoevalcap1.2_per_image_scores.json").read_text()
    )
    assert len(derived["per_image"]) == 1000
    for row in derived["per_image"]:
        got = demo_scores.per_image[row["image_id"]]
        for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"):
            assert got[name] == pytest.approx(row[name], rel=1e-9, abs=1e-12), (row["image_id"], name)


def test_file_evaluator_on_official_results_file(realdata_dir, demo, tmp_path):
    """evaluate_caption_files on the real demo results file and a captions_*.json built from the refs."""
    gts, _ = demo
    anns = [
        {"image_id": k, "id": 10 * i + j, "caption": c}
        for i, (k, v) in enumerate(gts.items())
        for j, c in enumerate(v)
    ]
    ann_file = tmp_path / "captions_gt.json"
    ann_file.write_text(json.dumps({"images": [{"id": k} for k in gts], "annotations": anns}))
    results = realdata_dir / "coco_caption/captions_val2014_fakecap_results.json"
    scores = evaluate_caption_files(ann_file, results, tokenizer="none")
    assert scores["Bleu_4"] == pytest.approx(0.1908290437674253, rel=1e-12)
    assert scores["CIDEr"] == pytest.approx(0.5997905185184199, rel=1e-12)
    # Round trip through the writer gives the same file content.
    res = load_caption_results(results)
    write_caption_results(tmp_path / "res.json", res)
    assert json.loads((tmp_path / "res.json").read_text()) == json.loads(results.read_text())


def test_file_evaluator_scores_only_result_images(realdata_dir):
    """As COCOEvalCap: the GT file may hold more images than the results (here 100 captions, 44 images)."""
    ann = realdata_dir / "coco_caption/captions_val2014_minyus_first100.json"
    data = json.loads(ann.read_text())
    first = {}
    for a in data["annotations"]:
        first.setdefault(a["image_id"], a["caption"])
    some = dict(list(first.items())[:10])
    by_file = evaluate_caption_files(
        ann, [{"image_id": k, "caption": c} for k, c in some.items()], tokenizer="simple"
    )
    gts = {k: [a["caption"] for a in data["annotations"] if a["image_id"] == k] for k in some}
    assert by_file == evaluate_captions(gts, some, tokenizer="simple")
    with pytest.raises(ValueError, match="no GT caption"):
        evaluate_caption_files(ann, [{"image_id": -7, "caption": "a cat"}], tokenizer="simple")


def _pr52(realdata_dir):
    cases = json.loads((realdata_dir / "coco_caption/pr52_test_metrics_cases.json").read_text())["cases"]
    base = cases[0]
    out = []
    for c in cases:
        refs = base["refs"] if c["refs"] == "same as above" else c["refs"]
        cands = base["cands"] if c["cands"] == "same as above" else c["cands"]
        out.append((c, refs, {k: v[0] for k, v in cands.items()}))
    return out


# Cases 3 and 4 are METEOR and SPICE (unverified upstream; METEOR is checked on the demo, SPICE never runs).
@pytest.mark.parametrize("index", [0, 1, 2, 5, 6, 7, 8])
def test_pr52_cases(realdata_dir, index):
    case, refs, cands = _pr52(realdata_dir)[index]
    metric = {"Bleu(4)": "Bleu", "Rouge": "ROUGE_L", "Cider": "CIDEr"}[case["metric"]]
    assert case["verified"]
    scores = evaluate_captions(refs, cands, tokenizer="none", metrics=(metric,))
    if metric == "Bleu":
        got = [scores[f"Bleu_{n}"] for n in range(1, 5)]
        assert got == pytest.approx(case["expected"], rel=1e-9)
    else:
        assert scores[metric] == pytest.approx(case["expected"], rel=1e-9)


@pytest.mark.slow
@needs_java
def test_meteor_demo(demo):
    """METEOR 1.5 (Java, ~11 s) on the demo reproduces the published 0.195."""
    gts, res = demo
    assert round(compute_caption_metrics(gts, res, metrics=("METEOR",)).corpus["METEOR"], 3) == 0.195


def test_simple_tokenizer_matches_ptb_pairs(realdata_dir):
    pairs = json.loads((realdata_dir / "coco_caption/raw_vs_ptb_tokenized_pairs.json").read_text())["pairs"]
    assert len(pairs) == 11
    for p in pairs:
        assert simple_ptb_tokenize(p["raw"]) == p["ptb_tokenized"], p["raw"]


def test_raw_gt_of_demo_image_gives_demo_scores(realdata_dir, demo):
    """Swap image 184321's tokenized refs for its raw captions: tokenizing them back reproduces the demo."""
    gts, res = demo
    raw = json.loads((realdata_dir / "coco_caption/demo_image_184321_raw_gt_from_notebook.json").read_text())
    gts = dict(gts)
    gts[184321] = tokenize_captions({184321: raw["raw_gt_captions"]}, "simple")[184321]
    scores = compute_caption_metrics(gts, res, metrics=("CIDEr",))
    assert scores.corpus["CIDEr"] == pytest.approx(0.5997905185184199, rel=1e-12)
    assert round(scores.per_image[184321]["CIDEr"], 1) == 1.0  # the notebook prints "CIDEr score 1.0"


# Hard cases where the fallback is meant to agree with Stanford's PTBTokenizer (checked live, not hard-coded).
TRICKY = [
    "A man's dog isn't near St. Louis.", 'He said "hello" & left... 3.5 ft, 1,000 $5 50% U.S.A. e-mail',
    "THIS.              is     !a dog     ,at the PaRK.", " this. is! a doG, at the parK .", "A dog (brown) [x] {y}",
    "cats' toys o'clock 'hello' I'm we'll they've she'd gonna cannot gotta wanna", "i like cats etc.",
    "a/b a\\b a@b #1 a*b a+b a=b ~ ^ |", "tab\there", "ÉCOLE café naïve 10:30 9/11 1.5x", "the U.S.",
    "mr. smith and dr. who vs. etc. end.", "wait... what", "a 10-year-old boy's 80's toys", "O'Neil's car in the '90s",
    "two people.the end", "dad's.", "it is 5 p.m. now", "yes!! what?", "it's 3:00pm", "A b&w photo", "e.g. this",
]  # fmt: skip


@needs_java
def test_simple_tokenizer_matches_ptb_live(realdata_dir):
    data = json.loads((realdata_dir / "coco_caption/captions_val2014_minyus_first100.json").read_text())
    sentences = TRICKY + [a["caption"] for a in data["annotations"]]
    ptb = tokenize_captions({i: [s] for i, s in enumerate(sentences)}, "ptb")
    mismatches = [(s, simple_ptb_tokenize(s), ptb[i][0]) for i, s in enumerate(sentences)
                  if simple_ptb_tokenize(s) != ptb[i][0]]  # fmt: skip
    assert mismatches == []


@needs_java
def test_ptb_and_simple_give_same_scores(realdata_dir):
    data = json.loads((realdata_dir / "coco_caption/captions_val2014_minyus_first100.json").read_text())
    gts = {}
    for a in data["annotations"]:
        gts.setdefault(a["image_id"], []).append(a["caption"])
    # Candidate: another image's caption (a realistic mix of partial matches).
    keys = list(gts)
    res = {k: gts[keys[(i + 1) % len(keys)]][0] for i, k in enumerate(keys)}
    assert evaluate_captions(gts, res, tokenizer="ptb") == evaluate_captions(gts, res, tokenizer="simple")


def test_tokenization_matters():
    """Raw (untokenized) captions score lower than tokenized ones: the tokenizer is really applied."""
    gts = {1: ["A dog runs on the grass."], 2: ["Two cats, sleeping."]}
    res = {1: "a dog runs on the grass", 2: "two cats sleeping"}
    tok = evaluate_captions(gts, res, tokenizer="simple", metrics=("Bleu",))
    raw = evaluate_captions(gts, res, tokenizer="none", metrics=("Bleu",))
    assert tok["Bleu_1"] == pytest.approx(1.0)
    assert raw["Bleu_1"] < 0.8


def test_bad_inputs(tmp_path):
    gts = {1: ["a dog"], 2: ["a cat"]}
    with pytest.raises(ValueError, match=r"no candidate for 1 image id.*\[2\]"):
        evaluate_captions(gts, {1: "a dog"})
    with pytest.raises(ValueError, match=r"without references in gts: \[3\]"):
        evaluate_captions(gts, {1: "a", 2: "b", 3: "c"})
    with pytest.raises(TypeError, match=r"res\[1\] must be one candidate string"):
        evaluate_captions(gts, {1: ["a dog"], 2: "a cat"})
    with pytest.raises(ValueError, match=r"gts\[2\] must be a non-empty list"):
        evaluate_captions({1: ["a"], 2: []}, {1: "a", 2: "b"})
    with pytest.raises(ValueError, match="SPICE is not offered"):
        evaluate_captions(gts, {1: "a", 2: "b"}, metrics=("SPICE",))
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        evaluate_captions(gts, {1: "a", 2: "b"}, tokenizer="bpe")
    with pytest.raises(ValueError, match="image 5 more than once"):
        load_caption_results([{"image_id": 5, "caption": "a"}, {"image_id": 5, "caption": "b"}])
    with pytest.raises(KeyError, match="result 0 must have 'image_id' and 'caption'"):
        load_caption_results([{"image_id": 5, "text": "a"}])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_caption_results(tmp_path / "missing.json")
    if java_available():  # without Java, METEOR is refused before the newline check
        with pytest.raises(ValueError, match=r"METEOR: captions of image\(s\) \[2\] contain a newline"):
            compute_caption_metrics({1: ["a"], 2: ["b\nc"]}, {1: "a", 2: "b"}, metrics=("METEOR",))


def test_without_java_auto_falls_back_to_simple(monkeypatch):
    from vlpkit.metrics import captioning

    monkeypatch.setattr(captioning, "java_available", lambda: False)
    caps = {1: ["A man's dog (brown) isn't here."]}
    with pytest.warns(UserWarning, match="java not found"):
        assert tokenize_captions(caps, "auto") == {1: ["a man 's dog -lrb- brown -rrb- is n't here"]}
    with pytest.raises(RuntimeError, match="tokenizer='ptb' needs Java"):
        tokenize_captions(caps, "ptb")
    with pytest.raises(RuntimeError, match="METEOR needs Java"):
        evaluate_captions({1: ["a dog"]}, {1: "a dog"}, tokenizer="simple", metrics=("METEOR",))


def test_best_constant_caption_is_the_best_scoring_frequent_training_caption():
    references = {1: ["a red square on the left", "a red square"], 2: ["two blue circles", "blue circles"],
                  3: ["a red square and a blue circle", "a square and a circle"]}
    train = ["a red square"] * 3 + ["two blue circles"] * 2 + ["a green triangle"] * 4 + ["a red square and a circle"]
    caption, scores = best_constant_caption(references, train, candidates=3, tokenizer="simple")
    # an independent formulation: every candidate scored with evaluate_captions, the best by CIDEr
    by_hand = {c: evaluate_captions(references, {i: c for i in references}, tokenizer="simple",
                                    metrics=("Bleu", "CIDEr"))
               for c in ("a green triangle", "a red square", "two blue circles")}
    assert caption == max(by_hand, key=lambda c: by_hand[c]["CIDEr"])
    assert scores["CIDEr"] == pytest.approx(by_hand[caption]["CIDEr"])
    assert caption != "a red square and a circle"  # only the 3 most frequent are candidates
    assert by_hand[caption]["CIDEr"] > by_hand["a green triangle"]["CIDEr"]  # the most frequent is not the pick
    with pytest.raises(ValueError, match="0 candidate"):
        best_constant_caption(references, [])
