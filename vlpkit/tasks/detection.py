"""COCO object detection with paired text (the paper's Table 7).

The pretrained detection branch (object queries -> shared decoder -> `DetectionHead`) is fine-tuned on COCO
instances with DETR's set criterion. `DetectionConfig.paired_text` decides what the encoder reads:

- `paired_text=True`: `[CLS] caption [SEP] grid`, with one of the image's COCO captions (a random one per epoch in
  training, the first one in evaluation), as the detection objective of pretraining reads it;
- `paired_text=False`: `[CLS] [SEP] grid`, the image alone (a plain DETR-style detector).

When the COCO category count differs from the pretrained head's `num_classes` (Visual Genome's 1600 in the paper),
the class layer `detection_head.class_embed` is re-initialised for the new classes and reported as new; the box MLP,
the queries and everything else keep their pretrained weights. Labels are COCO's categories in increasing id order
(0..K-1, `CocoDetection(category_map="contiguous")`), mapped back to COCO ids in the results file.

Evaluation is pycocotools' COCOeval on the results in COCO's detection format
(`[{image_id, category_id, bbox: [x, y, w, h] pixels, score}]`), every query of every image kept as DETR does.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..builder import build_e2evlp
from ..checkpoint import atomic_write
from ..data.batch import Batch, collate_images, collate_texts
from ..data.readers.coco import CocoWithCaptions
from ..data.task_data import DetectionSplit, detection_data, detection_split
from ..data.tokenization import load_tokenizer, save_tokenizer
from ..data.transforms import make_eval_transforms, make_train_transforms
from ..engine import TrainerConfig
from ..losses import SetCriterion
from ..metrics.detection import evaluate_detections, to_coco_results
from ..model_folder import load_labels, locate_pretrained, save_labels, save_preprocessing
from ..models import E2EVLP
from ..ops import HungarianMatcher, gather_shards, postprocess_detections, shard_range
from ..outputs import DetectionOutput, EncoderOutput
from .base import (
    TaskConfig,
    TaskModel,
    fresh_overrides,
    load_e2evlp,
    load_finetuned,
    task_trainer,
)
from .finetuning import FinetuneResult, run_finetune
from .registry import Task, register_task

logger = logging.getLogger(__name__)

CLASS_HEAD = ("e2evlp.detection_head.class_embed.bias", "e2evlp.detection_head.class_embed.weight")

__all__ = ["DetectionConfig", "DetectionModel", "DetectionSplit", "DetectionDataset", "DetectionCollator",
           "detection_split", "build_criterion", "detection_loss", "detection_results", "evaluate_detection",
           "finetune_detection", "evaluate_finetuned"]


# ---- configuration ---------------------------------------------------------------------------------------
@dataclass
class DetectionConfig(TaskConfig):
    """Fine-tuning recipe. The paper gives no detection fine-tuning hyper-parameters; the defaults are DETR's
    150-epoch schedule (Carion et al., 2020): AdamW, lr 1e-4 (backbone 1e-5), weight decay 1e-4, drop x0.1 at epoch
    100, gradient clipping 0.1, 4 images per GPU (x16 GPUs = 64), multi-scale 480..800 (max 1333) with random crop
    and flip, evaluation at 800; set criterion with class 1 / L1 5 / GIoU 2 costs and weights, no-object weight 0.1.
    """

    paired_text: bool = True
    # optimisation (per process)
    trainer: TrainerConfig = field(default_factory=lambda: task_trainer(
        batch_size=4, epochs=150, lr_drop_epochs=[100], lr=1e-4, backbone_lr=1e-5, weight_decay=1e-4,
        clip_max_norm=0.1, seed=42))
    frozen_trunk: bool = False  # not the paper: trunk frozen, features cached per image (feature_cache.py)
    trunk_cache_megabytes: float = 2048.0
    # set prediction
    eos_coef: float = 0.1
    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    loss_ce: float = 1.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    # images
    train_scales: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))
    max_size: int = 1333
    crop: bool = True
    flip: bool = True
    eval_size: int = 800
    # evaluation
    eval_split: str = "val"
    eval_batch_size: int = 8
    max_eval_images: int | None = None

    def __post_init__(self) -> None:
        self.check_trainer()
        self.train_scales = [int(s) for s in self.train_scales]
        if not isinstance(self.paired_text, bool):
            raise ValueError(f"paired_text must be true or false, got {self.paired_text!r}")
        if not self.train_scales or max(self.train_scales) >= self.max_size:
            raise ValueError(f"train_scales={self.train_scales} must be non-empty and below max_size={self.max_size}")
        if self.eval_size >= self.max_size:
            raise ValueError(f"eval_size={self.eval_size} must be below max_size={self.max_size}")

    def train_transforms(self):
        return make_train_transforms(scales=self.train_scales, max_size=self.max_size, crop=self.crop, flip=self.flip)

    def eval_transforms(self):
        return make_eval_transforms(self.eval_size, self.max_size)


# ---- the model -------------------------------------------------------------------------------------------
class DetectionModel(TaskModel):
    """E2E-VLP as a COCO detector: `encode` -> `detect`.

    It adds no head of its own (`self.head` is an `nn.Identity`): the pretrained `e2evlp.detection_head` is the
    task head. `new_parameters` lists the class layer when `from_checkpoint` re-initialised it. `forward` returns
    the typed `DetectionOutput` of the model.
    """

    task_name = "detection"
    legacy_files = (None, "detection_config.json")

    def __init__(self, e2evlp: E2EVLP, paired_text: bool = True) -> None:
        super().__init__(e2evlp, nn.Identity())
        self.paired_text = paired_text
        self.new_parameters = []

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | E2EVLP | None, num_classes: int | None = None,
                        paired_text: bool = True, preset: str = "e2evlp-tiny", class_names: list[str] | None = None,
                        **overrides) -> DetectionModel:
        """Wrap a pretrained E2EVLP (a `save_pretrained` folder, a pretraining run folder, or a model).

        Args:
            num_classes: the dataset's category count; when it differs from the checkpoint's, the class layer is
                re-initialised (and named in the returned model's `new_parameters` and in a warning).
            class_names: the dataset's category names (label order). With a checkpoint folder that has its
                `labels.json` (pretraining writes it), each class whose name the checkpoint's classes share keeps
                the pretrained row of that class (COCO categories mapped into Visual Genome's objects during
                pretraining keep what they learned), as does the no-object row.
            checkpoint=None: a fresh `preset` model with `overrides` (and `num_classes`), for training from scratch.
        """
        if checkpoint is None:
            if num_classes is not None:
                overrides["num_classes"] = num_classes
            e2evlp = build_e2evlp(preset, **overrides)
        pretrained_names = None
        if checkpoint is not None:
            if isinstance(checkpoint, (str, Path)):
                files = locate_pretrained(checkpoint)
                checkpoint = files.model_dir
                pretrained_names = load_labels(files.labels).objects if files.labels is not None else None
            e2evlp = load_e2evlp(checkpoint, **overrides)
        model = cls(e2evlp, paired_text)
        if num_classes is not None and num_classes != e2evlp.config.num_classes:
            keep = None
            if class_names is not None and pretrained_names is not None:
                index = {name.lower(): i for i, name in enumerate(pretrained_names)}
                keep = {i: index[n.lower()] for i, n in enumerate(class_names) if n.lower() in index}
                logger.warning("class head: %d of %d classes start from the checkpoint's class of the same name "
                               "(and the no-object row); fresh: %s", len(keep), num_classes,
                               [n for n in class_names if n.lower() not in index][:20])
            model.reset_classes(num_classes, keep)
        model.report_new_parameters()
        return model

    def reset_classes(self, num_classes: int, keep: dict[int, int] | None = None) -> list[str]:
        """A fresh `class_embed` for `num_classes` (+ no-object), initialised as the builder does (nn.Linear's
        default); updates the config. `keep` {new class: old class} copies those rows (and then the no-object
        row) from the old layer. Returns the new parameter names (also added to `new_parameters`)."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        head = self.e2evlp.detection_head
        old = head.class_embed
        head.class_embed = nn.Linear(old.in_features, num_classes + 1).to(old.weight.device, old.weight.dtype)
        if keep:
            new_rows, old_rows = [*keep, num_classes], [*keep.values(), old.out_features - 1]
            with torch.no_grad():
                head.class_embed.weight[new_rows] = old.weight[old_rows]
                head.class_embed.bias[new_rows] = old.bias[old_rows]
        self.e2evlp.config = self.e2evlp.config.replace(num_classes=num_classes)
        self.new_parameters = sorted(set(self.new_parameters) | set(CLASS_HEAD))
        return list(CLASS_HEAD)

    def encode(self, batch: Batch) -> EncoderOutput:
        """`[CLS] caption [SEP] grid` with paired text, else `[CLS] [SEP] grid` (the batch's text is ignored)."""
        if self.paired_text:
            return self.e2evlp.encode(batch.pixel_values, batch.pixel_mask, batch.input_ids, batch.attention_mask,
                                      batch.token_type_ids)
        return self.e2evlp.encode(batch.pixel_values, batch.pixel_mask)

    def forward(self, batch: Batch) -> DetectionOutput:
        """DETR predictions: pred_logits [B, Q, K+1], pred_boxes [B, Q, 4] normalised cxcywh, aux_outputs."""
        return self.e2evlp.detect(self.encode(batch))

    def arguments(self) -> dict[str, Any]:
        return {"paired_text": self.paired_text}

    @classmethod
    def from_arguments(cls, e2evlp: E2EVLP, tokenizer, arguments: dict[str, Any], directory: Path) -> DetectionModel:
        return cls(e2evlp, arguments["paired_text"])

    @classmethod
    def legacy_arguments(cls, stored: dict[str, Any], recipe: dict[str, Any] | None) -> dict[str, Any]:
        return {"paired_text": DetectionConfig.from_dict(recipe or {}).paired_text}


# ---- data ------------------------------------------------------------------------------------------------
def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence, as the engine's loader does)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


class DetectionDataset(Dataset):
    """COCO instances + captions -> `(image [3, h, w], target, caption or None)` after `transforms`.

    With `paired_text`, the caption is one of the image's captions: drawn per (seed, epoch, index) when `train`,
    else the first. Images without any caption are encoded without text, and counted in `num_without_captions`
    (with a warning). Augmentations are seeded the same way, so an epoch is reproducible in any worker.
    Target: "boxes" normalised cxcywh, "labels" (contiguous 0..K-1), "image_id", "orig_size" (h, w), "size".
    """

    def __init__(self, split: DetectionSplit, transforms, paired_text: bool = True, train: bool = True,
                 seed: int = 0) -> None:
        self.data = CocoWithCaptions(split.instances, split.captions, split.images)
        self.split = split
        self.transforms = transforms
        self.paired_text = paired_text
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.num_without_captions = self.data.num_without_captions
        if paired_text and self.num_without_captions:
            warnings.warn(f"{self.num_without_captions} of {len(self)} images of {split.instances} have no caption "
                          f"in {split.captions}; they are encoded without paired text ([CLS] [SEP])", stacklevel=2)

    @property
    def label_to_category_id(self) -> dict[int, int]:
        return self.data.detection.label_to_category_id

    @property
    def num_classes(self) -> int:
        return len(self.label_to_category_id)

    @property
    def category_names(self) -> list[str]:
        names = self.data.detection.label_names
        return [names[k] for k in range(self.num_classes)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        sample = self.data[index]
        captions = sample["captions"]
        caption = None
        if self.paired_text and captions:
            pick = random.Random(_seed(self.seed, self.epoch, index)).randrange(len(captions)) if self.train else 0
            caption = captions[pick]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(self.seed, self.epoch, index, 1))
            image, target, caption = self.transforms(sample["image"], sample["target"], caption)
        target = {k: target[k] for k in ("boxes", "labels", "image_id", "orig_size", "size")}
        return image, target, caption


class DetectionCollator:
    """Samples -> `Batch`: padded images, `[CLS] caption [SEP]` texts (`[CLS] [SEP]` for samples without one),
    targets, and meta `{"image_id", "caption"}`."""

    def __init__(self, tokenizer, max_length: int = 40, pad_to_multiple_of: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, samples: Sequence) -> Batch:
        if not samples:
            raise ValueError("DetectionCollator got an empty batch")
        images, targets, captions = zip(*samples)
        pixel_values, pixel_mask = collate_images(images, self.pad_to_multiple_of)
        if all(c is None for c in captions):
            tok = self.tokenizer
            input_ids = torch.tensor([[tok.cls_token_id, tok.sep_token_id]] * len(samples))
            attention_mask, token_type_ids = torch.ones_like(input_ids), torch.zeros_like(input_ids)
        else:
            input_ids, attention_mask, token_type_ids = collate_texts(["" if c is None else c for c in captions],
                                                                      self.tokenizer, self.max_length)
        return Batch(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids,
                     attention_mask=attention_mask, token_type_ids=token_type_ids, targets=list(targets),
                     meta=[{"image_id": t["image_id"], "caption": c} for t, c in zip(targets, captions)])


# ---- loss ------------------------------------------------------------------------------------------------
def build_criterion(config: DetectionConfig, num_classes: int) -> SetCriterion:
    """DETR's set criterion (classes + boxes; COCO has no attributes) with the recipe's costs and weights."""
    return SetCriterion(num_classes, HungarianMatcher(config.cost_class, config.cost_bbox, config.cost_giou),
                        weight_dict={"loss_ce": config.loss_ce, "loss_bbox": config.loss_bbox,
                                     "loss_giou": config.loss_giou},
                        eos_coef=config.eos_coef, losses=("labels", "boxes"))


def detection_loss(model: DetectionModel, batch: Batch, criterion: SetCriterion | None = None) -> dict:
    """`{"loss": weighted total over every decoder layer, "loss_ce", "loss_bbox", "loss_giou", their "_i"
    auxiliary-layer versions (unweighted), "class_error"}`. `criterion` defaults to `build_criterion` of the default
    recipe."""
    if criterion is None:
        criterion = build_criterion(DetectionConfig(), model.config.num_classes)
    targets = [{"labels": t["labels"], "boxes": t["boxes"]} for t in batch.targets]
    parts = criterion(model(batch).to_dict(), targets)
    return {"loss": criterion.weighted_loss(parts), **parts}


# ---- evaluation ------------------------------------------------------------------------------------------
@torch.no_grad()
def detection_results(model: DetectionModel, tokenizer, dataset: DetectionDataset, batch_size: int = 8,
                      max_images: int | None = None) -> tuple[list[dict], list[int]]:
    """COCO-format detections of every query of the first `max_images` images (all by default), and their ids.
    Under torch.distributed each process detects in its share (`shard_range`) and every process returns them all."""
    if model.config.num_classes != dataset.num_classes:
        raise ValueError(f"the model predicts {model.config.num_classes} classes but {dataset.split.instances} has "
                         f"{dataset.num_classes} categories; fine-tune it with "
                         f"DetectionModel.from_checkpoint(..., num_classes={dataset.num_classes})")
    device = next(model.parameters()).device
    collate = DetectionCollator(tokenizer, model.config.max_text_length)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    share = shard_range(n)
    results, image_ids = [], []
    for start in range(share.start, share.stop, batch_size):
        batch = collate([dataset[i] for i in range(start, min(share.stop, start + batch_size))]).to(device)
        detections = postprocess_detections(model(batch).to_dict())
        ids = [int(t["image_id"]) for t in batch.targets]
        results += to_coco_results([d["boxes"].cpu() for d in detections], [d["scores"].cpu() for d in detections],
                                   [d["labels"].cpu() for d in detections], ids,
                                   [t["orig_size"].tolist() for t in batch.targets], dataset.label_to_category_id)
        image_ids += ids
    return gather_shards(results), gather_shards(image_ids)


def evaluate_detection(model: DetectionModel, tokenizer, data: Any, split: str = "val",
                       output_dir: str | Path | None = None, config: DetectionConfig | None = None,
                       max_images: int | None = None) -> dict[str, float]:
    """COCO box AP of `model` on `split` of `data` (see `detection_split`), with pycocotools' COCOeval.

    Returns:
        COCOeval's 12 stats ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
        "ARl"; -1 where the split has no object of that size) and "num_images".
    Writes (with `output_dir`): `detections_<split>_results.json` in COCO's detection results format and
    `metrics_<split>.json`.
    """
    config = config or DetectionConfig()
    files = detection_split(data, split)
    dataset = DetectionDataset(files, config.eval_transforms(), paired_text=model.paired_text, train=False)
    was_training = model.training
    model.eval()
    try:
        results, image_ids = detection_results(model, tokenizer, dataset, config.eval_batch_size,
                                               max_images if max_images is not None else config.max_eval_images)
    finally:
        model.train(was_training)
    metrics = {**evaluate_detections(dataset.data.detection.coco, results, img_ids=image_ids),
               "num_images": float(len(image_ids))}
    if output_dir is not None:
        out = Path(output_dir)
        atomic_write(out / f"detections_{split}_results.json", lambda tmp: Path(tmp).write_text(json.dumps(results)))
        atomic_write(out / f"metrics_{split}.json",
                     lambda tmp: Path(tmp).write_text(json.dumps({"paired_text": model.paired_text, **metrics},
                                                                 indent=2)))
    return metrics


# ---- fine-tuning -----------------------------------------------------------------------------------------
def _tokenizer(data: Any, checkpoint: Any):
    """The checkpoint's own tokenizer when its folder has one (the model's vocabulary), else the data's."""
    if isinstance(checkpoint, (str, Path)):
        folder = locate_pretrained(checkpoint).tokenizer_dir
        if folder is not None:
            tokenizer = load_tokenizer(folder)
            other = getattr(data, "tokenizer", None)
            if other is not None and other.get_vocab() != tokenizer.get_vocab():
                logger.warning("the data's tokenizer differs from the checkpoint's (%s); using the checkpoint's",
                               folder)
            return tokenizer
    if getattr(data, "tokenizer", None) is not None:
        return data.tokenizer
    if isinstance(data, Mapping) and "tokenizer" in data:
        return load_tokenizer(data["tokenizer"])
    raise FileNotFoundError("no tokenizer: pass a checkpoint folder with tokenizer/ (a pretraining run), a "
                            "ShapesSetup, or data={'tokenizer': <folder>, 'train': ..., 'val': ...}")


def _attribute_names(data: Any, checkpoint: Any, model: DetectionModel) -> list[str]:
    """Names of the (unchanged) attribute head, carried over from the checkpoint folder or the shapes setup."""
    names: list[str] = []
    if isinstance(checkpoint, (str, Path)) and locate_pretrained(checkpoint).labels is not None:
        names = load_labels(locate_pretrained(checkpoint).labels).attributes
    elif getattr(data, "attribute_vocab", None) is not None:
        names = list(data.attribute_vocab)
    return names if len(names) == model.config.num_attributes else []


def finetune_detection(checkpoint: str | Path | E2EVLP | None, setup_or_paths: Any, output_dir: str | Path,
                       config: DetectionConfig | None = None, trainer_overrides: dict | None = None,
                       resume: bool = False) -> FinetuneResult:
    """Fine-tune detection on COCO (or the shapes world), evaluate, and save.

    Args:
        checkpoint: a pretraining run / model folder, an `E2EVLP`, or None for a fresh e2evlp-tiny.
        setup_or_paths: a `ShapesSetup`, a COCO root folder, or `{"train": {...}, "val": {...}, "tokenizer": ...}`
            (see `detection_split`).
        config: the recipe (`DetectionConfig()`: DETR's schedule, paired text on).
        trainer_overrides: `TrainerConfig` fields that override the recipe's (e.g. `max_steps`).
    Writes to `output_dir`: the trainer's `checkpoints/` and `log.jsonl`, `model/` (the task model with
    `tokenizer/`, `labels.json` and `preprocessing.json`: `E2EVLPPredictor.from_pretrained` reads it),
    `detections_<split>_results.json`, `metrics_<split>.json` and `metrics.json`.
    Returns:
        The `FinetuneResult` (also in `metrics.json`): `metrics` {eval_split: COCOeval stats}; `info`
        {"paired_text", "new_parameters"}.
    """
    config = config or DetectionConfig()
    output_dir = Path(output_dir)
    setup_or_paths = detection_data(setup_or_paths)
    tokenizer = _tokenizer(setup_or_paths, checkpoint)
    trainer_config = config.trainer_config(output_dir, trainer_overrides)
    train_set = DetectionDataset(detection_split(setup_or_paths, "train"), config.train_transforms(),
                                 config.paired_text, train=True, seed=trainer_config.seed)
    overrides = fresh_overrides(setup_or_paths, tokenizer) if checkpoint is None else {}
    overrides.pop("num_classes", None)  # the dataset's category count decides
    model = DetectionModel.from_checkpoint(checkpoint, num_classes=train_set.num_classes,
                                           paired_text=config.paired_text, class_names=train_set.category_names,
                                           **overrides)
    criterion = build_criterion(config, train_set.num_classes)

    def score(m: DetectionModel, out: Path | None, num_workers: int) -> dict[str, Any]:
        return evaluate_detection(m, tokenizer, setup_or_paths, config.eval_split, out, config)

    def save(model_dir: Path) -> None:
        save_tokenizer(tokenizer, model_dir / "tokenizer")
        save_labels(model_dir, train_set.category_names, _attribute_names(setup_or_paths, checkpoint, model),
                    category_ids=[train_set.label_to_category_id[k] for k in range(train_set.num_classes)])
        save_preprocessing(model_dir, config.eval_size, config.max_size)

    return run_finetune("detection", model, functools.partial(detection_loss, criterion=criterion), train_set,
                        DetectionCollator(tokenizer, model.config.max_text_length), config, output_dir,
                        trainer_config, scorers={config.eval_split: score}, checkpoint=checkpoint, resume=resume,
                        info={"paired_text": config.paired_text, "new_parameters": model.new_parameters},
                        save=save)


def evaluate_finetuned(model_dir: str | Path, data: Any, split: str | None = None,
                       output_dir: str | Path | None = None, config: DetectionConfig | Mapping | None = None, *,
                       device: str | torch.device = "cpu") -> dict[str, Any]:
    """`evaluate_detection` of a `finetune_detection` output folder (or its `model/`) on `split` of `data`
    (default: the recipe's `eval_split`), with the recorded recipe's image size and batch size (`config`: see
    `load_finetuned`); the text paired with each image follows the model's `paired_text`. Returns its metrics with
    "split"."""
    model, config = load_finetuned(DetectionModel, DetectionConfig, model_dir, config)
    data = detection_data(data)
    tokenizer = locate_pretrained(model_dir).tokenizer_dir
    tokenizer = load_tokenizer(tokenizer) if tokenizer is not None else _tokenizer(data, None)
    split = split or config.eval_split
    return {"split": split, **evaluate_detection(model.to(device), tokenizer, data, split, output_dir, config)}


TASK = register_task(Task(
    name="detection", config_class=DetectionConfig, model_class=DetectionModel, finetune=finetune_detection,
    evaluate=evaluate_finetuned,
    summary="COCO detection with paired text (DETR set criterion; COCO AP)"))
