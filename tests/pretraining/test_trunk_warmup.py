"""The trunk warm-up (`vlpkit.pretraining.trunk_warmup`): the demo's offline stand-in for ImageNet weights."""

import pytest
import torch

from vlpkit.models.backbone import build_resnet_trunk
from vlpkit.pretraining.run import load_config
from vlpkit.pretraining.trunk_warmup import centre_cell_features, warm_up_trunk, warm_up_trunk_from_config


def test_centre_cells_match_a_direct_lookup():
    torch.manual_seed(0)
    features = torch.randn(2, 5, 4, 6)
    targets = [{"boxes": torch.tensor([[0.10, 0.10, 0.1, 0.1], [0.99, 0.60, 0.2, 0.2]]), "labels": torch.tensor([3, 1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
               ]
    targets.append({"boxes": torch.tensor([[0.5, 0.0, 0.1, 0.1]]), "labels": torch.tensor([2])})
    features = torch.cat([features, torch.randn(1, 5, 4, 6)])
    got, labels = centre_cell_features(features, targets)
    expected = torch.stack([features[0, :, 0, 0], features[0, :, 2, 5], features[2, :, 0, 3]])
    torch.testing.assert_close(got, expected)
    assert labels.tolist() == [3, 1, 2]


def _config(world, run, *extra):
    return load_config("e2evlp-tiny", [f"trainer.output_dir={run}", f"data.shapes.root={world.root}",
                                       "data.shapes.num_images=40", "data.shapes.seed=3", "data.shapes.vocab_size=200",
                                       "data.image.train_scales=[64]", "data.image.max_size=80",
                                       "warmup.steps=3", "warmup.batch_size=4", *extra])


def test_warmup_writes_strictly_loadable_trunk_weights_and_caches_them(shapes_setup, tmp_path, capsys):
    cfg = _config(shapes_setup.world, tmp_path / "run")
    before = torch.random.get_rng_state()
    path = warm_up_trunk_from_config(cfg, cache_dir=tmp_path / "cache", progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)  # seeded on its own
    assert path.is_file() and path.suffix == ".safetensors"
    trunk, _ = build_resnet_trunk("resnet18", str(path), "layer3", "batch_norm")  # strict: raises on any mismatch
    from safetensors.torch import load_file

    saved = load_file(str(path))
    torch.testing.assert_close(trunk.state_dict()["layer3.1.conv2.weight"], saved["layer3.1.conv2.weight"])
    stamp = path.stat().st_mtime_ns
    assert warm_up_trunk_from_config(cfg, cache_dir=tmp_path / "cache", progress=False) == path
    assert path.stat().st_mtime_ns == stamp and "reusing" in capsys.readouterr().out
    # anything that changes the result changes the file
    other = warm_up_trunk_from_config(_config(shapes_setup.world, tmp_path / "run", "warmup.lr=0.01"),
                                      cache_dir=tmp_path / "cache", progress=False)
    assert other != path


def test_warmup_is_skipped_when_off_or_when_weights_are_given(shapes_setup, tmp_path):
    assert warm_up_trunk_from_config(_config(shapes_setup.world, tmp_path, "warmup.steps=0")) is None
    given = _config(shapes_setup.world, tmp_path, "model.overrides.backbone_weights=/some/trunk.pth")
    assert warm_up_trunk_from_config(given) is None
    with pytest.raises(ValueError, match=r"warmup: unknown key\(s\) \['step'\]"):  # refused when the config is read
        _config(shapes_setup.world, tmp_path, "warmup.step=3")
    with pytest.raises(ValueError, match="unknown warmup field"):  # and by the warm-up itself, given a bare dict
        warm_up_trunk_from_config({**given, "warmup": {"step": 3}})


def test_warmup_lowers_the_class_loss_on_a_fixed_batch(shapes_setup):
    """The trunk and its classifier learn: 40 steps on 8 fixed images fit their object classes."""
    from vlpkit.pretraining.run import image_transforms
    from vlpkit.pretraining.shapes import shapes_sources

    dataset = shapes_sources(shapes_setup)[0].dataset
    fixed = torch.utils.data.Subset(dataset, range(8))
    train_tf, _ = image_transforms({"train_scales": [64], "max_size": 80, "flip": False, "crop": False})
    _, errors = warm_up_trunk(fixed, train_tf, "resnet18", "layer3", "batch_norm", 6, steps=40, batch_size=8,
                              lr=3e-3, progress=False)
    assert len(errors) == 40
    assert sum(errors[-5:]) / 5 < 0.5 * sum(errors[:5]) / 5, errors


def test_with_warm_trunk_hands_the_trunk_to_pretraining_through_backbone_weights(shapes_setup, tmp_path):
    from vlpkit.pretraining.trunk_warmup import with_warm_trunk

    cfg = _config(shapes_setup.world, tmp_path / "run")
    warm = with_warm_trunk(cfg, progress=False)
    assert "backbone_weights" not in cfg["model"]["overrides"]  # the input is not modified
    path = warm["model"]["overrides"]["backbone_weights"]
    assert path.startswith(str(shapes_setup.world.root)) and path.endswith(".safetensors")
    off = _config(shapes_setup.world, tmp_path / "run", "warmup.steps=0")
    assert with_warm_trunk(off, progress=False) is off
