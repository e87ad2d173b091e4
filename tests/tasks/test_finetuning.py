"""The one fine-tuning result: its summary of the training history and its metrics.json round trip (the loop
itself runs in every task's fine-tuning test)."""

from __future__ import annotations

import json
import math

import pytest

from vlpkit.tasks import FinetuneResult, TrainSummary


def test_train_summary_takes_the_first_and_last_finite_loss():
    history = [{"loss": math.nan}, {"loss": 2.0}, {"loss": 1.5}, {"loss": math.inf}, {"lr": 1e-4}]
    assert TrainSummary.of(history) == TrainSummary(5, 2.0, 1.5)
    assert TrainSummary.of([]) == TrainSummary(0, None, None)


def test_result_round_trips_through_metrics_json(tmp_path):
    result = FinetuneResult("vqa", str(tmp_path), {"lr": 1e-4}, TrainSummary(3, 2.0, 1.0),
                            {"val": {"accuracy": 51.5, "num_questions": 10}}, {"answer_vocab_size": 7},
                            history=[{"loss": 2.0}])
    (tmp_path / "metrics.json").write_text(json.dumps(result.to_dict()))
    loaded = FinetuneResult.load(tmp_path)
    assert loaded.to_dict() == result.to_dict() and loaded.history == []
    assert loaded.model_dir == tmp_path / "model"


def test_load_names_an_unfinished_run_and_an_older_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a finished fine-tuning run"):
        FinetuneResult.load(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps({"task": "vqa", "metrics": {}, "train_steps": 3}))
    with pytest.raises(ValueError, match=r"lacks \['config', 'info', 'output_dir', 'train'\].*older vlpkit"):
        FinetuneResult.load(tmp_path)
