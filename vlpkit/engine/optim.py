"""AdamW with parameter groups (DETR's two, backbone and the rest, and optionally more by name prefix) and the
learning-rate schedule: linear warm-up, then x`gamma` at every epoch listed in `lr_drop_epochs`.

The schedule is a pure function of the optimizer step, `lr_factor(step, ...)`, so it is the same after a resume
and can be checked against torch's own `LinearLR` + `MultiStepLR`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def param_groups(model: nn.Module, lr: float, backbone_lr: float, weight_decay: float,
                 backbone_prefix: str = "backbone.trunk.",
                 lr_groups: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Split the trainable parameters of `model` into AdamW groups.

    Parameters whose name starts with `backbone_prefix` get `backbone_lr`; then each entry of `lr_groups`
    (`{name: {"lr": float, "prefixes": [str, ...]}}`, tried in order) takes the parameters whose name starts with
    one of its prefixes; all others get `lr`. Every group gets `weight_decay`. Frozen parameters
    (`requires_grad=False`) are left out; tied parameters appear once, under their first name.

    Returns:
        One dict {"name": "default" | "backbone" | <lr_groups name>, "params": [...], "lr", "weight_decay"} per
        group, in that order (a group with no parameter is omitted).

    Raises:
        ValueError: the model has no trainable parameter; an `lr_groups` entry is malformed, reuses the name
            "default" or "backbone", or matches no trainable parameter (a mistyped prefix would otherwise leave
            its parameters at `lr` without a word).
    """
    extra = check_lr_groups(lr_groups or {})
    buckets: dict[str, list[nn.Parameter]] = {"default": [], "backbone": [], **{name: [] for name in extra}}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = "backbone" if name.startswith(backbone_prefix) else next(
            (g for g, spec in extra.items() if name.startswith(tuple(spec["prefixes"]))), "default")
        buckets[group].append(param)
    if not any(buckets.values()):
        raise ValueError(f"{type(model).__name__} has no trainable parameter (all have requires_grad=False)")
    unmatched = [g for g in extra if not buckets[g]]
    if unmatched:
        raise ValueError(f"lr_groups {unmatched} match no trainable parameter of {type(model).__name__} "
                         f"(prefixes {[extra[g]['prefixes'] for g in unmatched]}; top-level modules: "
                         f"{sorted({n.split('.')[0] for n, _ in model.named_parameters()})})")
    rates = {"default": lr, "backbone": backbone_lr, **{g: float(spec["lr"]) for g, spec in extra.items()}}
    return [{"name": g, "params": params, "lr": rates[g], "weight_decay": weight_decay}
            for g, params in buckets.items() if params]


def check_lr_groups(lr_groups: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """`lr_groups` with floats and lists, after checking its shape (see `param_groups`); raises ValueError."""
    checked = {}
    for name, spec in lr_groups.items():
        if name in ("default", "backbone"):
            raise ValueError(f"lr_groups name {name!r} is reserved (the groups of `lr` and `backbone_lr`)")
        if not isinstance(spec, Mapping) or set(spec) != {"lr", "prefixes"}:
            raise ValueError(f"lr_groups[{name!r}] = {spec!r}; expected {{'lr': float, 'prefixes': [str, ...]}}")
        lr, prefixes = spec["lr"], spec["prefixes"]
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0:
            raise ValueError(f"lr_groups[{name!r}]['lr'] = {lr!r}; expected a number >= 0")
        if isinstance(prefixes, str) or not prefixes or not all(isinstance(p, str) and p for p in prefixes):
            raise ValueError(f"lr_groups[{name!r}]['prefixes'] = {prefixes!r}; expected a non-empty list of "
                             "non-empty parameter-name prefixes")
        checked[name] = {"lr": float(lr), "prefixes": list(prefixes)}
    return checked


def build_optimizer(model: nn.Module, lr: float = 1e-4, backbone_lr: float = 1e-5, weight_decay: float = 1e-4,
                    backbone_prefix: str = "backbone.trunk.",
                    lr_groups: Mapping[str, Mapping[str, Any]] | None = None) -> torch.optim.AdamW:
    """`torch.optim.AdamW` over `param_groups(...)` (betas and eps are torch's defaults, as in DETR)."""
    return torch.optim.AdamW(param_groups(model, lr, backbone_lr, weight_decay, backbone_prefix, lr_groups))


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
