"""One task-model folder format: `task.json` beside the E2EVLP files, written and read by `TaskModel` for every
task; folders of the earlier per-task layout still load; a folder of another task or a pretraining checkpoint is
refused with what it holds named."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vlpkit import build_e2evlp
from vlpkit.data.vocab import Vocab
from vlpkit.tasks.captioning import CaptioningConfig, CaptionModel
from vlpkit.tasks.detection import DetectionConfig, DetectionModel
from vlpkit.tasks.nlvr2 import NLVR2Config, NLVR2Model
from vlpkit.tasks.registry import get_task
from vlpkit.tasks.retrieval import RetrievalConfig, RetrievalModel
from vlpkit.tasks.vqa import VQAConfig, VQAModel

TINY = dict(num_encoder_layers=1, num_decoder_layers=1, vocab_size=40, num_classes=4, num_attributes=3)


TASKS = ("vqa", "nlvr2", "caption", "retrieval", "detection")


@pytest.fixture(scope="module")
def models():
    """(model, recipe, the files the earlier layout wrote instead of task.json) per task."""
    torch.manual_seed(0)
    e2evlp = lambda: build_e2evlp("e2evlp-tiny", **TINY)  # noqa: E731
    vqa = VQAModel(e2evlp(), Vocab(["yes", "no", "red"]), None, 3, 96, 128)
    nlvr2 = NLVR2Model(e2evlp(), None, 80, 100)
    caption = CaptionModel(e2evlp(), None, 72, 90)
    retrieval = RetrievalModel(e2evlp(), None, "random", 64, 96, 24)
    detection = DetectionModel(e2evlp(), paired_text=False)
    vqa_recipe, nlvr2_recipe = VQAConfig(trainer={"lr": 3e-4}), NLVR2Config(trainer={"lr": 2e-4})
    caption_recipe = CaptioningConfig(eval_size=72, max_size=90)
    retrieval_recipe = RetrievalConfig(eval_size=64, max_size=96, max_text_length=24)
    detection_recipe = DetectionConfig(paired_text=False)
    return {
        "vqa": (vqa, vqa_recipe, {"vqa_task.json": {"task": "vqa", "hidden_multiplier": 3, "eval_size": 96,
                                                     "max_size": 128}, "vqa_config.json": vqa_recipe.to_dict()}),
        "nlvr2": (nlvr2, nlvr2_recipe, {"nlvr2_task.json": {"task": "nlvr2", "eval_size": 80, "max_size": 100},
                                        "nlvr2_config.json": nlvr2_recipe.to_dict()}),
        "caption": (caption, caption_recipe, {"captioning_config.json": caption_recipe.to_dict()}),
        "retrieval": (retrieval, retrieval_recipe, {"retrieval_config.json": retrieval_recipe.to_dict()}),
        "detection": (detection, detection_recipe,
                      {"detection_config.json": {**detection_recipe.to_dict(), "paired_text": False}}),
    }



def _same(a, b):
    assert type(a) is type(b) and a.arguments() == b.arguments()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)


def test_the_fixture_covers_every_builtin_task(models):
    assert set(models) == set(TASKS) == {get_task(t).name for t in TASKS}
    assert all(get_task(t).model_class is type(models[t][0]) for t in TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_writes_task_json_and_reads_it_back(task, models, tmp_path):
    model, recipe, _ = models[task]
    model.save_pretrained(tmp_path, recipe)
    record = json.loads((tmp_path / "task.json").read_text())
    assert record == {"task": task, "model_class": type(model).__name__, "arguments": model.arguments(),
                      "recipe": recipe.to_dict()}
    assert get_task(record["task"]).model_class is type(model)
    _same(type(model).from_pretrained(tmp_path), model)
    assert type(model).load_recipe(tmp_path, type(recipe)) == recipe


@pytest.mark.parametrize("task", TASKS)
def test_a_folder_of_the_earlier_layout_still_loads(task, models, tmp_path):
    model, recipe, legacy = models[task]
    model.save_pretrained(tmp_path, recipe)
    (tmp_path / "task.json").unlink()
    for name, content in legacy.items():
        (tmp_path / name).write_text(json.dumps(content))
    _same(type(model).from_pretrained(tmp_path), model)
    assert type(model).load_recipe(tmp_path, type(recipe)) == recipe


def test_saved_arguments_can_be_replaced_at_load_time(models, tmp_path):
    model, recipe, _ = models["caption"]
    model.save_pretrained(tmp_path, recipe)
    loaded = CaptionModel.from_pretrained(tmp_path, eval_size=48, max_size=None)  # None keeps the saved value
    assert (loaded.eval_size, loaded.max_size) == (48, 90)


def test_a_folder_of_another_task_is_refused_naming_both(models, tmp_path):
    model, recipe, legacy = models["vqa"]
    model.save_pretrained(tmp_path / "new", recipe)
    with pytest.raises(ValueError, match=r"holds a VQAModel, not a NLVR2Model: load it with VQAModel.from_pretrained"):
        NLVR2Model.from_pretrained(tmp_path / "new")
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    (tmp_path / "old" / "task.json").unlink()
    with pytest.raises(ValueError, match="holds a VQAModel, not a CaptionModel"):
        CaptionModel.from_pretrained(tmp_path / "old")


def test_a_pretraining_checkpoint_or_an_empty_folder_is_named(tmp_path):
    build_e2evlp("e2evlp-tiny", **TINY).save_pretrained(tmp_path / "pretrained")
    with pytest.raises(FileNotFoundError, match="holds a pretrained E2EVLP.*VQAModel.from_checkpoint"):
        VQAModel.from_pretrained(tmp_path / "pretrained")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is not a task-model folder"):
        DetectionModel.from_pretrained(tmp_path / "empty")


def test_an_earlier_vqa_folder_without_its_arguments_file_is_named(models, tmp_path):
    model, recipe, _ = models["vqa"]
    model.save_pretrained(tmp_path, recipe)
    (tmp_path / "task.json").unlink()
    with pytest.raises(FileNotFoundError, match="VQAModel weights but neither task.json nor vqa_task.json"):
        VQAModel.from_pretrained(tmp_path)
