"""VQA v2 accuracy against the official vqaEval.py outputs and a literal port of its scoring loop."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlpkit.metrics.vqa import (
    answer_accuracy,
    evaluate_vqa,
    normalize_answer,
    process_punctuation,
    soft_scores,
    write_vqa_results,
)

ANN = "vqa/v2_mscoco_val2014_annotations_first100.json"
QUES = "vqa/v2_OpenEnded_mscoco_val2014_questions_first100.json"
RESULTS = [
    "results_multiple_choice_answer_first100.json",
    "results_first_annotator_answer_first100.json",
    "results_all_yes_first100.json",
]


def _cases(realdata):
    return json.loads((realdata / "vqa/axlearn_vqa_normalizer_and_accuracy_cases.json").read_text())


def test_normalizer_cases(realdata):
    cases = _cases(realdata)["normalize_cases"]
    assert len(cases) == 48
    got = {c["answer"]: normalize_answer(c["answer"]) for c in cases}
    assert got == {c["answer"]: c["expected"] for c in cases}


def test_accuracy_cases(realdata):
    cases = _cases(realdata)["accuracy_cases"]
    assert len(cases) == 15
    for c in cases:
        assert answer_accuracy(c["answer"], c["gt_answers"]) == pytest.approx(c["expected"], abs=1e-12), c


@pytest.mark.parametrize("results", RESULTS)
def test_official_scores(realdata, results):
    expected = json.loads((realdata / "vqa/derived_official_vqaEval_scores.json").read_text())["scores"][
        results
    ]
    r = evaluate_vqa(realdata / ANN, realdata / QUES, realdata / "vqa" / results)
    assert r.overall == expected["overall"]
    assert r.per_answer_type == expected["perAnswerType"]
    assert r.per_question_type == expected["perQuestionType"]
    assert {str(k): v for k, v in r.per_question.items()} == expected["evalQA"]


def test_write_then_evaluate_round_trip(realdata, tmp_path):
    anns = json.loads((realdata / ANN).read_text())["annotations"]
    path = tmp_path / "res.json"
    write_vqa_results(path, [(a["question_id"], a["multiple_choice_answer"]) for a in anns])
    assert json.loads(path.read_text())[0] == {
        "question_id": anns[0]["question_id"],
        "answer": anns[0]["multiple_choice_answer"],
    }
    r = evaluate_vqa(realdata / ANN, realdata / QUES, path)
    assert r.overall == 98.4  # = the official score of the multiple_choice_answer results file


def test_official_quirks():
    # All 10 GT identical: raw strings are compared, no normalisation on either side.
    assert answer_accuracy("yes", ["Yes"] * 10) == 0.0
    assert answer_accuracy("Yes", ["Yes"] * 10) == 1.0
    assert answer_accuracy("yes", ["Yes"] * 9 + ["Yes \n"]) == 0.0  # cleaned before the identity check
    assert answer_accuracy("yes", ["Yes"] * 9 + ["YES"]) == 1.0  # not identical -> lowercased
    assert answer_accuracy(" two\n", ["2", "2", "2", "3", "3", "3", "3", "3", "3", "3"]) == pytest.approx(0.9)
    # "(?!<=\d)" typo: every period not followed by a digit goes, even after a digit.
    assert process_punctuation("5. 1.5") == "5 1.5"
    # re.UNICODE lands in the `count` argument: at most 32 periods are removed.
    assert process_punctuation("." * 40) == "." * 8
    # A punctuation mark next to a space anywhere is deleted everywhere, else replaced by a space.
    assert process_punctuation("a-b c - d") == "ab c  d"
    assert process_punctuation("a-b c-d") == "a b c d"
    assert process_punctuation("1,000-2") == "10002"  # digit,digit pattern: all punctuation deleted


def _official_loop(res_ans: str, gt_answers: list[str]) -> float:
    """vqaEval.py @a013f00 evaluate() for one question, transcribed (answer dicts compared by `!=`)."""
    answers = [{"answer": a, "answer_id": i + 1} for i, a in enumerate(gt_answers)]
    for d in answers:
        d["answer"] = d["answer"].replace("\n", " ").replace("\t", " ").strip()
    res_ans = res_ans.replace("\n", " ").replace("\t", " ").strip()
    if len({d["answer"] for d in answers}) > 1:
        for d in answers:
            d["answer"] = normalize_answer(d["answer"])
        res_ans = normalize_answer(res_ans)
    gt_acc = []
    for datum in answers:
        others = [item for item in answers if item != datum]
        matching = [item for item in others if item["answer"] == res_ans]
        gt_acc.append(min(1, float(len(matching)) / 3))
    return float(sum(gt_acc)) / len(gt_acc)


_WORDS = st.sampled_from(["yes", "Yes", "no", "two", "2", "a dog", "the dog", "dog.", "t-shirt", "t shirt", "1,000",
                          "1000", "don't", "dont", "none", "0", " red\t", "red", "?", ""])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(gts=st.lists(_WORDS, min_size=10, max_size=10), pred=_WORDS)
def test_matches_official_loop(gts, pred):
    assert answer_accuracy(pred, gts) == _official_loop(pred, gts)


@settings(max_examples=200, deadline=None)
@given(gts=st.lists(_WORDS, min_size=10, max_size=10))
def test_soft_scores_are_official_accuracies(gts):
    scores = soft_scores(gts)
    counts = {}
    for g in gts:
        key = normalize_answer(g.strip()) if len({x.strip() for x in gts}) > 1 else g.strip()
        counts[key] = counts.get(key, 0) + 1
    assert set(scores) == set(counts)
    table = {1: 0.3, 2: 0.6, 3: 0.9}
    for answer, n in counts.items():
        assert scores[answer] == pytest.approx(table.get(n, 1.0))
        assert scores[answer] == _official_loop(answer, gts)


def test_soft_scores_on_real_annotations(realdata):
    anns = json.loads((realdata / ANN).read_text())["annotations"]
    for a in anns:
        gts = [d["answer"] for d in a["answers"]]
        for answer, s in soft_scores(gts).items():
            assert s == answer_accuracy(answer, gts)
            assert any(s == pytest.approx(v) for v in (0.3, 0.6, 0.9, 1.0))


def test_bad_inputs(realdata, tmp_path):
    results = json.loads((realdata / "vqa" / RESULTS[0]).read_text())
    ann, ques = realdata / ANN, realdata / QUES
    with pytest.raises(ValueError, match=r"miss 1 annotated question.*262148000"):
        evaluate_vqa(ann, ques, results[1:])
    with pytest.raises(ValueError, match="more than once"):
        evaluate_vqa(ann, ques, results + results[:1])
    with pytest.raises(ValueError, match="question 123, which is not in the annotations"):
        evaluate_vqa(ann, ques, results + [{"question_id": 123, "answer": "x"}])
    with pytest.raises(KeyError, match="has no 'answer'"):
        evaluate_vqa(ann, ques, [{"question_id": r["question_id"]} for r in results])
    with pytest.raises(TypeError, match="non-string answer"):
        evaluate_vqa(ann, ques, [{**r, "answer": 3} for r in results])
    questions = json.loads(ques.read_text())
    questions["questions"] = questions["questions"][:-1]
    with pytest.raises(ValueError, match="annotations without question"):
        evaluate_vqa(ann, questions, results)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        evaluate_vqa(ann, ques, tmp_path / "nope.json")
    with pytest.raises(ValueError, match="non-empty list"):
        answer_accuracy("yes", [])
    with pytest.raises(TypeError, match="answer must be a string"):
        answer_accuracy(None, ["yes"] * 10)
    with pytest.raises(ValueError, match="more than once"):
        write_vqa_results(tmp_path / "r.json", [(1, "a"), (1, "b")])
