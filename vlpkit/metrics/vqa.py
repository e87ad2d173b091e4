"""The official VQA v2 accuracy, exactly as ``vqaEval.py`` of GT-Vision-Lab/VQA at commit a013f00 computes it.

No maintained pip package ships this evaluator (the official repo is a script folder, not a package), so its
rules are written out here line for line, including its known quirks (see docs/metrics.md):

* ``\\n`` and ``\\t`` become spaces and both ends are stripped, in the prediction and in every GT answer;
* **only when the 10 GT answers are not all identical** are the GT answers and the prediction normalised
  (``processPunctuation`` then ``processDigitArticle``); otherwise raw strings are compared;
* per question, for each of the 10 GT answers, ``min(1, #matches among the other 9 / 3)``, averaged over the 10;
* overall / per answer type / per question type: mean over questions, ×100, rounded to ``n`` (= 2) decimals.

Inputs are the official files: questions JSON (``{"questions": [{image_id, question, question_id}]}``),
annotations JSON (``{"annotations": [{question_id, question_type, answer_type, answers: [{answer, ...}×10]}]}``)
and results JSON (``[{"question_id": int, "answer": str}]``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# fmt: off
# The contractions table of vqaEval.py @a013f00, unchanged (applied after the number/article pass).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
# fmt: on
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
# `(?!<=\d)` is the official typo for `(?<!\d)`: as written it is a no-op lookahead, so every period not
# followed by a digit is deleted ("1.5" keeps its period, "5." loses it). Kept to match the official scores.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# vqaEval.py calls `periodStrip.sub("", text, re.UNICODE)`: the flag lands in the `count` argument (re.UNICODE
# == 32), so at most 32 periods are deleted. Reproduced for exactness.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """vqaEval.processPunctuation: delete or space out each punctuation character, then delete periods.

    A character of `PUNCTUATION` is deleted when it has a space next to it somewhere in the *input*
    text, or when the input contains a digit-comma-digit pattern; otherwise it is replaced by a space.
    """
    out = text
    comma_in_number = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or comma_in_number:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """vqaEval.processDigitArticle: lowercase, number words -> digits, drop articles, expand contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The official answer normalisation: ``process_digit_article(process_punctuation(text))``.

    Does not include the ``\\n``/``\\t`` clean-up (see `clean_whitespace`), which the evaluator applies
    first. Example: ``"Two dogs, 1,000 cats!"`` -> ``"2 dogs 1000 cats"``.
    """
    return process_digit_article(process_punctuation(text))


def clean_whitespace(text: str) -> str:
    """Replace ``\\n`` and ``\\t`` by spaces and strip both ends (done to every answer before anything else)."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _check_answers(gt_answers: Sequence[str], where: str = "") -> None:
    if isinstance(gt_answers, str) or not isinstance(gt_answers, Sequence) or len(gt_answers) == 0:
        raise ValueError(f"gt_answers{where} must be a non-empty list of strings, got {gt_answers!r}")
    bad = [a for a in gt_answers if not isinstance(a, str)]
    if bad:
        raise TypeError(f"gt_answers{where} must all be strings, got {bad[0]!r} ({type(bad[0]).__name__})")


def _prepare(answer: str, gt_answers: Sequence[str]) -> tuple[str, list[str]]:
    """Apply the official clean-up and the all-identical rule; returns (prediction, GT answers) to compare."""
    answer = clean_whitespace(answer)
    gts = [clean_whitespace(a) for a in gt_answers]
    if len(set(gts)) > 1:
        gts = [normalize_answer(a) for a in gts]
        answer = normalize_answer(answer)
    return answer, gts


def _leave_one_out(answer: str, gts: Sequence[str]) -> float:
    """Mean over the leave-one-out subsets of the GT answers of ``min(1, matches in subset / 3)``.

    Summed term by term in GT order, as vqaEval.py does, so that float results agree to the last bit.
    """
    total = sum(g == answer for g in gts)
    terms = [min(1, float(total - (g == answer)) / 3) for g in gts]
    return float(sum(terms)) / len(terms)


def answer_accuracy(answer: str, gt_answers: Sequence[str]) -> float:
    """Official VQA accuracy in [0, 1] of one predicted answer against the (10) human answers.

    Example: ``answer_accuracy("2", ["two"] * 2 + ["3"] * 8)`` -> 0.6 (2 matching annotators).
    """
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a string, got {answer!r} ({type(answer).__name__})")
    _check_answers(gt_answers)
    pred, gts = _prepare(answer, gt_answers)
    return _leave_one_out(pred, gts)


def soft_scores(gt_answers: Sequence[str]) -> dict[str, float]:
    """VQA soft target: for each distinct GT answer, the official accuracy of predicting it (0.3/0.6/0.9/1.0).

    Keys are the normalised answers (`normalize_answer`), except when all GT answers are identical: the
    official evaluator then compares raw strings, so the key is the raw (whitespace-cleaned) answer and only
    that exact string scores 1.0. Each value equals ``answer_accuracy(key, gt_answers)``.
    """
    _check_answers(gt_answers)
    _, gts = _prepare("", gt_answers)
    return {a: _leave_one_out(a, gts) for a in dict.fromkeys(gts)}


@dataclass
class VQAResult:
    """Official VQA scores, in percent rounded to ``n`` decimals (as ``VQAEval.accuracy`` / ``evalQA``).

    Attributes:
        overall: mean accuracy over all questions.
        per_answer_type: ``{"yes/no" | "number" | "other": accuracy}``.
        per_question_type: ``{question_type prefix (e.g. "how many"): accuracy}``.
        per_question: ``{question_id: accuracy}``.
    """

    overall: float
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]
    per_question: dict[int, float]


def _load_json(obj: Any, what: str) -> Any:
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"VQA {what} file not found: {path}")
        with open(path) as f:
            return json.load(f)
    return obj


def _records(obj: Any, key: str, what: str) -> list[dict]:
    """The list under ``key`` of an official file (a dict), or the list itself."""
    if isinstance(obj, Mapping):
        if key not in obj:
            raise KeyError(f"VQA {what} has no {key!r} key (keys: {sorted(obj)})")
        obj = obj[key]
    if not isinstance(obj, list):
        raise TypeError(
            f"VQA {what} must be a list of records or a dict with {key!r}, got {type(obj).__name__}"
        )
    for i, rec in enumerate(obj):
        if not isinstance(rec, Mapping) or "question_id" not in rec:
            raise KeyError(f"VQA {what} record {i} has no 'question_id': {rec!r}")
    return obj


def _id_list(ids: Iterable[Any], limit: int = 5) -> str:
    ids = sorted(ids, key=str)
    return ", ".join(map(str, ids[:limit])) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def evaluate_vqa(annotations: Any, questions: Any, results: Any, n: int = 2) -> VQAResult:
    """Official VQA v2 accuracy of a results file.

    Args:
        annotations: path or loaded official annotations JSON (or its ``annotations`` list).
        questions: path or loaded official questions JSON (or its ``questions`` list); its question ids must be
            exactly those of the annotations (as the official ``VQA`` loader assumes).
        results: path or loaded results ``[{"question_id": int, "answer": str}]``; must answer every annotated
            question exactly once (the official ``loadRes`` asserts the same question set).
        n: decimals of the rounded percentages (official default 2).

    Returns:
        `VQAResult` (percentages).
    """
    anns = _records(_load_json(annotations, "annotations"), "annotations", "annotations")
    qs = _records(_load_json(questions, "questions"), "questions", "questions")
    res = _load_json(results, "results")
    if isinstance(res, Mapping):
        raise TypeError(
            "VQA results must be a list [{'question_id', 'answer'}] (or a path to one), got a dict"
        )
    res = _records(res, "", "results")

    gt = {}
    for a in anns:
        for key in ("answers", "question_type", "answer_type"):
            if key not in a:
                raise KeyError(f"VQA annotation of question {a['question_id']} has no {key!r}")
        if a["question_id"] in gt:
            raise ValueError(f"VQA annotations list question {a['question_id']} twice")
        gt[a["question_id"]] = a
    q_ids = [q["question_id"] for q in qs]
    if set(q_ids) != set(gt) or len(q_ids) != len(gt):
        raise ValueError(
            f"VQA questions and annotations do not match: {len(q_ids)} questions vs {len(gt)} annotations; "
            f"questions without annotation: [{_id_list(set(q_ids) - set(gt))}]; "
            f"annotations without question: [{_id_list(set(gt) - set(q_ids))}]"
        )

    pred: dict[Any, str] = {}
    for i, r in enumerate(res):
        qid = r["question_id"]
        if "answer" not in r:
            raise KeyError(f"VQA result {i} (question {qid}) has no 'answer'")
        if not isinstance(r["answer"], str):
            raise TypeError(f"VQA result for question {qid} has a non-string answer {r['answer']!r}")
        if qid in pred:
            raise ValueError(f"VQA results answer question {qid} more than once")
        if qid not in gt:
            raise ValueError(f"VQA results answer question {qid}, which is not in the annotations")
        pred[qid] = r["answer"]
    missing = set(gt) - set(pred)
    if missing:
        raise ValueError(f"VQA results miss {len(missing)} annotated question(s): [{_id_list(missing)}]")

    per_question: dict[Any, float] = {}
    by_ans_type: dict[str, list[float]] = {}
    by_q_type: dict[str, list[float]] = {}
    for qid, ann in gt.items():
        answers = [d["answer"] for d in ann["answers"]]
        _check_answers(answers, f" of question {qid}")
        acc = answer_accuracy(pred[qid], answers)
        per_question[qid] = acc
        by_ans_type.setdefault(ann["answer_type"], []).append(acc)
        by_q_type.setdefault(ann["question_type"], []).append(acc)

    def pct(values: Sequence[float]) -> float:
        return round(100 * float(sum(values)) / len(values), n)

    return VQAResult(
        overall=pct(list(per_question.values())),
        per_answer_type={k: pct(v) for k, v in by_ans_type.items()},
        per_question_type={k: pct(v) for k, v in by_q_type.items()},
        per_question={k: round(100 * v, n) for k, v in per_question.items()},
    )


def write_vqa_results(path: str | Path, answers: Iterable[tuple[int, str]]) -> None:
    """Write ``[(question_id, answer)]`` as an official results file ``[{"question_id", "answer"}]``."""
    out, seen = [], set()
    for qid, ans in answers:
        if not isinstance(ans, str):
            raise TypeError(f"answer for question {qid} must be a string, got {ans!r}")
        if int(qid) in seen:
            raise ValueError(f"question {qid} is answered more than once")
        seen.add(int(qid))
        out.append({"question_id": int(qid), "answer": ans})
    with open(path, "w") as f:
        json.dump(out, f)
