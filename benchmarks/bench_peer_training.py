"""A detection training step against a peer: vlpkit e2evlp-6-r50 against `transformers.DetrForObjectDetection`.

Both models are random, of the same sizes (ResNet-50 with frozen BatchNorm and stem + layer1 frozen, 6 + 6
layers, d = 256, FFN 1024, 8 heads, 100 queries, 91 classes, train mode, DETR's dropout 0.1 on the attention
weights, after the FFN activation and on each residual branch: transformers' defaults leave out the first two),
and both compute the same
losses: Hungarian matching with costs 1 / 5 / 2, then class cross-entropy (no-object weight 0.1) + 5 L1 + 2 GIoU
on the last decoder layer and on each auxiliary layer. A step is forward + losses + backward + AdamW.

- vlpkit: `encode` (image + 40 text tokens, as pretraining encodes them) -> `detect` -> `SetCriterion`;
- peer: `DetrForObjectDetection(pixel_values, pixel_mask, labels)` with `auxiliary_loss=True` (its own matcher and
  losses, `transformers.loss.loss_for_object_detection`), image only.

Each vlpkit round is paired with a peer step just before it; ratio = peer time / vlpkit time (target >= 1.2).
Peak memory of one step of each: `peak_step_bytes` (benchmarks/bench_training.py).

    quick (make test):  one 160x224 image, one round
    full  (make bench): one 800x1333 image, and a batch of 2 at 640x640, 3 rounds
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.bench_forward import DEVICE, TEXT_TOKENS, benchmark_paired, example_inputs, synchronize
from benchmarks.bench_training import peak_step_bytes
from benchmarks.conftest import pick
from vlpkit.builder import build_e2evlp
from vlpkit.losses import SetCriterion
from vlpkit.ops import HungarianMatcher

SETTINGS = pick([(1, 160, 224)], [(1, 800, 1333), (2, 640, 640)])  # (batch, height, width)
ROUNDS = pick(1, 3)
NUM_CLASSES = 91
TARGETS_PER_IMAGE = 7
LR = 1e-4


def make_targets(batch: int, seed: int = 0) -> list[dict]:
    """`TARGETS_PER_IMAGE` random valid boxes (normalised cxcywh) and labels per image."""
    g = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        centre = torch.rand(TARGETS_PER_IMAGE, 2, generator=g) * 0.5 + 0.25
        size = torch.rand(TARGETS_PER_IMAGE, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, NUM_CLASSES, (TARGETS_PER_IMAGE,), generator=g).to(DEVICE),
                        "boxes": torch.cat([centre, size], -1).to(DEVICE)})
    return targets


def vlpkit_step_fn(batch: int, height: int, width: int):
    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-6-r50", num_classes=NUM_CLASSES, num_attributes=0).to(DEVICE).train()
    criterion = SetCriterion(NUM_CLASSES, HungarianMatcher(1.0, 5.0, 2.0), eos_coef=0.1, losses=("labels", "boxes"),
                             weight_dict={"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    pixels, ids = example_inputs(model.config, height, width, batch=batch)
    targets = make_targets(batch)

    def step():
        optimizer.zero_grad(set_to_none=True)
        losses = criterion(model.detect(model.encode(pixels, None, ids)).to_dict(), targets)
        loss = criterion.weighted_loss(losses)
        loss.backward()
        optimizer.step()
        synchronize()
        return losses

    return model, optimizer, (pixels, ids, targets), step


def peer_step_fn(pixels: torch.Tensor):
    from transformers import DetrConfig, DetrForObjectDetection

    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, encoder_layers=6, decoder_layers=6,
                        d_model=256, encoder_ffn_dim=1024, decoder_ffn_dim=1024, encoder_attention_heads=8,
                        decoder_attention_heads=8, num_queries=100, num_labels=NUM_CLASSES, auxiliary_loss=True,
                        class_cost=1, bbox_cost=5, giou_cost=2, bbox_loss_coefficient=5, giou_loss_coefficient=2,
                        eos_coefficient=0.1, dropout=0.1, attention_dropout=0.1, activation_dropout=0.1)
    torch.manual_seed(0)
    model = DetrForObjectDetection(config).to(DEVICE).train()
    # DETR trains ResNet stages 2-4 (layer2-4). transformers' DetrConvEncoder means to keep exactly those trainable,
    # but its non-timm filter looks for "stage.1" in names that read "encoder.stages.1", so it freezes the whole
    # ResNet (transformers 5.x); re-enable those stages so that both sides train the same layers.
    for name, param in model.model.backbone.named_parameters():
        if any(f"stages.{i}." in name for i in (1, 2, 3)):
            param.requires_grad_(True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    batch, _, height, width = pixels.shape
    mask = torch.ones(batch, height, width, dtype=torch.long, device=DEVICE)
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in make_targets(batch)]  # the same targets

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = model(pixel_values=pixels, pixel_mask=mask, labels=labels)
        out.loss.backward()
        optimizer.step()
        synchronize()
        return out.loss_dict

    return model, optimizer, (pixels, mask, labels), step


@pytest.mark.parametrize(("batch", "height", "width"), SETTINGS)
def test_training_step_against_detr(benchmark, batch, height, width):
    ours, our_optimizer, our_inputs, our_step = vlpkit_step_fn(batch, height, width)
    peer, peer_optimizer, peer_inputs, peer_step = peer_step_fn(our_inputs[0])  # the same images
    first, peer_first = our_step(), peer_step()  # warm-up: creates each optimizer's state
    # the same losses on both sides, finite (each auxiliary layer's too)
    for name in ("loss_ce", "loss_bbox", "loss_giou"):
        assert bool(torch.isfinite(first[name])) and bool(torch.isfinite(peer_first[name])), name
    assert sum(k.startswith("loss_ce_") for k in first) == sum(k.startswith("loss_ce_") for k in peer_first) == 5
    our_peak = peak_step_bytes(our_step, ours, our_optimizer, our_inputs)
    peer_peak = peak_step_bytes(peer_step, peer, peer_optimizer, peer_inputs)
    benchmark.group = f"training step vs DETR batch {batch} {height}x{width}"
    benchmark.extra_info.update(
        kind="peer_training", batch=batch, height=height, width=width, device=str(DEVICE), text_tokens=TEXT_TOKENS,
        peak_bytes=our_peak, peer_peak_bytes=peer_peak,
        trainable=sum(p.numel() for p in ours.parameters() if p.requires_grad),
        peer_trainable=sum(p.numel() for p in peer.parameters() if p.requires_grad))
    out, _ = benchmark_paired(benchmark, our_step, {"detr": peer_step}, ROUNDS, warm_partners=False)
    assert all(bool(torch.isfinite(v)) for k, v in out.items() if k.startswith("loss_"))
