"""Trunk weights from a local file (`build_resnet_trunk(weights=path)`): strict for the stages the trunk keeps."""

import pytest
import torch
from safetensors.torch import save_file

from vlpkit.models.backbone import build_resnet_trunk


def _trunk_file(tmp_path, last_stage="layer3"):
    torch.manual_seed(0)
    trunk, _ = build_resnet_trunk("resnet18", None, last_stage, "batch_norm")
    path = tmp_path / "trunk.safetensors"
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(path))
    return trunk, path


def test_a_truncated_trunk_file_loads_into_the_same_truncated_trunk(tmp_path):
    saved, path = _trunk_file(tmp_path)
    torch.manual_seed(1)  # a different random init, so equality below comes from the file
    loaded, _ = build_resnet_trunk("resnet18", str(path), "layer3", "batch_norm")
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)


def test_a_stage_the_trunk_keeps_must_be_in_the_file(tmp_path):
    _, path = _trunk_file(tmp_path)
    with pytest.raises(ValueError, match=r"up to layer4: missing keys \['layer4\.0\.conv1\.weight"):
        build_resnet_trunk("resnet18", str(path), "layer4", "batch_norm")


def test_unexpected_keys_are_named(tmp_path):
    trunk, _ = build_resnet_trunk("resnet18", None, "layer3", "batch_norm")
    state = {k: v.contiguous() for k, v in trunk.state_dict().items()}
    state["layer2.0.extra.weight"] = torch.zeros(1)
    path = tmp_path / "odd.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"unexpected keys \['layer2\.0\.extra\.weight'\]"):
        build_resnet_trunk("resnet18", str(path), "layer3", "batch_norm")
