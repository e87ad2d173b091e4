"""Frozen parameters receive no gradient; every other parameter does."""

import torch

from vlpkit import build_e2evlp


def test_frozen_stages_get_no_gradient_and_all_others_do():
    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-tiny", dropout=0.0).train()
    pixels = torch.randn(2, 3, 64, 64)
    ids = torch.randint(5, 100, (2, 6))
    types = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2)
    out = model(pixels, input_ids=ids, token_type_ids=types)
    caption = model.caption_logits(model.encode(pixels), ids)
    det = out.detection
    loss = (det.pred_logits.sum() + det.pred_boxes.sum() + det.pred_attributes.sum()
            + sum(a["pred_logits"].sum() + a["pred_boxes"].sum() + a["pred_attributes"].sum() for a in det.aux_outputs)
            + out.mlm_logits.logsumexp(-1).sum() + out.itm_logits.sum() + caption.logsumexp(-1).sum())
    loss.backward()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # default trainable_backbone_layers=3: the stem and layer1 are frozen, layer2..4 train
    assert frozen and all(n.startswith(("backbone.trunk.conv1", "backbone.trunk.layer1")) for n in frozen)
    assert any(n.startswith("backbone.trunk.layer1") for n in frozen)
    for name, p in model.named_parameters():
        if name in frozen:
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} received no gradient"
    assert all(not isinstance(b, torch.nn.Parameter) for b in model.backbone.trunk.buffers())  # FrozenBatchNorm


def test_trainable_backbone_layers_configurable():
    model = build_e2evlp("e2evlp-tiny", trainable_backbone_layers=0)
    assert not any(p.requires_grad for p in model.backbone.trunk.parameters())
    model = build_e2evlp("e2evlp-tiny", trainable_backbone_layers=5)
    assert all(p.requires_grad for p in model.backbone.trunk.parameters())
