"""NLVR2 accuracy / consistency on the real dev sample, against the official metrics.py numbers."""

from __future__ import annotations

import pytest

from vlpkit.metrics.nlvr2 import (
    consistency_key,
    evaluate_nlvr2,
    evaluate_nlvr2_files,
    load_nlvr2_labels,
    load_nlvr2_predictions,
    write_nlvr2_predictions,
)

DEV = "nlvr2/dev_first303.jsonl"
PRED = "nlvr2/pred_all_true_dev_first303.csv"


def test_all_true_official_numbers(realdata):
    r = evaluate_nlvr2_files(realdata / DEV, realdata / PRED)
    assert r.accuracy == 0.5181518151815182
    assert r.consistency == 0.03409090909090909
    assert (r.num_examples, r.num_groups) == (303, 88)


def test_oracle_and_flipped_predictions(realdata, tmp_path):
    labels = load_nlvr2_labels(realdata / DEV)
    oracle = {k: v.lower() == "true" for k, v in labels.items()}  # bools, written as True/False
    path = tmp_path / "pred.csv"
    write_nlvr2_predictions(path, oracle)
    assert path.read_text().splitlines()[0] == "dev-850-0-0,False"
    r = evaluate_nlvr2_files(realdata / DEV, path)
    assert (r.accuracy, r.consistency) == (1.0, 1.0)
    # Lower-case predictions compare equal (case-insensitive, as the official script).
    lower = evaluate_nlvr2(labels, {k: str(v).lower() for k, v in oracle.items()})
    assert lower.accuracy == 1.0
    # One wrong prediction breaks exactly its group.
    first = next(iter(labels))
    flipped = dict(oracle, **{first: not oracle[first]})
    r = evaluate_nlvr2(labels, flipped)
    assert r.accuracy == pytest.approx(302 / 303)
    assert r.consistency == pytest.approx(87 / 88)


def test_consistency_key():
    assert consistency_key("dev-850-0-0") == "dev-850--0"
    assert consistency_key("test1-12-3-1") == "test1-12--1"
    with pytest.raises(ValueError, match="split-setid-pairid-sentenceid"):
        consistency_key("dev-850-0")


def test_bad_inputs(realdata, tmp_path):
    labels = load_nlvr2_labels(realdata / DEV)
    preds = load_nlvr2_predictions(realdata / PRED)
    some = dict(list(preds.items())[1:])
    with pytest.raises(ValueError, match=r"1 NLVR2 example\(s\) have no prediction, e.g. \['dev-850-0-0'\]"):
        evaluate_nlvr2(labels, some)
    with pytest.raises(ValueError, match="unlabelled identifiers, e.g. \\['dev-1-0-0'\\]"):
        evaluate_nlvr2(labels, {**preds, "dev-1-0-0": "True"})
    bad = tmp_path / "bad.csv"
    bad.write_text("dev-850-0-0,True\ndev-850-0-0,False\n")
    with pytest.raises(ValueError, match="bad.csv:2: identifier dev-850-0-0 is predicted twice"):
        load_nlvr2_predictions(bad)
    bad.write_text("dev-850-0-0 True\n")
    with pytest.raises(ValueError, match="bad.csv:1: expected 'identifier,prediction'"):
        load_nlvr2_predictions(bad)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_nlvr2_labels(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="must be True/False"):
        write_nlvr2_predictions(tmp_path / "p.csv", {"dev-1-0-0": "maybe"})
