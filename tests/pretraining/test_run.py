import pytest

from vlpkit.config import E2EVLPConfig
from vlpkit.engine import TrainerConfig
from vlpkit.presets import PRESETS
from vlpkit.pretraining.objective import ObjectiveConfig
from vlpkit.pretraining.run import CONFIG_DIR, load_config


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    cfg = load_config(name)
    assert cfg["model"]["preset"] in PRESETS
    E2EVLPConfig.from_dict({**PRESETS[cfg["model"]["preset"]], **cfg["model"].get("overrides", {})})
    trainer = TrainerConfig.from_dict(cfg["trainer"])
    ObjectiveConfig.from_dict(cfg["objective"])
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
    from vlpkit.data.tokenization import save_tokenizer
    from vlpkit.data.vocab import Vocab
    from vlpkit.pretraining.run import build_data

    world = shapes_setup.world
    objects = Vocab(["star", "hexagon", "circle", "square", "triangle", "diamond", "tree"])  # another order
    objects.save(tmp_path / "objects.json")
    shapes_setup.attribute_vocab.save(tmp_path / "attributes.json")
    save_tokenizer(shapes_setup.tokenizer, tmp_path / "tok")
    data = {"kind": "files", "tokenizer": str(tmp_path / "tok"),
            "coco": {"instances": str(world.instances("train")), "captions": str(world.captions("train")),
                     "images": str(world.image_dir("train"))},
            "vg": {k: str(world.vg(k)) for k in ("image_data", "objects", "attributes", "region_descriptions")}
            | {"images": str(world.root / "images"), "object_vocab": str(tmp_path / "objects.json"),
               "attribute_vocab": str(tmp_path / "attributes.json")}}
    sources, tokenizer, overrides, labels = build_data(data)
    assert overrides["num_classes"] == 7 and labels[0] == objects.tokens
    coco, vg = (s.dataset for s in sources)
    by_image = {vg.annotation(i)["image_id"]: vg.annotation(i)["target"] for i in range(len(vg))}
    for i in range(len(coco)):
        ann = coco.detection.annotation(i)
        vg_labels = by_image[ann["image_id"]]["labels"]
        assert sorted(ann["target"]["labels"].tolist()) == sorted(vg_labels.tolist())
