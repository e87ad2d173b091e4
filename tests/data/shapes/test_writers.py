"""Format helpers: VQA accuracy against published cases, the 10 VQA answers, NLVR2 lines, atomic writes."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from vlpkit.data.shapes.language import QA, Vocab
from vlpkit.data.shapes.world import _split_sizes
from vlpkit.data.shapes.writers import atomic_write_bytes, nlvr2_line, vqa_accuracy, vqa_answers

_NORMALISING = {
    "a",
    "an",
    "the",
    "none",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
}


def _already_normal(answer: str) -> bool:
    """True when the official normalisation cannot change ``answer`` (all shapes-world answers are such)."""
    return bool(re.fullmatch(r"[a-z0-9]+( [a-z0-9]+)*", answer)) and not set(answer.split()) & _NORMALISING


def test_vqa_accuracy_matches_published_cases(realdata):
    cases = json.loads((realdata / "vqa" / "axlearn_vqa_normalizer_and_accuracy_cases.json").read_text())
    usable = [
        c for c in cases["accuracy_cases"] if all(map(_already_normal, [c["answer"], *c["gt_answers"]]))
    ]
    assert len(usable) >= 5
    for case in usable:
        assert vqa_accuracy(case["answer"], case["gt_answers"]) == pytest.approx(case["expected"]), case


def test_vqa_accuracy_reference_values():
    assert vqa_accuracy("red", ["red"] * 10) == 1.0
    assert vqa_accuracy("red", ["blue"] * 10) == 0.0
    # 2 matches: leaving out a match leaves 1 (1/3), leaving out another answer leaves 2 (2/3)
    assert vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert vqa_accuracy("red", ["red"] * 4 + ["blue"] * 6) == 1.0


QAS = [
    QA("How many circles are there?", "2", "count", "number", "how many"),
    QA("How many stars are there?", "0", "count", "number", "how many"),
    QA("Is there a star?", "yes", "exist", "yes/no", "is there a"),
    QA("What color is the star?", "red", "color", "other", "what color is the"),
    QA("Is the star left or right of the circle?", "left", "spatial_side", "other", "is the"),
]


@pytest.mark.parametrize("qa", QAS, ids=lambda q: q.family + q.answer)
def test_vqa_answers_noise_is_capped_and_plausible(qa):
    clean = vqa_answers(qa, random.Random(0), 0.0, Vocab())
    assert [a["answer"] for a in clean] == [qa.answer] * 10
    assert [a["answer_id"] for a in clean] == list(range(1, 11))
    assert {a["answer_confidence"] for a in clean} == {"yes"}
    noisy = vqa_answers(qa, random.Random(0), 1.0, Vocab())
    votes = Counter(a["answer"] for a in noisy)
    assert votes[qa.answer] == 7
    assert vqa_accuracy(qa.answer, [a["answer"] for a in noisy]) == 1.0
    for a in noisy:
        if a["answer"] == qa.answer:
            continue
        assert a["answer_confidence"] == "maybe"
        if qa.answer_type == "number":
            assert abs(int(a["answer"]) - int(qa.answer)) == 1 and int(a["answer"]) >= 0
        elif qa.answer_type == "yes/no":
            assert a["answer"] == "no"
        elif qa.family == "spatial_side":
            assert a["answer"] in ("right", "above", "below")
        else:
            assert a["answer"] in Vocab().colors


def test_nlvr2_line_keys_follow_the_split(realdata):
    real = json.loads((realdata / "nlvr2" / "dev_first303.jsonl").read_text().splitlines()[0])
    dev = nlvr2_line("dev-3-1-0", "A sentence.", False, "l.png", "r.png", "circle", "circles3", None)
    train = nlvr2_line("train-3-1-0", "A sentence.", True, "l.png", "r.png", "circle", "circles3", 3)
    assert set(dev) == set(real) and set(train) == set(real) | {"directory"}
    assert dev["label"] == "False" and set(dev["extra_validations"].values()) == {"False"}
    assert train["label"] == "True" and train["directory"] == 3 and train["extra_validations"] == {}


@pytest.mark.parametrize(
    ("total", "fractions", "expected"),
    [
        (2000, (0.8, 0.1, 0.1), [1600, 200, 200]),
        (10, (0.8, 0.1, 0.1), [8, 1, 1]),
        (6, (0.8, 0.1, 0.1), [4, 1, 1]),
        (3, (0.8, 0.1, 0.1), [1, 1, 1]),
        (2, (0.8, 0.1, 0.1), [2, 0, 0]),
        (10, (1.0, 0.0, 0.0), [10, 0, 0]),
        (5, (0.0, 0.5, 0.5), [0, 2, 3]),
    ],
)
def test_split_sizes(total, fractions, expected):
    sizes = _split_sizes(total, fractions)
    assert sizes == expected and sum(sizes) == total


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "f.json"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]
