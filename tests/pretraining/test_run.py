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
