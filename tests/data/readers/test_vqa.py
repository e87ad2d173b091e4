"""VQA v2 reader: the real first-100 sample checked against the official evaluator's per-question scores."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import pytest
import torch
from PIL import Image

from vlpkit.data.readers import BadImageError, DataFileError, VQADataset, build_answer_vocab
from vlpkit.data.readers.vqa import coco_image_name
from vlpkit.data.vocab import Vocab
from vlpkit.metrics.vqa import normalize_answer

OFFICIAL_SCORES = (0.0, 0.3, 0.6, 0.9, 1.0)


@pytest.fixture
def vqa(realdata):
    d = realdata / "vqa"
    return {"questions": d / "v2_OpenEnded_mscoco_val2014_questions_first100.json",
            "annotations": d / "v2_mscoco_val2014_annotations_first100.json", "dir": d}


def test_real_sample_counts(vqa, tmp_path):
    ds = VQADataset(vqa["questions"], vqa["annotations"], tmp_path)
    anns = [ds.annotation(i) for i in range(len(ds))]
    assert len(ds) == 100 and len({a["image_id"] for a in anns}) == 19
    assert Counter(a["answer_type"] for a in anns) == {"other": 43, "yes/no": 40, "number": 17}
    assert all(len(a["answers"]) == 10 for a in anns) and "answer_scores" not in anns[0]
    assert anns[0]["path"] == tmp_path / "COCO_val2014_000000262148.jpg"
    assert anns[0]["text"] == "Where is he looking?" and anns[0]["question_id"] == 262148000


@pytest.mark.parametrize("results", ["multiple_choice_answer", "first_annotator_answer", "all_yes"])
def test_answer_scores_reproduce_official_per_question_accuracy(vqa, tmp_path, results):
    """answer_scores[vocab[a]] must be the accuracy the official vqaEval.py gives to the answer a."""
    vocab = build_answer_vocab(vqa["annotations"], size=None, min_count=1, source="answers")
    ds = VQADataset(vqa["questions"], vqa["annotations"], tmp_path, answer_vocab=vocab)
    assert ds.num_answers_out_of_vocab == 0 and ds.num_questions_without_vocab_answer == 0
    derived = json.loads((vqa["dir"] / "derived_official_vqaEval_scores.json").read_text())
    official = derived["scores"][f"results_{results}_first100.json"]["evalQA"]
    predictions = json.loads((vqa["dir"] / f"results_{results}_first100.json").read_text())
    assert len(predictions) == 100
    pred = {p["question_id"]: p["answer"] for p in predictions}
    for i in range(len(ds)):
        ann = ds.annotation(i)
        scores = ann["answer_scores"]
        assert scores.shape == (len(vocab),) and scores.dtype == torch.float32
        assert all(any(abs(s - o) < 1e-6 for o in OFFICIAL_SCORES) for s in scores.tolist())
        j = vocab.get(normalize_answer(pred[ann["question_id"]]))
        ours = 0.0 if j is None else float(scores[j])
        assert round(100 * ours, 2) == pytest.approx(official[str(ann["question_id"])], abs=1e-6)


def test_answer_vocab_rules(vqa, tmp_path):
    anns = json.loads(vqa["annotations"].read_text())["annotations"]
    mc = Counter(normalize_answer(a["multiple_choice_answer"]) for a in anns)
    assert build_answer_vocab(vqa["annotations"]).tokens == ["yes", "no"]  # the >= 9 rule: yes 21, no 20
    top = build_answer_vocab(vqa["annotations"], size=5, min_count=1)
    assert top.tokens[:3] == ["yes", "no", "1"] and top.counts == sorted(mc.values(), reverse=True)[:5]
    assert "0" in build_answer_vocab(vqa["annotations"], size=None, min_count=1)  # "none" normalises to "0"
    twice = build_answer_vocab([vqa["annotations"], vqa["annotations"]], size=None, min_count=2)
    assert twice.counts == [2 * mc[t] for t in twice.tokens] and len(twice) == len(mc)
    with pytest.raises(ValueError, match="source='words'"):
        build_answer_vocab(vqa["annotations"], source="words")
    path = tmp_path / "answers.json"
    top.save(path)
    assert Vocab.load(path) == top and Vocab.load(path).counts == top.counts


def test_out_of_vocab_answers_are_counted(vqa, tmp_path):
    ds = VQADataset(vqa["questions"], vqa["annotations"], tmp_path, answer_vocab=Vocab(["yes", "no"]))
    anns = json.loads(vqa["annotations"].read_text())["annotations"]
    distinct = [{normalize_answer(x["answer"]) for x in a["answers"]} for a in anns]
    assert ds.num_answers_out_of_vocab == sum(len(d - {"yes", "no"}) for d in distinct)
    assert ds.num_questions_without_vocab_answer == sum(not (d & {"yes", "no"}) for d in distinct) > 0
    zero = [i for i in range(len(ds)) if not ({"yes", "no"} & set(ds.annotation(i)["normalized_answers"]))]
    assert all(ds.annotation(i)["answer_scores"].sum() == 0 for i in zero)


def test_dataset_pickles_for_dataloader_workers(vqa, tmp_path):
    ds = VQADataset(vqa["questions"], vqa["annotations"], tmp_path, answer_vocab=Vocab(["yes", "no"]))
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.annotation(3)["path"] == ds.annotation(3)["path"]
    assert torch.equal(clone.annotation(3)["answer_scores"], ds.annotation(3)["answer_scores"])


def test_questions_only_test_split(vqa, tmp_path):
    ds = VQADataset(vqa["questions"], None, tmp_path, answer_vocab=Vocab(["yes"]))
    ann = ds.annotation(5)
    assert set(ann) == {"image_id", "question_id", "text", "path"}
    assert coco_image_name("test-dev2015")(42) == "COCO_test2015_000000000042.jpg"
    assert coco_image_name("train2014")(1) == "COCO_train2014_000000000001.jpg"


# ---- tiny files: getitem, errors ---------------------------------------------------------------------------------
def tiny_vqa(tmp_path, questions=None, annotations=None, subtype="val2014"):
    q = {"data_subtype": subtype, "questions": questions or [
        {"image_id": 1, "question": "Is it red?", "question_id": 10},
        {"image_id": 2, "question": "How many?", "question_id": 20}]}
    a = {"annotations": annotations or [
        {"question_id": 20, "image_id": 2, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "2", "answers": [{"answer": a} for a in ["two"] * 2 + ["3"] * 8]},
        {"question_id": 10, "image_id": 1, "question_type": "is it", "answer_type": "yes/no",
         "multiple_choice_answer": "yes", "answers": [{"answer": "Yes"}] * 9 + [{"answer": "no"}]}]}
    (tmp_path / "q.json").write_text(json.dumps(q))
    (tmp_path / "a.json").write_text(json.dumps(a))
    return tmp_path / "q.json", tmp_path / "a.json"


def test_tiny_getitem(tmp_path):
    q, a = tiny_vqa(tmp_path)
    vocab = Vocab(["yes", "no", "2", "3"])
    Image.new("RGBA", (8, 6)).save(tmp_path / "COCO_val2014_000000000002.jpg", format="PNG")
    ds = VQADataset(q, a, tmp_path, answer_vocab=vocab)
    sample = ds[1]
    assert sample["question_id"] == 20 and sample["text"] == "How many?" and sample["image"].mode == "RGB"
    assert sample["target"] == {"image_id": 2, "orig_size": (6, 8)}
    assert sample["answer_scores"].tolist() == pytest.approx([0, 0, 0.6, 1.0])
    assert sample["answers"] == ["two"] * 2 + ["3"] * 8 and sample["answer_type"] == "number"
    assert ds.annotation(0)["answer_scores"].tolist() == pytest.approx([1.0, 0.3, 0, 0])  # "Yes" -> "yes"
    with pytest.raises(BadImageError, match="COCO_val2014_000000000001.jpg"):
        ds[0]
    skip = VQADataset(q, a, tmp_path, answer_vocab=vocab, on_bad_image="skip")
    with pytest.warns(UserWarning, match="skipping item 0"):
        assert skip[0]["question_id"] == 20
    named = VQADataset(q, a, tmp_path, image_name_fn=lambda i: f"COCO_val2014_{i:012d}.jpg" if i == 2 else "x")
    assert named.annotation(0)["path"] == tmp_path / "x"


def test_format_errors(tmp_path):
    q, a = tiny_vqa(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"VQA questions file .* not found: .*missing\.json"):
        VQADataset(tmp_path / "missing.json", a, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"VQA annotations file .* not found: .*missing\.json"):
        VQADataset(q, tmp_path / "missing.json", tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(DataFileError, match=r"bad\.json: the top level lacks key\(s\) \['questions'\]"):
        VQADataset(tmp_path / "bad.json", a, tmp_path)
    q, a = tiny_vqa(tmp_path, annotations=[{"question_id": 10, "image_id": 1, "answers": []}])
    with pytest.raises(DataFileError, match=r"annotations\[0\] lacks key\(s\) \['multiple_choice_answer'"):
        VQADataset(q, a, tmp_path)
    base = {"question_type": "x", "answer_type": "other", "multiple_choice_answer": "a", "answers": []}
    q, a = tiny_vqa(tmp_path, annotations=[{"question_id": 10, "image_id": 1, **base}])
    with pytest.raises(DataFileError, match=r"annotations\[0\] \(question_id 10\) has no answers"):
        VQADataset(q, a, tmp_path)
    base["answers"] = [{"answer": "a"}] * 10
    q, a = tiny_vqa(tmp_path, annotations=[{"question_id": 10, "image_id": 1, **{**base, "answers": [{"answer": 3}]}}])
    with pytest.raises(DataFileError, match=r"\['answers'\]\[0\]\['answer'\] should be a JSON str, got int"):
        VQADataset(q, a, tmp_path)
    q, a = tiny_vqa(tmp_path, annotations=[{"question_id": 10, "image_id": 1, **base}])
    with pytest.raises(DataFileError, match=r"do not match: 2 questions, 1 annotations; questions without "
                                            r"annotation \[20\]"):
        VQADataset(q, a, tmp_path)
    q, a = tiny_vqa(tmp_path, annotations=[{"question_id": 10, "image_id": 1, **base},
                                           {"question_id": 20, "image_id": 3, **base}])
    with pytest.raises(DataFileError, match="question_id 20: image_id 2 in .* but 3 in"):
        VQADataset(q, a, tmp_path)
    (tmp_path / "nosub.json").write_text(json.dumps({"questions": []}))
    with pytest.raises(DataFileError, match="no 'data_subtype'.*image_name_fn"):
        VQADataset(tmp_path / "nosub.json", None, tmp_path)
