"""The task registry: every built-in task is found by its name and by its model class, another package's task by
registration or by an entry point, and the command line offers what the registry holds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass

import pytest

from vlpkit.cli import build_parser
from vlpkit.tasks import evaluate, finetune, registry
from vlpkit.tasks.captioning import CaptioningConfig, CaptionModel, finetune_captioning
from vlpkit.tasks.detection import DetectionConfig, DetectionModel, finetune_detection
from vlpkit.tasks.nlvr2 import NLVR2Config, NLVR2Model, finetune_nlvr2
from vlpkit.tasks.registry import Task, get_task, register_task, task_names, task_of_model
from vlpkit.tasks.retrieval import RetrievalConfig, RetrievalModel, finetune_retrieval
from vlpkit.tasks.vqa import VQAConfig, VQAModel, finetune_vqa

BUILTIN = {"vqa": (VQAConfig, VQAModel, finetune_vqa), "nlvr2": (NLVR2Config, NLVR2Model, finetune_nlvr2),
           "caption": (CaptioningConfig, CaptionModel, finetune_captioning),
           "retrieval": (RetrievalConfig, RetrievalModel, finetune_retrieval),
           "detection": (DetectionConfig, DetectionModel, finetune_detection)}


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test are forgotten after it."""
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    return registry


@dataclass
class ToyConfig:
    lr: float = 1e-4

    @classmethod
    def from_dict(cls, data):
        return cls(**data)


class ToyModel:
    pass


def _toy(name: str = "toy") -> Task:
    return Task(name=name, config_class=ToyConfig, model_class=ToyModel, finetune=lambda *a, **k: {"ran": a},
                evaluate=lambda *a, **k: {"split": "val"}, summary="a toy")


@pytest.mark.parametrize("name", list(BUILTIN))
def test_a_builtin_task_is_found_by_name_and_by_model_class(name):
    config_class, model_class, run = BUILTIN[name]
    task = get_task(name)
    assert (task.name, task.config_class, task.model_class, task.finetune) == (name, config_class, model_class, run)
    assert task.evaluate.__name__ == "evaluate_finetuned" and task.summary
    assert task_of_model(model_class.__name__) is task


def test_listing_the_names_imports_no_task_module():
    code = textwrap.dedent("""
        import sys
        from vlpkit.tasks.registry import task_names
        names = task_names()
        loaded = [m for m in sys.modules if m.startswith("vlpkit.tasks.") and m.split(".")[-1] in
                  ("vqa", "nlvr2", "captioning", "retrieval", "detection")]
        print(names, loaded)
        assert set(names) >= {"vqa", "nlvr2", "caption", "retrieval", "detection"} and not loaded
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_name_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'vqa2'; expected one of \[.*'detection'.*'vqa'\]"):
        get_task("vqa2")
    with pytest.raises(ValueError, match="unknown task 'vqa2'"):
        evaluate("vqa2", "anywhere")
    with pytest.raises(ValueError, match=r"no registered task has that model class.*'Nope'|'Nope'.*no registered"):
        task_of_model("Nope")


def test_a_registered_task_reaches_finetune_evaluate_and_the_command_line(scratch_registry, tmp_path):
    toy = register_task(_toy())
    assert get_task("toy") is toy and "toy" in task_names() and task_of_model("ToyModel") is toy
    # finetune builds the recipe from a dict and calls the task's own function
    seen = {}
    toy = register_task(Task(name="toy", config_class=ToyConfig, model_class=ToyModel,
                             finetune=lambda *a, **k: seen.update(args=a, **k) or {"ok": 1},
                             evaluate=lambda *a, **k: {"split": "val"}))
    assert finetune("toy", None, object(), tmp_path, {"lr": 0.5}) == {"ok": 1}
    assert seen["args"][0] is None and seen["args"][2] == tmp_path and seen["config"] == ToyConfig(lr=0.5)
    assert evaluate("toy", tmp_path, object()) == {"split": "val"}
    assert build_parser().parse_args(["finetune", "toy", "--output", str(tmp_path)]).task == "toy"


def test_a_name_taken_by_another_module_is_refused(scratch_registry):
    taken = Task(name="vqa", config_class=ToyConfig, model_class=ToyModel, finetune=print, evaluate=print)
    with pytest.raises(ValueError, match=r"task 'vqa' is already registered by vlpkit.tasks.vqa \(VQAModel\)"):
        get_task("vqa")  # (imported)
        register_task(taken)
    assert get_task("vqa").model_class is VQAModel


def test_an_entry_point_names_the_module_that_registers_a_task(scratch_registry, monkeypatch, tmp_path):
    (tmp_path / "toy_task_pkg.py").write_text(textwrap.dedent("""
        from vlpkit.tasks.registry import Task, register_task
        class ColourCountModel: pass
        TASK = register_task(Task(name="colour-count", config_class=dict, model_class=ColourCountModel,
                                  finetune=print, evaluate=print))
    """))
    (tmp_path / "silent_pkg.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points",
                        lambda: {"colour-count": "toy_task_pkg", "silent": "silent_pkg"})
    assert {"colour-count", "silent"} <= set(task_names())
    assert get_task("colour-count").model_class.__name__ == "ColourCountModel"
    with pytest.raises(ValueError, match=r"module silent_pkg is named for task 'silent' but does not register it"):
        get_task("silent")
    # a broken task module does not hide another task's model class, and is named when nothing matches
    with pytest.raises(ValueError, match=r"tasks that failed to load: \[.silent: ValueError: module silent_pkg"):
        task_of_model("Missing")
    assert task_of_model("VQAModel").name == "vqa"
