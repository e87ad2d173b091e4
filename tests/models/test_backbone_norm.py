"""`backbone_norm`: the paper's frozen BatchNorm by default, trainable BatchNorm for a trunk trained from scratch."""

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from vlpkit import build_e2evlp
from vlpkit.config import ConfigError, E2EVLPConfig


def _norms(model, kind):
    return [m for m in model.backbone.trunk.modules() if type(m) is kind]


def test_default_is_frozen_batch_norm():
    model = build_e2evlp("e2evlp-tiny")
    assert _norms(model, FrozenBatchNorm2d) and not _norms(model, nn.BatchNorm2d)
    assert not any("bn" in n for n, _ in model.backbone.trunk.named_parameters())


def test_batch_norm_trains_and_tracks_statistics():
    torch.manual_seed(0)
    frozen = build_e2evlp("e2evlp-tiny", trainable_backbone_layers=5).eval()
    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-tiny", backbone_norm="batch_norm", trainable_backbone_layers=5)
    norms = _norms(model, nn.BatchNorm2d)
    assert len(norms) == len(_norms(frozen, FrozenBatchNorm2d)) and not _norms(model, FrozenBatchNorm2d)
    assert all(p.requires_grad for m in norms for p in m.parameters())
    x = torch.randn(2, 3, 64, 64)
    # at initialisation both are the identity in eval mode (running mean 0, var 1, weight 1, bias 0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.embed_image(x).features, frozen.embed_image(x).features,
                                   atol=1e-3, rtol=1e-3)
    model.train()
    with torch.no_grad():
        model.embed_image(x)
    assert not torch.equal(norms[0].running_mean, torch.zeros_like(norms[0].running_mean))


def test_frozen_stages_keep_their_batch_norm_frozen():
    model = build_e2evlp("e2evlp-tiny", backbone_norm="batch_norm")  # stem and layer1 frozen (3 trainable)
    assert not model.backbone.trunk.bn1.weight.requires_grad
    assert model.backbone.trunk.layer2[0].bn1.weight.requires_grad


def test_unknown_norm_is_named():
    with pytest.raises(ConfigError, match="backbone_norm='group'.*frozen_bn"):
        E2EVLPConfig(backbone_norm="group")
