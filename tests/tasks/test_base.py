"""What the tasks share: every task wrapper loads a pretraining run folder strictly and names its new head, one
recipe -> TrainerConfig mapping, typed outputs, and reloading a fine-tuned folder with its recorded recipe."""

from __future__ import annotations

import logging

import pytest
import torch

from vlpkit import build_e2evlp
from vlpkit.config import ConfigError
from vlpkit.data import save_tokenizer
from vlpkit.data.vocab import Vocab
from vlpkit.engine import TrainerConfig
from vlpkit.pretraining.shapes import prepare_shapes
from vlpkit.tasks import TaskOutput
from vlpkit.tasks.base import BACKBONE_PREFIX, load_finetuned, mean_by_group
from vlpkit.tasks.captioning import CaptioningConfig, CaptionModel
from vlpkit.tasks.detection import CLASS_HEAD, DetectionConfig, DetectionModel
from vlpkit.tasks.nlvr2 import NLVR2Config, NLVR2Model
from vlpkit.tasks.retrieval import RetrievalConfig, RetrievalModel
from vlpkit.tasks.vqa import VQAConfig, VQAModel

CONFIGS = [VQAConfig, NLVR2Config, CaptioningConfig, RetrievalConfig, DetectionConfig]
HEAD = ["head.classifier.bias", "head.classifier.weight", "head.dense.bias", "head.dense.weight", "head.norm.bias",
        "head.norm.weight"]
# task -> (wrapper from a checkpoint, the parameters it must report as new)
WRAPPERS = {
    "vqa": (lambda ckpt, tok: VQAModel.from_checkpoint(ckpt, Vocab(["yes", "no", "red"]), tok), HEAD),
    "nlvr2": (lambda ckpt, tok: NLVR2Model.from_checkpoint(ckpt, tok), HEAD),
    "caption": (lambda ckpt, tok: CaptionModel.from_checkpoint(ckpt, tok), []),  # the pretrained caption LM head
    "retrieval": (lambda ckpt, tok: RetrievalModel.from_checkpoint(ckpt, tok),
                  ["head.classifier.bias", "head.classifier.weight", "head.pooler.dense.bias",
                   "head.pooler.dense.weight"]),
    "detection": (lambda ckpt, tok: DetectionModel.from_checkpoint(ckpt, num_classes=3), sorted(CLASS_HEAD)),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return prepare_shapes(tmp_path_factory.mktemp("base") / "world", num_images=12, seed=2, vocab_size=120)


@pytest.fixture(scope="module")
def run(tmp_path_factory, setup):
    """A folder laid out as `vlpkit pretrain` writes it: <run>/model (E2EVLP.save_pretrained) and <run>/tokenizer;
    its detection head has the world's 6 classes."""
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("pretrain") / "run"
    model = build_e2evlp("e2evlp-tiny", **setup.model_overrides())
    model.save_pretrained(folder / "model")
    save_tokenizer(setup.tokenizer, folder / "tokenizer")
    return folder, model


@pytest.mark.parametrize("task", list(WRAPPERS))
def test_every_task_wrapper_loads_a_pretraining_run_and_names_its_new_head(task, run, setup, caplog):
    folder, pretrained = run
    build, new = WRAPPERS[task]
    with caplog.at_level(logging.WARNING, logger="vlpkit.tasks.base"):
        wrapper = build(folder, setup.tokenizer)  # the run folder: its model/ is found
    assert wrapper.new_parameters == new
    if new:
        assert f"{type(wrapper).__name__}: newly initialised parameters" in caplog.text
        assert all(name in caplog.text for name in new)
    else:
        assert "newly initialised" not in caplog.text
    # every pretrained weight is loaded as it was (detection: all but the re-sized class layer)
    loaded = wrapper.e2evlp.state_dict()
    for name, value in pretrained.state_dict().items():
        if f"e2evlp.{name}" not in new:
            assert torch.equal(loaded[name], value), name
    # the new parameters are really new: not in the checkpoint, or of another shape there
    state = wrapper.state_dict()
    for name in new:
        old = pretrained.state_dict().get(name.removeprefix("e2evlp."))
        assert old is None or old.shape != state[name].shape, name


def test_a_fine_tuned_folder_is_not_taken_for_a_pretraining_checkpoint(run, setup, tmp_path):
    folder, _ = run
    NLVR2Model.from_checkpoint(folder, setup.tokenizer).save_pretrained(tmp_path / "nlvr2")
    with pytest.raises(ValueError, match="holds a fine-tuned NLVR2Model, not a pretraining checkpoint"):
        VQAModel.from_checkpoint(tmp_path / "nlvr2", Vocab(["yes"]), setup.tokenizer)
    with pytest.raises(FileNotFoundError, match="holds no model"):
        CaptionModel.from_checkpoint(tmp_path, setup.tokenizer)


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_recipe_maps_to_the_trainer_config_and_names_unknown_fields(config_cls):
    config = config_cls()
    trainer = config.trainer_config("out", {"max_steps": 7}, num_workers=2)  # a mapping and keywords both apply
    assert (trainer.max_steps, trainer.num_workers, trainer.output_dir) == (7, 2, "out")
    assert trainer.backbone_prefix == BACKBONE_PREFIX and trainer.find_unused_parameters
    assert trainer == config.trainer.replace(output_dir="out", max_steps=7, num_workers=2)
    assert config_cls.from_dict(config.to_dict()) == config
    assert config.replace(trainer={"batch_size": 3}).trainer == config.trainer.replace(batch_size=3)
    assert config_cls(trainer={"batch_size": 3}).trainer == config_cls.default_trainer().replace(batch_size=3)
    with pytest.raises(ConfigError, match=r"unknown trainer config field\(s\) \['bogus'\]"):
        config_cls(trainer={"bogus": 1})
    with pytest.raises(ConfigError, match=rf"{config_cls.__name__}.trainer: expected a TrainerConfig or a dict"):
        config_cls(trainer=3)
    with pytest.raises(ConfigError, match=rf"unknown {config_cls.__name__} field\(s\) \['bogus'\]; valid fields"):
        config_cls.from_dict({"bogus": 1})


def test_task_output_is_typed_and_a_mapping():
    logits = torch.randn(2, 3)
    out = TaskOutput(logits=logits)
    assert out.logits is logits and out["logits"] is logits and out[0] is logits and list(out) == ["logits"]


def test_a_flat_recipe_of_an_earlier_folder_reads_its_trainer_fields(caplog):
    """task.json recipes written before recipes nested their TrainerConfig held its fields at the top level."""
    legacy = {"batch_size": 8, "lr": 3e-4, "epochs": 2, "lr_drop_epochs": [1], "seed": 5, "answer_min_count": 1}
    with caplog.at_level(logging.WARNING, logger="vlpkit.tasks.base"):
        config = VQAConfig.from_dict(legacy)
    assert isinstance(config.trainer, TrainerConfig) and config.answer_min_count == 1
    assert config.trainer == VQAConfig.default_trainer().replace(batch_size=8, lr=3e-4, epochs=2, lr_drop_epochs=[1],
                                                                 seed=5)
    assert "read as trainer." in caplog.text


def test_load_finetuned_reads_the_recorded_recipe(run, setup, tmp_path, caplog):
    folder, _ = run
    model = VQAModel.from_checkpoint(folder, Vocab(["yes", "no"]), setup.tokenizer, eval_size=64, max_size=96)
    recipe = VQAConfig(eval_batch_size=5, answer_min_count=1)
    model.save_pretrained(tmp_path / "run" / "model", recipe)  # a finetune_vqa output folder
    loaded, config = load_finetuned(VQAModel, VQAConfig, tmp_path / "run")
    assert config == recipe and not loaded.training and (loaded.eval_size, loaded.max_size) == (64, 96)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert load_finetuned(VQAModel, VQAConfig, tmp_path / "run", {"eval_batch_size": 9})[1] == \
        recipe.replace(eval_batch_size=9)
    with pytest.raises(ValueError, match="holds a VQAModel, not a NLVR2Model"):
        load_finetuned(NLVR2Model, NLVR2Config, tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="holds a pretrained E2EVLP"):
        load_finetuned(VQAModel, VQAConfig, folder)
    model.save_pretrained(tmp_path / "bare")  # no recipe: the defaults, with a warning
    with caplog.at_level(logging.WARNING, logger="vlpkit.tasks.base"):
        assert load_finetuned(VQAModel, VQAConfig, tmp_path / "bare")[1] == VQAConfig()
    assert "records no fine-tuning recipe" in caplog.text


def test_mean_by_group_sorts_groups_and_names_ungrouped_ids():
    values = {"a": 1.0, "b": 0.0, "c": 0.5, "d": 1.0}
    groups = {"a": "y", "b": "x", "c": "y", "d": "y", "unused": "z"}
    out = mean_by_group(values, groups, "split dev")
    assert list(out) == ["x", "y"]
    assert out["x"] == (0.0, 1) and out["y"] == (pytest.approx(2.5 / 3), 3)
    with pytest.raises(ValueError, match=r"split dev: 1 id\(s\) have no group, e.g. \['d'\]"):
        mean_by_group(values, {k: v for k, v in groups.items() if k != "d"}, "split dev")
