"""VQA v2: official question and annotation files, the answer vocabulary, and soft answer scores.

Files: `v2_OpenEnded_mscoco_<subtype>_questions.json` (`{"data_subtype", "questions": [{image_id, question,
question_id}]}`) and, except for the test splits, `v2_mscoco_<subtype>_annotations.json` (`{"annotations":
[{question_id, image_id, question_type, answer_type, multiple_choice_answer, answers: [10 x {answer, ...}]}]}`).

Choices:

* Answers are normalised with the official evaluation's `normalize_answer` (processPunctuation +
  processDigitArticle, from `vlpkit.metrics.vqa`) after its `\\n`/`\\t` clean-up.
* `answer_scores[j]` is the official leave-one-out accuracy (`soft_scores`: 0, 0.3, 0.6, 0.9 or 1 for 0..4+
  matching annotators) of answering `vocab[j]`, computed on the normalised answers. The official evaluator skips
  normalisation when all 10 raw answers are identical; for training targets we always normalise, as
  bottom-up-attention-vqa does, so ten "Yes" answers give "yes" a score of 1.
* `build_answer_vocab` follows bottom-up-attention-vqa: the normalised `multiple_choice_answer`, counted once
  per question, kept when seen at least `min_count=9` times; on VQA v2 train+val this gives the usual 3129
  answers. `source="answers"` counts every distinct normalised human answer of a question instead.
* Questions whose answers are all outside the vocabulary keep an all-zero target (they still train the model
  to lower every score, and dropping them would change the dataset); they are counted in
  `num_questions_without_vocab_answer`, and the dropped (question, answer) pairs in `num_answers_out_of_vocab`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch

from ...metrics.vqa import clean_whitespace, normalize_answer, soft_scores
from ..vocab import Vocab, as_vocab
from .images import (
    DataFileError,
    ImageReader,
    Transforms,
    load_rgb,
    read_json,
    require_int,
    require_keys,
    require_type,
    require_unique,
)

QUESTIONS = "VQA questions file (v2_OpenEnded_mscoco_*_questions.json: {'questions': [...]})"
ANNOTATIONS = "VQA annotations file (v2_mscoco_*_annotations.json: {'annotations': [...]})"
_ANN_KEYS = ("question_id", "image_id", "answers", "multiple_choice_answer", "answer_type", "question_type")


def _coco_name(folder: str, image_id: int) -> str:
    return f"COCO_{folder}_{int(image_id):012d}.jpg"


def coco_image_name(subtype: str) -> Callable[[int], str]:
    """`image_id -> "COCO_<subtype>_<id:012d>.jpg"`; test-dev2015 questions use the test2015 images.

    A `partial`, not a lambda, so the dataset pickles into DataLoader worker processes.
    """
    return partial(_coco_name, "test2015" if subtype == "test-dev2015" else subtype)


def _load_questions(path: str | Path) -> dict:
    data = read_json(path, QUESTIONS)
    require_keys(data, ("questions",), "the top level", path)
    require_type(data["questions"], list, "'questions'", path)
    for i, q in enumerate(data["questions"]):
        require_keys(q, ("question_id", "image_id", "question"), f"questions[{i}]", path)
        for key in ("question_id", "image_id"):
            require_int(q[key], f"questions[{i}]['{key}']", path)
        require_type(q["question"], str, f"questions[{i}]['question']", path)
    require_unique(((f"questions[{i}]", q["question_id"]) for i, q in enumerate(data["questions"])),
                   "question_id", path)
    if "data_subtype" in data:
        require_type(data["data_subtype"], str, "'data_subtype'", path)
    return data


def _load_annotations(path: str | Path) -> list[dict]:
    data = read_json(path, ANNOTATIONS)
    require_keys(data, ("annotations",), "the top level", path)
    require_type(data["annotations"], list, "'annotations'", path)
    first: dict[int, int] = {}  # question_id -> index of its annotation
    for i, a in enumerate(data["annotations"]):
        require_keys(a, _ANN_KEYS, f"annotations[{i}]", path)
        for key in ("question_id", "image_id"):
            require_int(a[key], f"annotations[{i}]['{key}']", path)
        for key in ("multiple_choice_answer", "answer_type", "question_type"):
            require_type(a[key], str, f"annotations[{i}]['{key}']", path)
        if a["question_id"] in first:
            raise DataFileError(f"{path}: question_id {a['question_id']} is annotated twice "
                                f"(annotations[{first[a['question_id']]}] and annotations[{i}])")
        first[a["question_id"]] = i
        require_type(a["answers"], list, f"annotations[{i}]['answers']", path)
        if not a["answers"]:
            raise DataFileError(f"{path}: annotations[{i}] (question_id {a['question_id']}) has no answers")
        for j, ans in enumerate(a["answers"]):
            require_keys(ans, ("answer",), f"annotations[{i}]['answers'][{j}]", path)
            require_type(ans["answer"], str, f"annotations[{i}]['answers'][{j}]['answer']", path)
    return data["annotations"]


class _Normalizer:
    """`normalize_answer(clean_whitespace(.))`, memoised: VQA repeats a few thousand answers millions of times."""

    def __init__(self):
        self.cache: dict[str, str] = {}

    def __call__(self, answer: str) -> str:
        out = self.cache.get(answer)
        if out is None:
            out = self.cache[answer] = normalize_answer(clean_whitespace(answer))
        return out


def build_answer_vocab(annotations_json: str | Path | Sequence[str | Path], size: int | None = 3129,
                       min_count: int = 9, source: str = "multiple_choice_answer") -> Vocab:
    """The answer vocabulary: normalised answers seen in >= `min_count` questions, most frequent first, cut to `size`.

    Args:
        annotations_json: one annotations file or several (e.g. train2014 and val2014).
        source: `"multiple_choice_answer"` (one answer per question, common practice) or `"answers"` (each
            distinct answer of the 10 human answers of a question counts once).
    """
    if source not in ("multiple_choice_answer", "answers"):
        raise ValueError(f"source={source!r}; expected 'multiple_choice_answer' or 'answers'")
    paths = [annotations_json] if isinstance(annotations_json, (str, Path)) else list(annotations_json)
    norm, counts = _Normalizer(), Counter()
    for path in paths:
        for ann in _load_annotations(path):
            if source == "multiple_choice_answer":
                counts[norm(ann["multiple_choice_answer"])] += 1
            else:
                counts.update({norm(a["answer"]) for a in ann["answers"]})
    counts.pop("", None)  # an answer made only of punctuation/articles normalises to nothing
    return Vocab.from_counts(counts, size, min_count,
                             name=f"vqa answers: {source} in >= {min_count} questions, top {size}")


class VQADataset(ImageReader):
    """VQA v2 questions (with answers and soft scores when annotations are given).

    Args:
        questions_json: the questions file.
        annotations_json: the matching annotations file, or None (test splits).
        image_root: the folder of the COCO images (e.g. `val2014/`).
        answer_vocab: a `Vocab` (or path) of normalised answers; needed for `answer_scores`.
        image_name_fn: `image_id -> file name`; by default `COCO_<data_subtype>_<id:012d>.jpg`.

    Sample: `{"image", "image_id", "question_id", "text": question, "target": {"image_id", "orig_size"}}` plus,
    with annotations, `"answers": list[str]` (the raw human answers), `"answer_type"`, `"question_type"` and,
    with a vocabulary, `"answer_scores": FloatTensor [len(answer_vocab)]`.
    """

    def __init__(self, questions_json: str | Path, annotations_json: str | Path | None, image_root: str | Path,
                 answer_vocab: Vocab | str | Path | None = None, image_name_fn: Callable[[int], str] | None = None,
                 *, transforms: Transforms | None = None, on_bad_image: str = "raise"):
        super().__init__(image_root, transforms, on_bad_image)
        questions = _load_questions(questions_json)
        if image_name_fn is None:
            if "data_subtype" not in questions:
                raise DataFileError(f"{questions_json} has no 'data_subtype' to name the COCO images; "
                                    "pass image_name_fn=lambda image_id: ...")
            image_name_fn = coco_image_name(questions["data_subtype"])
        self.image_name_fn = image_name_fn
        self._questions = questions["questions"]
        self.answer_vocab = None if answer_vocab is None else as_vocab(answer_vocab, "answer_vocab")
        self._annotations: list[dict] | None = None
        self._normalized: list[list[str]] = []
        self.num_answers_out_of_vocab = 0
        self.num_questions_without_vocab_answer = 0
        if annotations_json is not None:
            self._match_annotations(_load_annotations(annotations_json), questions_json, annotations_json)

    def _match_annotations(self, anns: list[dict], q_path, a_path) -> None:
        by_qid = {a["question_id"]: a for a in anns}  # unique: checked by _load_annotations
        q_ids = [q["question_id"] for q in self._questions]
        if set(q_ids) != set(by_qid) or len(q_ids) != len(by_qid):
            extra_q, extra_a = sorted(set(q_ids) - set(by_qid)), sorted(set(by_qid) - set(q_ids))
            raise DataFileError(f"{q_path} and {a_path} do not match: {len(q_ids)} questions, {len(by_qid)} "
                                f"annotations; questions without annotation {extra_q[:5]}, annotations without "
                                f"question {extra_a[:5]}")
        self._annotations = [by_qid[qid] for qid in q_ids]
        norm = _Normalizer()
        for q, a in zip(self._questions, self._annotations):
            if q["image_id"] != a["image_id"]:
                raise DataFileError(f"question_id {q['question_id']}: image_id {q['image_id']} in {q_path} but "
                                    f"{a['image_id']} in {a_path}")
            self._normalized.append([norm(x["answer"]) for x in a["answers"]])
        if self.answer_vocab is not None:
            for answers in self._normalized:
                missing = sum(ans not in self.answer_vocab for ans in set(answers))
                self.num_answers_out_of_vocab += missing
                self.num_questions_without_vocab_answer += missing == len(set(answers))

    def __len__(self) -> int:
        return len(self._questions)

    def annotation(self, index: int) -> dict:
        """`image_id`, `question_id`, `path`, `text` and, with annotations, `answers`, `normalized_answers`,
        `soft_scores` (dict answer -> score), `multiple_choice_answer`, `answer_type`, `question_type` and,
        with a vocabulary, `answer_scores`."""
        index = self._check_index(index)
        q = self._questions[index]
        out = {"image_id": q["image_id"], "question_id": q["question_id"], "text": q["question"],
               "path": self.image_root / self.image_name_fn(q["image_id"])}
        if self._annotations is None:
            return out
        a = self._annotations[index]
        scores = soft_scores(self._normalized[index])
        out.update(answers=[x["answer"] for x in a["answers"]], normalized_answers=list(self._normalized[index]),
                   soft_scores=scores, multiple_choice_answer=a["multiple_choice_answer"],
                   answer_type=a["answer_type"], question_type=a["question_type"])
        if self.answer_vocab is not None:
            dense = torch.zeros(len(self.answer_vocab))
            for answer, score in scores.items():
                j = self.answer_vocab.get(answer)
                if j is not None:
                    dense[j] = max(float(dense[j]), score)  # two aliases of one entry: keep the better
            out["answer_scores"] = dense
        return out

    def _image_paths(self, index: int) -> list[Path]:
        q = self._questions[self._check_index(index)]
        return [self.image_root / self.image_name_fn(q["image_id"])]

    def _load(self, index: int) -> dict:
        ann = self.annotation(index)
        image = load_rgb(ann["path"])
        target = {"image_id": ann["image_id"], "orig_size": (image.height, image.width)}
        image, target, text = self._apply_transforms(image, target, ann["text"])
        sample = {"image": image, "image_id": ann["image_id"], "question_id": ann["question_id"], "text": text,
                  "target": target}
        for key in ("answers", "answer_type", "question_type", "answer_scores"):
            if key in ann:
                sample[key] = ann[key]
        return sample
