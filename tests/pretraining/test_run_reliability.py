"""Pretraining runs under attack (docs/reliability.md, "Run folders" and "Configs"): a refused run or a failed resume
leaves the run folder byte-identical, a saved model loads from a copy with the trunk's warm-up file gone, and
every config value is checked against a typed schema with ranges, errors naming the key, the value and the file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vlpkit.config import ConfigError
from vlpkit.pretraining.run import CONFIG_DIR, load_config, pretrain
from vlpkit.pretraining.schema import validate_config


def world(shapes_setup) -> list[str]:
    return [f"data.shapes.root={shapes_setup.world.root}", "data.shapes.num_images=40", "data.shapes.seed=3",
            "data.shapes.vocab_size=200", "data.image.train_scales=[64]", "data.image.max_size=80",
            "data.image.eval_size=64", "trainer.progress_bar=false", "trainer.save_every=0", "trainer.eval_every=0",
            "trainer.batch_size=4", "trainer.log_every=1"]


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(shapes_setup, tmp_path_factory):
    """A 2-step pretraining run whose trunk starts from a file in a 'cache' folder (as the demo's warm-up)."""
    from safetensors.torch import save_file

    from vlpkit.models.backbone import build_resnet_trunk
    from vlpkit.presets import get_preset

    root = tmp_path_factory.mktemp("reliability")
    cache = root / "cache"
    cache.mkdir()
    trunk, _ = build_resnet_trunk(get_preset("e2evlp-tiny").backbone, None, "layer3", "batch_norm")
    trunk_file = cache / "trunk.safetensors"
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(trunk_file))
    overrides = [f"trainer.output_dir={root / 'run'}", "trainer.max_steps=2", "trainer.lr=0.0005",
                 f"model.overrides.backbone_weights={trunk_file}", *world(shapes_setup)]
    pretrain(load_config("e2evlp-tiny", overrides))
    return root, overrides


# ---- case 1: a saved model is self-contained ------------------------------------------------------------------
def test_a_saved_model_loads_from_a_copy_with_the_trunk_file_gone(finished_run, tmp_path):
    from vlpkit.models import E2EVLP

    root, _ = finished_run
    saved = json.loads((root / "run" / "model" / "config.json").read_text())
    assert saved["backbone_weights"] is None  # the trained trunk is in the weights; the cache path is not kept
    original = E2EVLP.from_pretrained(root / "run" / "model").state_dict()
    shutil.copytree(root / "run", tmp_path / "copy")
    moved = tmp_path / "cache-gone"
    shutil.move(root / "cache", moved)
    try:
        loaded = E2EVLP.from_pretrained(tmp_path / "copy" / "model").state_dict()
        # a folder written before this fix, with the absolute path recorded, loads too
        saved["backbone_weights"] = str(root / "cache" / "trunk.safetensors")
        (tmp_path / "copy" / "model" / "config.json").write_text(json.dumps(saved))
        old_format = E2EVLP.from_pretrained(tmp_path / "copy" / "model").state_dict()
    finally:
        shutil.move(moved, root / "cache")
    for name, value in original.items():
        assert torch.equal(loaded[name], value) and torch.equal(old_format[name], value), name


def test_a_missing_backbone_weights_file_is_named():
    from vlpkit import build_e2evlp

    with pytest.raises(FileNotFoundError, match="backbone_weights file not found: /nowhere/trunk.safetensors"):
        build_e2evlp("e2evlp-tiny", backbone_weights="/nowhere/trunk.safetensors")
    with pytest.raises(ValueError, match=r"backbone_weights='IMAGENET_V9' is neither a file nor a torchvision "
                                         r"weights name of resnet18; valid names: \['IMAGENET1K_V1'\]"):
        build_e2evlp("e2evlp-tiny", backbone_weights="IMAGENET_V9")


# ---- case 2: a refused run does not touch the run it refuses ---------------------------------------------------
def test_a_refused_run_leaves_the_run_folder_byte_identical(finished_run):
    root, overrides = finished_run
    before = snapshot(root / "run")
    changed = [*overrides, "trainer.lr=0.123", "data.itm_negative_rate=0.25"]
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        pretrain(load_config("e2evlp-tiny", changed))
    assert snapshot(root / "run") == before
    assert json.loads((root / "run" / "pretrain_config.json").read_text())["trainer"]["lr"] == 0.0005


def test_a_failed_resume_leaves_the_run_folder_byte_identical(finished_run):
    root, overrides = finished_run
    before = snapshot(root / "run")
    # a learning-rate group the checkpoint's optimizer does not have: the resume itself fails
    changed = [*overrides, "trainer.max_steps=3",
               "trainer.lr_groups={heads: {lr: 0.001, prefixes: [itm_head.]}}"]
    with pytest.raises(ValueError, match="parameter group"):
        pretrain(load_config("e2evlp-tiny", changed), resume=True)
    assert snapshot(root / "run") == before


# ---- case 6: configs are checked against a typed schema with ranges --------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("data.itm_negative_rate=7", r"data.itm_negative_rate=7.0; expected a value in \[0, 1\]"),
    ("data.itm_negativ_rate=0.5", r"data: unknown key\(s\) \['itm_negativ_rate'\]; valid keys: \["),
    ("data.mlm_probability=0", r"data.mlm_probability=0.0; expected a value in \(0, 1\]"),
    # e2evlp-tiny.yaml sets itm_unmasked_only with one extra row; taking the row away leaves ITM nothing to score
    ("data.itm_extra_negatives=0", r"data.itm_unmasked_only scores ITM on the unmasked extra rows only: set "
                                   r"data.itm_extra_negatives >= 1"),
    ("data.image.train_scales=[64, -1]", r"data.image.train_scales\[1\]=-1; expected a value in \[1, inf\)"),
    ("data.image.crop=maybe", r"data.image.crop='maybe' \(str\); expected true or false"),
    ("data.sources=[{name: cc3m}]", r"data.sources\[0\].name='cc3m'; expected 'coco' or 'vg'"),
    ("data.shapes.num_image=10", r"data.shapes: unknown key\(s\) \['num_image'\]"),
    ("trainer.max_steps=2.5", r"trainer.max_steps=2.5 \(float\); expected an integer or null"),
    ("trainer.save_every=1.5", r"trainer.save_every=1.5 \(float\); expected an integer"),
    ("trainer.lr=.nan", r"trainer.lr=nan \(float\); expected a number \(a finite number\)"),
    ("trainer.lr_drop_epochs=[2, 1.5]", r"trainer.lr_drop_epochs=\[2, 1.5\] \(list\); expected list\[int\]"),
    ("model.overrides.aux_loss=\"no\"", r"model.overrides: aux_loss='no' \(str\); expected true or false"),
    ("model.overrides.num_heads=4.0", r"model.overrides: num_heads=4.0 \(float\); expected an integer"),
    ("model.overrides.d_model=\"128\"", r"model.overrides: d_model='128' \(str\); expected an integer"),
    ("model.frozen_trunk=1", r"model.frozen_trunk=1 \(int\); expected true or false"),
    ("objective.weights={mlm: high}", r"objective.weights=\{'mlm': 'high'\} \(dict\); expected dict\[str, float\]"),
    ("warmup.batch_size=0", r"warmup.batch_size=0; expected a value in \[1, inf\)"),
])
def test_a_bad_config_value_is_named_with_the_file(override, message):
    with pytest.raises(ConfigError, match=rf"e2evlp-tiny.yaml with overrides: {message}"):
        load_config("e2evlp-tiny", [override])


def test_yaml_1_2_values_are_read_as_documented():
    cfg = load_config("e2evlp-tiny", ["trainer.mixed_precision=no", "trainer.lr=3e-4", "trainer.deterministic=true"])
    assert cfg["trainer"]["mixed_precision"] == "no" and cfg["trainer"]["lr"] == 3e-4
    assert cfg["trainer"]["deterministic"] is True


def test_a_yaml_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("trainer: {max_steps: 3\n")
    with pytest.raises(ConfigError, match=rf"{bad} is not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_shipped_config_passes_the_schema(name):
    assert validate_config(load_config(name))


def test_pretrain_checks_a_config_given_as_a_dict(tmp_path):
    cfg = load_config("e2evlp-tiny", [f"trainer.output_dir={tmp_path / 'run'}"])
    cfg["data"]["itm_negative_rate"] = 7
    with pytest.raises(ConfigError, match=r"data.itm_negative_rate=7"):
        pretrain(cfg)
    assert not (tmp_path / "run").exists()


def test_the_cli_prints_a_refusal_as_one_line(tmp_path, capsys):
    from vlpkit.cli import main

    code = main(["pretrain", "--config", "e2evlp-tiny", "--set", f"trainer.output_dir={tmp_path / 'run'}",
                 "--set", "data.itm_negative_rate=7"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("vlpkit pretrain: error: ") and "data.itm_negative_rate=7.0; expected a value in [0, 1]" in err


# ---- the real-data path: inputs refused before the first step -------------------------------------------------
def test_a_random_trunk_set_up_for_pretrained_weights_is_refused(shapes_setup, tmp_path):
    cfg = load_config("e2evlp-tiny", [f"trainer.output_dir={tmp_path / 'run'}", *world(shapes_setup),
                                      "model.overrides.backbone_norm=frozen_bn",
                                      "model.overrides.trainable_backbone_layers=3"])
    with pytest.raises(ConfigError, match=r"backbone_weights is null, so the ResNet starts from random weights, but "
                                          r"backbone_norm='frozen_bn' .* and trainable_backbone_layers=3 \(the first "
                                          r"2 stage\(s\) would stay random\)\. Set model.overrides.backbone_norm="):
        pretrain(cfg)
    assert not (tmp_path / "run").exists()


def test_coco_images_without_captions_are_refused_when_text_tasks_read_them(shapes_setup, tmp_path):
    from vlpkit.data.readers import DataFileError
    from vlpkit.data.tokenization import save_tokenizer
    from vlpkit.pretraining.run import build_data

    w = shapes_setup.world
    instances = json.loads(w.instances("train").read_text())
    extra = {**instances["images"][0], "id": 987654}
    instances["images"].append(extra)
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    save_tokenizer(shapes_setup.tokenizer, tmp_path / "tok")
    data = {"kind": "files", "tokenizer": str(tmp_path / "tok"), "sources": [{"name": "coco"}],
            "coco": {"instances": str(tmp_path / "instances.json"), "captions": str(w.captions("train")),
                     "images": str(w.image_dir("train"))}}
    with pytest.raises(DataFileError, match=r"1 image\(s\) of .*instances.json have no caption \(e.g. image ids "
                                            r"\[987654\]\), but the coco source trains \['caption', 'itm', 'mlm'\]"):
        build_data(data)
    sources = build_data({**data, "sources": [{"name": "coco", "tasks": ["detection"]}]})[0]
    assert len(sources[0].dataset) == len(instances["images"])  # detection alone keeps every image


def test_missing_data_files_are_listed_by_config_key(tmp_path, monkeypatch):
    from vlpkit.pretraining.run import build_data

    monkeypatch.chdir(tmp_path)
    cfg = load_config("e2evlp-6-r50")
    with pytest.raises(FileNotFoundError, match=r"pretraining data files missing \(working directory .*\):\n  "
                                                r"data.coco.instances: data/coco/annotations/instances_train2014.json "
                                                r"not found\n  data.coco.captions: "):
        build_data(cfg["data"])


def test_a_coco_only_validation_split_numbers_classes_as_training_does(shapes_setup, tmp_path):
    """The paper configs validate on COCO val2014 alone (`data.val`); its classes must be the training's (COCO
    categories mapped into the VG object vocabulary), not COCO's own contiguous numbering."""
    from vlpkit.data.vocab import Vocab
    from vlpkit.pretraining.run import _validation_sources

    from .conftest import files_data_section

    w = shapes_setup.world
    objects = Vocab(["star", "hexagon", "circle", "square", "triangle", "diamond", "tree"])  # not COCO's order
    data = {**files_data_section(shapes_setup, tmp_path, objects),
            "val": {"sources": [{"name": "coco"}],
                    "coco": {"instances": str(w.instances("val")), "captions": str(w.captions("val")),
                             "images": str(w.image_dir("val"))}}}
    (val,) = _validation_sources(data)
    names = {c["id"]: c["name"] for c in json.loads(w.instances("val").read_text())["categories"]}
    ann = val.dataset.detection.annotation(0)
    raw = json.loads(w.instances("val").read_text())["annotations"]
    expected = sorted(objects.index(names[a["category_id"]]) for a in raw if a["image_id"] == ann["image_id"])
    assert sorted(ann["target"]["labels"].tolist()) == expected
