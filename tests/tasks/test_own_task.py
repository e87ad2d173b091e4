"""docs/tasks/own_task.md: its worked example, the toy "object-count" task module exactly as the page prints it,
registers, fine-tunes through `run_finetune`, saves a folder that loads, and evaluates by name to the same
metrics; the registry forgets it afterwards."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from vlpkit.data.shapes.scene import SceneConfig
from vlpkit.pretraining.shapes import prepare_shapes
from vlpkit.tasks import FinetuneResult, evaluate, finetune, registry

PAGE = Path(__file__).resolve().parents[2] / "docs" / "tasks" / "own_task.md"


def page_module() -> str:
    text = PAGE.read_text()
    found = re.search(r"<!-- own-task-module -->\n```python\n(.*?)```", text, re.S)
    assert found, f"{PAGE} lost its <!-- own-task-module --> code block"
    return found.group(1)


@pytest.fixture
def object_count(tmp_path, monkeypatch):
    """The page's module, imported from a file as a user would (the registration undone after the test)."""
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    path = tmp_path / "object_count.py"
    path.write_text(page_module())
    spec = importlib.util.spec_from_file_location("object_count", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "object_count", module)
    spec.loader.exec_module(module)
    return module


def test_the_page_module_fine_tunes_saves_and_evaluates_by_name(object_count, tmp_path):
    assert registry.get_task("object-count") is object_count.TASK and "object-count" in registry.task_names()
    setup = prepare_shapes(tmp_path / "world", num_images=40, seed=5, scene=SceneConfig(image_size=64),
                           nlvr2_sets=0)
    torch.manual_seed(0)
    recipe = {"trainer": {"batch_size": 8, "lr": 1e-3}, "image_size": 64}
    result = finetune("object-count", None, setup, tmp_path / "run", recipe,
                      {"max_steps": 4, "progress_bar": False, "save_every": 0, "log_every": 1})
    assert isinstance(result, FinetuneResult) and result.task == "object-count" and result.train.steps == 4
    val = json.loads(setup.world.instances("val").read_text())
    assert result.metrics["val"]["num_images"] == len(val["images"]) > 0
    assert 0.0 <= result.metrics["val"]["accuracy"] <= 100.0
    assert FinetuneResult.load(tmp_path / "run").metrics == result.metrics
    record = json.loads((tmp_path / "run" / "model" / "task.json").read_text())
    assert record["task"] == "object-count" and record["arguments"] == {"max_count": 8, "image_size": 64}
    assert record["recipe"]["trainer"]["lr"] == 1e-3 and record["recipe"]["trainer"]["batch_size"] == 8
    again = evaluate("object-count", tmp_path / "run", setup, "val")
    assert again == {"split": "val", **result.metrics["val"]}
    # the loss is the task's: cross-entropy over 9 counts starts near log 9 for a fresh head
    first = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert first["kind"] == "train" and 0.5 < first["loss"] < 5.0
