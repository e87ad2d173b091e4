"""Trunk warm-up: a short supervised pretraining of the ResNet on object classes and attributes, an offline
stand-in for the ImageNet weights the paper starts from.

The paper (like DETR) initialises the trunk from ImageNet. `vlpkit demo` cannot download weights, and a trunk
trained from scratch inside the joint objective does not learn object shape within a CPU budget (after 300
detection steps a linear probe on its features stays at the majority class; docs/pretraining.md). The warm-up
trains the trunk plus linear heads on the trunk cell under each annotated object's centre (cross-entropy on the
object class, binary cross-entropy on its attributes when the source has them), then hands the trunk to pretraining through the one path every trunk initialisation
takes: `model.overrides.backbone_weights`.

Config (the `warmup` section; read by `with_warm_trunk`, which `vlpkit demo` and the notebooks call before
`pretrain`; `pretrain` itself only reads `model.overrides.backbone_weights`)::

    warmup: {steps: 400, batch_size: 16, lr: 1.0e-3, weight_decay: 1.0e-4, seed: 0}
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ..builder import resolve_config
from ..checkpoint import atomic_write
from ..data.batch import collate_images
from ..models.backbone import build_resnet_trunk

# part of the cache key: raise it whenever the warm-up's training changes, so that old cached trunks are not reused
RECIPE_VERSION = 1
DEFAULTS = {"steps": 400, "batch_size": 16, "lr": 1.0e-3, "weight_decay": 1.0e-4, "seed": 0}


def centre_cell_features(features: torch.Tensor, targets: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """The feature vector of the grid cell under each object's box centre.

    Args:
        features: [B, C, H, W] trunk output.
        targets: per image {"boxes": [N, 4] normalised cxcywh, "labels": [N]}.
    Returns:
        ([sum N, C] features, [sum N] labels).
    """
    _, _, h, w = features.shape
    rows, labels = [], []
    for b, target in enumerate(targets):
        boxes = target["boxes"]
        if len(boxes) == 0:
            continue
        j = (boxes[:, 0] * w).long().clamp(0, w - 1)
        i = (boxes[:, 1] * h).long().clamp(0, h - 1)
        rows.append(features[b, :, i, j].T)
        labels.append(target["labels"])
    if not rows:
        return features.new_zeros(0, features.shape[1]), torch.zeros(0, dtype=torch.long)
    return torch.cat(rows), torch.cat(labels)


def attribute_targets(targets: list[dict], num_attributes: int) -> torch.Tensor:
    """[sum N, num_attributes] multi-hot attributes of every object, in `centre_cell_features` order (images
    without boxes skipped); objects without attributes get a zero row."""
    rows = []
    for target in targets:
        for attrs in target.get("attributes", [[] for _ in range(len(target["boxes"]))]):
            row = torch.zeros(num_attributes)
            row[torch.as_tensor(list(attrs), dtype=torch.long)] = 1.0
            rows.append(row)
    return torch.stack(rows) if rows else torch.zeros(0, num_attributes)


def warm_up_trunk(dataset, transforms, backbone: str, last_stage: str, norm: str, num_classes: int,
                  num_attributes: int = 0, steps: int = 400, batch_size: int = 16, lr: float = 1e-3,
                  weight_decay: float = 1e-4, seed: int = 0,
                  progress: bool = True) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train a randomly initialised trunk to classify the object under each box centre (cross-entropy), and with
    `num_attributes` > 0 to predict its attributes too (binary cross-entropy, averaged over objects and attributes:
    summed over attributes it outweighs the class and slows shape learning, measured in docs/pretraining.md).

    Args:
        dataset: items {"image": PIL, "target": {"boxes", "labels", optional "attributes"}} (e.g. `CocoDetection`,
            `VisualGenome`).
        transforms: the pretraining train transforms (`(image, target, text) -> (tensor, target, text)`, with
            boxes normalised cxcywh afterwards).
    Returns:
        (the trunk's state dict in torchvision's key names, stages up to `last_stage`, ready for
        `backbone_weights`; per-step class error of the batch).
    """
    if len(dataset) == 0:
        raise ValueError("trunk warm-up: the detection dataset is empty")
    rng = random.Random(seed)
    errors: list[float] = []
    with torch.random.fork_rng():  # seeded on its own: the caller's RNG state is left as it was
        torch.manual_seed(seed)
        trunk, channels = build_resnet_trunk(backbone, None, last_stage, norm)
        classifier = nn.Linear(channels, num_classes)
        attribute_head = nn.Linear(channels, num_attributes) if num_attributes > 0 else None
        heads = list(classifier.parameters()) + (list(attribute_head.parameters()) if attribute_head else [])
        optimizer = torch.optim.AdamW(list(trunk.parameters()) + heads, lr=lr, weight_decay=weight_decay)
        trunk.train()
        bar = tqdm(range(steps), desc="trunk warm-up", disable=not progress)
        for _ in bar:
            images, targets = [], []
            for index in rng.sample(range(len(dataset)), min(batch_size, len(dataset))):
                item = dataset[index]
                image, target, _ = transforms(item["image"], item["target"])
                images.append(image)
                targets.append(target)
            pixels, _ = collate_images(images)  # the trunk's BatchNorm trains on the batch: same-size images
            features, labels = centre_cell_features(trunk(pixels), targets)
            if len(labels) == 0:
                continue
            logits = classifier(features)
            loss = F.cross_entropy(logits, labels)
            if attribute_head is not None:
                wanted = attribute_targets(targets, num_attributes)
                loss = loss + F.binary_cross_entropy_with_logits(attribute_head(features), wanted)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            errors.append(float((logits.argmax(-1) != labels).float().mean()))
            bar.set_postfix(loss=f"{loss.item():.3f}", error=f"{errors[-1]:.2f}")
    return {k: v.detach().clone() for k, v in trunk.state_dict().items()}, errors


def warm_up_trunk_from_config(config: dict, cache_dir: str | Path | None = None, progress: bool = True) -> Path | None:
    """Run the config's `warmup` section (or reuse its cached result) and return the trunk weights file, or None
    when `warmup.steps` is 0 or absent, or when `model.overrides.backbone_weights` is already set.

    The file is cached under `cache_dir` (default: the shapes world's folder, else `trainer.output_dir`), named by
    a hash of everything that determines it, so a second demo run skips the warm-up."""
    from .run import build_data, image_transforms

    spec = {**DEFAULTS, **(config.get("warmup") or {})}
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown warmup field(s) {unknown}; expected {sorted(DEFAULTS)}")
    model_cfg = config.get("model", {})
    if not config.get("warmup") or int(spec["steps"]) <= 0 or model_cfg.get("overrides", {}).get("backbone_weights"):
        return None
    data_cfg = config.get("data", {})
    sources, _, data_overrides, setup = build_data(data_cfg)
    detection = sorted((s for s in sources if "detection" in s.tasks), key=lambda s: "attributes" not in s.tasks)
    if not detection:
        raise ValueError("warmup needs a pretraining source with the 'detection' task (its boxes and labels)")
    # a source with attributes (Visual Genome) first: a trunk trained on shape classes alone learns to ignore colour
    with_attributes = "attributes" in detection[0].tasks
    cfg = resolve_config(model_cfg.get("preset", "e2evlp-tiny"), **{**data_overrides, **model_cfg.get("overrides", {})})
    key = {"version": RECIPE_VERSION, "warmup": spec, "backbone": cfg.backbone, "last_stage": cfg.backbone_last_stage,
           "norm": cfg.backbone_norm, "num_classes": cfg.num_classes, "source": detection[0].name,
           "num_attributes": cfg.num_attributes if with_attributes else 0,
           # only the data that the warm-up reads: the world (or the source's files) and the image transforms;
           # the rest of the data section (masking, ITM options, the mixture's weights) leaves the trunk as it is
           "data": {k: v for k, v in data_cfg.items() if k in ("kind", "shapes", "image", detection[0].name)}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    if cache_dir is None:
        world = getattr(setup, "world", None)
        cache_dir = world.root if world is not None else Path(config.get("trainer", {}).get("output_dir", "."))
    path = Path(cache_dir) / "trunk_warmup" / f"{cfg.backbone}-{digest}.safetensors"
    if path.is_file():
        print(f"trunk warm-up: reusing {path}", flush=True)
        return path
    train_tf, _ = image_transforms(data_cfg.get("image", {}))
    state, errors = warm_up_trunk(detection[0].dataset, train_tf, cfg.backbone, cfg.backbone_last_stage,
                                  cfg.backbone_norm, cfg.num_classes, key["num_attributes"], steps=int(spec["steps"]),
                                  batch_size=int(spec["batch_size"]), lr=float(spec["lr"]),
                                  weight_decay=float(spec["weight_decay"]), seed=int(spec["seed"]),
                                  progress=progress)
    metadata = {"warmup": json.dumps(key, sort_keys=True, default=str)}
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata))
    tail = errors[-20:]
    print(f"trunk warm-up: {len(errors)} steps, class error of the last {len(tail)} batches "
          f"{sum(tail) / max(len(tail), 1):.2f}; saved {path}", flush=True)
    return path


def with_warm_trunk(config: dict, progress: bool = True) -> dict:
    """A copy of `config` whose `model.overrides.backbone_weights` is the warm-up's trunk (run now or reused from
    the cache); `config` itself when there is nothing to warm up (see `warm_up_trunk_from_config`)."""
    path = warm_up_trunk_from_config(config, progress=progress)
    if path is None:
        return config
    config = copy.deepcopy(config)
    config.setdefault("model", {}).setdefault("overrides", {})["backbone_weights"] = str(path)
    return config
