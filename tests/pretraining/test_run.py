import pytest

from vlpkit.config import E2EVLPConfig
from vlpkit.engine import TrainerConfig
from vlpkit.presets import PRESETS
from vlpkit.pretraining.objective import PAPER_TASKS, ObjectiveConfig
from vlpkit.pretraining.run import CONFIG_DIR, load_config


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    cfg = load_config(name)
    trainer = TrainerConfig.from_dict(cfg["trainer"])
    ObjectiveConfig.from_dict(cfg["objective"])
    if "init_from" in cfg["model"]:  # a further stage: the architecture comes from the checkpoint
        assert set(cfg["model"]) <= {"init_from", "frozen_trunk", "trunk_cache_megabytes"}
        return
    assert cfg["model"]["preset"] in PRESETS
    E2EVLPConfig.from_dict({**PRESETS[cfg["model"]["preset"]], **cfg["model"].get("overrides", {})})
    if name != "e2evlp-tiny":  # the paper's recipe: batch 32, scales 480-800 / 1333, max text 40
        assert trainer.batch_size == 32 and trainer.lr == 1e-4 and trainer.backbone_lr == 1e-5
        assert cfg["data"]["image"]["train_scales"] == list(range(480, 801, 32))
        assert cfg["data"]["image"]["max_size"] == 1333


def test_every_paper_preset_has_a_config():
    shipped = {p.stem for p in CONFIG_DIR.glob("*.yaml")}
    assert set(PRESETS) <= shipped


def test_overrides_apply_and_errors_are_named(tmp_path):
    cfg = load_config("e2evlp-tiny", ["trainer.max_steps=5", "data.shapes.num_images=50",
                                      "objective.tasks=[mlm, itm]"])
    assert cfg["trainer"]["max_steps"] == 5 and cfg["data"]["shapes"]["num_images"] == 50
    assert cfg["objective"]["tasks"] == ["mlm", "itm"]
    with pytest.raises(ValueError, match="not key=value"):
        load_config("e2evlp-tiny", ["trainer.max_steps"])
    with pytest.raises(ValueError, match="must start with one of"):
        load_config("e2evlp-tiny", ["max_steps=3"])
    with pytest.raises(FileNotFoundError, match="shipped configs: .*e2evlp-6-r50"):
        load_config("no-such-config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {preset: e2evlp-tiny}\noptimiser: {}\n")
    with pytest.raises(ValueError, match="unknown section.*optimiser"):
        load_config(bad)


def test_file_sources_share_one_class_space(shapes_setup, tmp_path):
    """`data.kind: files` (the real-data path) on the shapes world's official files: COCO categories are mapped
    into the VG object vocabulary, so one label means one class in both sources."""
    from vlpkit.data.vocab import Vocab
    from vlpkit.pretraining.run import build_data

    from .conftest import files_data_section

    objects = Vocab(["star", "hexagon", "circle", "square", "triangle", "diamond", "tree"])  # another order
    data = files_data_section(shapes_setup, tmp_path, objects)
    sources, tokenizer, overrides, labels = build_data(data)
    assert overrides["num_classes"] == 7 and labels[0] == objects.tokens
    coco, vg = (s.dataset for s in sources)
    by_image = {vg.annotation(i)["image_id"]: vg.annotation(i)["target"] for i in range(len(vg))}
    for i in range(len(coco)):
        ann = coco.detection.annotation(i)
        vg_labels = by_image[ann["image_id"]]["labels"]
        assert sorted(ann["target"]["labels"].tolist()) == sorted(vg_labels.tolist())


def test_periodic_validation_logs_every_term(shapes_setup, tmp_path):
    from vlpkit.engine.logging import read_log
    from vlpkit.pretraining.run import pretrain

    cfg = load_config("e2evlp-tiny", [f"trainer.output_dir={tmp_path / 'run'}", "trainer.max_steps=4",
                                      "trainer.batch_size=4", "trainer.eval_every=2", "trainer.progress_bar=false",
                                      "trainer.save_every=0", f"data.shapes.root={shapes_setup.world.root}",
                                      "data.shapes.num_images=40", "data.shapes.seed=3", "data.shapes.vocab_size=200",
                                      "data.val_batches=1", "data.image.train_scales=[64]",
                                      "data.image.max_size=80", "data.image.eval_size=64"])
    pretrain(cfg)
    evals = read_log(tmp_path / "run" / "log.jsonl", kind="eval")
    assert [e["step"] for e in evals] == [2, 4]
    for key in ("val/loss", "val/mlm", "val/itm", "val/detection", "val/caption", "val/det/loss_attr"):
        assert all(key in e and e[key] == e[key] for e in evals), key


def test_validation_losses_see_the_same_batches(shapes_setup):
    from vlpkit.builder import build_e2evlp
    from vlpkit.pretraining.data import PretrainingCollator, PretrainingDataset
    from vlpkit.pretraining.objective import PretrainingObjective
    from vlpkit.pretraining.run import image_transforms, validation_losses
    from vlpkit.pretraining.shapes import shapes_sources

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-tiny", **shapes_setup.model_overrides()).eval()
    objective = PretrainingObjective(ObjectiveConfig(), model.config.num_classes, model.config.num_attributes,
                                     model.config.pad_token_id)
    _, eval_tf = image_transforms({"train_scales": [64], "max_size": 80, "eval_size": 64})
    dataset = PretrainingDataset(shapes_sources(shapes_setup, "val"), eval_tf)
    seen = []
    collator = PretrainingCollator(shapes_setup.tokenizer)
    eval_fn = validation_losses(objective, dataset, lambda s: seen.append(len(s)) or collator(s), 3, 2)
    with torch.no_grad():
        first, second = eval_fn(model), eval_fn(model)
    assert first == second and seen == [3, 3, 3, 3]
    assert first["val/loss"] == pytest.approx(sum(first[f"val/{k}"] for k in ("mlm", "itm", "detection",
                                                                              "caption")), rel=1e-5)


def test_override_floats_without_a_dot_are_numbers():
    cfg = load_config("e2evlp-tiny", ["trainer.lr=1e-3", "trainer.output_dir=runs/x", "trainer.seed=7"])
    assert cfg["trainer"]["lr"] == 1e-3 and cfg["trainer"]["seed"] == 7 and cfg["trainer"]["output_dir"] == "runs/x"


def test_a_further_stage_starts_from_a_run_and_keeps_a_frozen_trunk(shapes_setup, tmp_path):
    """`model.init_from` + `model.frozen_trunk` (the shipped grounding stage): the stage loads the run's model
    strictly, trains the encoder only (the trunk and its BatchNorm statistics stay bit-identical), and refuses a
    checkpoint that does not fit the data."""
    import torch

    from vlpkit.engine.logging import read_log
    from vlpkit.models import E2EVLP
    from vlpkit.pretraining.run import pretrain

    world = [f"data.shapes.root={shapes_setup.world.root}", "data.shapes.num_images=40", "data.shapes.seed=3",
             "data.shapes.vocab_size=200", "data.image.train_scales=[64]", "data.image.max_size=80",
             "data.image.eval_size=64", "trainer.progress_bar=false", "trainer.save_every=0", "trainer.eval_every=0"]
    pretrain(load_config("e2evlp-tiny", [f"trainer.output_dir={tmp_path / 'run'}", "trainer.max_steps=2",
                                         "trainer.batch_size=4", *world]))
    before = E2EVLP.from_pretrained(tmp_path / "run" / "model").state_dict()
    stage = load_config("e2evlp-tiny-grounding", [f"model.init_from={tmp_path / 'run'}", "trainer.max_steps=3",
                                                  "trainer.batch_size=4", "trainer.log_every=1",
                                                  f"trainer.output_dir={tmp_path / 'stage'}", *world])
    result = pretrain(stage)
    after = result.model.state_dict()
    assert after.keys() == before.keys()
    trunk = [k for k in before if k.startswith("backbone.")]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)
    changed = [k for k in before if k.startswith("encoder.") and not torch.equal(before[k], after[k])]
    assert changed, "the encoder did not train"
    assert all(r["itm"] == r["itm"] for r in read_log(tmp_path / "stage" / "log.jsonl", kind="train"))
    reloaded = E2EVLP.from_pretrained(tmp_path / "stage" / "model").state_dict()
    assert all(torch.equal(reloaded[k], after[k]) for k in after)

    with pytest.raises(ValueError, match="remove model.preset / model.overrides"):
        pretrain({**stage, "model": {**stage["model"], "preset": "e2evlp-tiny"}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['frozen'\]"):
        pretrain({**stage, "model": {**stage["model"], "frozen": True}})
    other = load_config("e2evlp-tiny-grounding", [f"model.init_from={tmp_path / 'run'}", *world,
                                                  f"data.shapes.root={tmp_path / 'other'}",
                                                  "data.shapes.vocab_size=150"])
    with pytest.raises(ValueError, match="does not fit this data: vocab_size is"):
        pretrain(other)


@pytest.mark.parametrize("name", [f"e2evlp-{n}-r{d}" for n in (6, 12) for d in (50, 101, 152)])
def test_paper_configs_leave_the_grounding_options_off(name):
    """Options added for grounding on the shapes world are not in the paper, so no paper config turns one on
    (docs/paper_fidelity.md lists them)."""
    cfg = load_config(name)
    objective = ObjectiveConfig.from_dict(cfg.get("objective", {}))
    assert set(objective.tasks) <= set(PAPER_TASKS)
    assert objective.encoder_grad_scale == {}
    data = cfg["data"]
    assert data.get("mlm_visual_words") is None and not data.get("itm_extra_negatives")
    assert not data.get("itm_unmasked_only")
    assert not cfg.get("model", {}).get("frozen_trunk")
    assert cfg.get("model", {}).get("overrides", {}).get("pooling", "cls") == "cls"
    assert all(set(s.get("tasks", PAPER_TASKS)) <= set(PAPER_TASKS) for s in data.get("sources", []))
    text = (CONFIG_DIR.parents[1] / "docs" / "paper_fidelity.md").read_text()
    assert all(w == 1.0 for w in objective.weights.values())
    for option in ("mlm_visual_words", "encoder_grad_scale", "itc_temperature", "itm_extra_negatives",
                   "itm_unmasked_only", "frozen_trunk", "objective.weights", "`pooling`"):
        assert option in text
