"""`vlpkit demo` (the main job of `make demo`) runs end to end: pretrain, evaluate, table, figure, checkpoint."""

import json

import pytest
import torch

from vlpkit import E2EVLP
from vlpkit.demo import run_demo


def test_demo_runs_end_to_end(tmp_path, capsys):
    overrides = [f"trainer.output_dir={tmp_path / 'run'}", "trainer.max_steps=2", "trainer.batch_size=4",
                 "trainer.progress_bar=false", f"data.shapes.root={tmp_path / 'world'}", "data.shapes.num_images=40",
                 "warmup.steps=2", "warmup.batch_size=4"]
    summary = run_demo("e2evlp-tiny", overrides, max_eval_images=6, figure_images=4)
    out = capsys.readouterr().out
    for name in ("detection AP50", "caption CIDEr", "ITM accuracy", "ITM ranking", "MLM accuracy",
                 "grounding probe"):
        assert name in out and name in summary["metrics"]
        assert -1.0 <= summary["metrics"][name]["model"] <= 10.0
    assert summary["metrics"]["ITM accuracy"]["baseline"] == 0.5
    probe = summary["grounding_probe"]
    assert probe["rows"] > 0
    assert summary["metrics"]["grounding probe"]["model"] == pytest.approx(probe["right_image"] - probe["other_image"])
    run = tmp_path / "run"
    assert (run / "demo_predictions.png").stat().st_size > 1000
    assert json.loads((run / "demo_metrics.json").read_text())["metrics"].keys() == summary["metrics"].keys()
    assert E2EVLP.from_pretrained(run / "model").config.num_classes == 6
    assert (run / "labels.json").is_file() and (run / "tokenizer").is_dir()
    # the warm-up's trunk is what pretraining started from, and is cached beside the world
    weights = json.loads((run / "pretrain_config.json").read_text())["model"]["overrides"]["backbone_weights"]
    assert weights.startswith(str(tmp_path / "world")) and weights.endswith(".safetensors")
    assert "trunk warm-up" in out
    # a second demo in the same folder re-evaluates the finished run instead of ending in a traceback
    before = E2EVLP.from_pretrained(run / "model").state_dict()
    again = run_demo("e2evlp-tiny", overrides, max_eval_images=6, figure_images=4)
    assert "resumed from" in capsys.readouterr().out
    after = E2EVLP.from_pretrained(run / "model").state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert again["metrics"]["detection AP50"] == pytest.approx(summary["metrics"]["detection AP50"])
