"""AdamW with two parameter groups (DETR's recipe) and the learning-rate schedule: linear warm-up, then x`gamma`
at every epoch listed in `lr_drop_epochs`.

The schedule is a pure function of the optimizer step, `lr_factor(step, ...)`, so it is the same after a resume
and can be checked against torch's own `LinearLR` + `MultiStepLR`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def param_groups(model: nn.Module, lr: float, backbone_lr: float, weight_decay: float,
                 backbone_prefix: str = "backbone.trunk.") -> list[dict[str, Any]]:
    """Split the trainable parameters of `model` into AdamW groups.

    Parameters whose name starts with `backbone_prefix` get `backbone_lr`, all others `lr`; both get
    `weight_decay`. Frozen parameters (`requires_grad=False`) are left out; tied parameters appear once.

    Returns:
        Up to two dicts {"name": "backbone" | "default", "params": [...], "lr", "weight_decay"}
        (a group with no parameter is omitted).

    Raises:
        ValueError: the model has no trainable parameter.
    """
    backbone, rest = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (backbone if name.startswith(backbone_prefix) else rest).append(param)
    if not backbone and not rest:
        raise ValueError(f"{type(model).__name__} has no trainable parameter (all have requires_grad=False)")
    groups = [{"name": "default", "params": rest, "lr": lr, "weight_decay": weight_decay},
              {"name": "backbone", "params": backbone, "lr": backbone_lr, "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, lr: float = 1e-4, backbone_lr: float = 1e-5, weight_decay: float = 1e-4,
                    backbone_prefix: str = "backbone.trunk.") -> torch.optim.AdamW:
    """`torch.optim.AdamW` over `param_groups(...)` (betas and eps are torch's defaults, as in DETR)."""
    return torch.optim.AdamW(param_groups(model, lr, backbone_lr, weight_decay, backbone_prefix))


def lr_factor(step: int, warmup_steps: int = 0, steps_per_epoch: int = 1, drop_epochs: Sequence[int] = (),
              gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate for the update numbered `step` (0 = the first update).

    warm-up: `(step + 1) / warmup_steps` for the first `warmup_steps` updates (then 1);
    step decay: `gamma ** k` where k counts the epochs `e` in `drop_epochs` with `step >= e * steps_per_epoch`
    (epochs are 0-based: a drop at epoch 6 applies from the first update of the 7th epoch, as DETR's `StepLR`
    stepped once per epoch).
    """
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    drops = sum(step >= e * steps_per_epoch for e in drop_epochs)
    return warm * gamma**drops


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int = 0, steps_per_epoch: int = 1,
                    drop_epochs: Sequence[int] = (), gamma: float = 0.1) -> LambdaLR:
    """`LambdaLR` over `lr_factor`, to be stepped once per optimizer update.

    The factor is a `functools.partial`, whose `__dict__` is empty: `LambdaLR.state_dict()` then stores only the
    step counter and base rates, and a resumed run follows the schedule of its current config.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}; expected >= 1")
    fn = functools.partial(lr_factor, warmup_steps=warmup_steps, steps_per_epoch=steps_per_epoch,
                           drop_epochs=tuple(drop_epochs), gamma=gamma)
    return LambdaLR(optimizer, fn)
