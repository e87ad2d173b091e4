"""NLVR2 with E2E-VLP: is a sentence true of a pair of images?

Recipe (E2E-VLP, following LXMERT / UNITER's "paired" setting):

* each image of the pair is encoded with the sentence, `[CLS] sentence [SEP] image grid`; the two images of a
  batch of B pairs go through `encode` as one batch of 2B (pair i: rows 2i = left, 2i+1 = right, the sentence
  repeated), and the `[CLS]` states [2B, d] (the text means with `pooling: text_mean`) are reshaped to
  [B, 2d] = (left ; right);
* head: Linear(2d, 2d) - GELU - LayerNorm - Linear(2d, 2) (`NLVR2Head`; index 1 = True); cross-entropy;
* optimisation: the VQA recipe (batch 32, 12 epochs, lr 1e-4 with x0.1 after epochs 6 and 9);
* metric: the official accuracy (and consistency) of `nlvr2/eval/metrics.py` on the official prediction CSV
  (`identifier,True|False`), on dev and test-P (`test1`) separately.

Images are never flipped: "left"/"right" name the two images, not positions inside one.

    model = NLVR2Model.from_pretrained("runs/nlvr2/model")
    model.predict([left], [right], ["The left image has more stars than the right image."])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ..data.batch import Batch, collate_images, collate_texts
from ..data.raw_images import prepare_images
from ..data.readers.nlvr2 import NLVR2Dataset
from ..data.task_data import NLVR2Data, NLVR2Split
from ..data.transforms import make_eval_transforms, make_train_transforms
from ..engine import TrainerConfig
from ..metrics import nlvr2 as nlvr2_metric
from ..models import E2EVLP
from ..ops.distributed import gather_shards, shard_range
from .base import (
    MLPClassifier,
    TaskConfig,
    TaskModel,
    TaskOutput,
    check_tokenizer,
    eval_split,
    find_tokenizer,
    fresh_overrides,
    load_e2evlp,
    load_finetuned,
    mean_by_group,
    task_trainer,
)
from .finetuning import FinetuneResult, results_scorers, run_finetune
from .registry import Task, register_task

SPLIT_ALIASES = {"val": "dev", "test": "test1"}  # `evaluate --split val|test`: NLVR2's dev and test-P


# ---- configuration ---------------------------------------------------------------------------------------
@dataclass
class NLVR2Config(TaskConfig):
    """Fine-tuning hyper-parameters; the defaults are the paper's recipe (the same schedule as VQA).

    `train_scales`, `max_size` and `eval_size` left at None take the data's defaults (see `VQAConfig`).
    `trainer`: the optimisation recipe (`TrainerConfig`); a run's own settings go in `trainer_overrides`.
    """

    trainer: TrainerConfig = field(default_factory=lambda: task_trainer(
        batch_size=32, epochs=12, lr=1e-4, backbone_lr=1e-5, lr_drop_epochs=[6, 9], lr_drop_factor=0.1,
        weight_decay=1e-4, clip_max_norm=0.1, seed=42))
    frozen_trunk: bool = False  # not the paper: trunk frozen, features cached per image (feature_cache.py)
    trunk_cache_megabytes: float = 2048.0
    train_scales: list[int] | None = None
    max_size: int | None = None
    eval_size: int | None = None
    eval_batch_size: int = 64  # pairs

    def __post_init__(self) -> None:
        self.check_trainer()
        if self.train_scales is not None:
            self.train_scales = [int(s) for s in self.train_scales]


# ---- data ------------------------------------------------------------------------------------------------
class NLVR2Collator:
    """NLVR2Dataset samples -> `Batch` of B pairs.

    `pixel_values` [2B, 3, H, W] / `pixel_mask` [2B, H, W] / `targets` (2B): pair i at rows 2i (left) and 2i+1
    (right); `input_ids`, `attention_mask`, `token_type_ids` [B, L]: one sentence per pair; `labels` [B] (1 = True);
    `meta`: {"identifier", "image_id"} per pair.
    """

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, samples: Sequence[dict]) -> Batch:
        if not samples:
            raise ValueError("NLVR2Collator got an empty batch")
        for s in samples:
            if len(s["images"]) != 2:
                raise ValueError(f"NLVR2 example {s.get('identifier')!r} has {len(s['images'])} images; expected 2")
        pixel_values, pixel_mask = collate_images([img for s in samples for img in s["images"]])
        input_ids, attention_mask, token_type_ids = collate_texts([s["text"] for s in samples], self.tokenizer,
                                                                  self.max_length)
        return Batch(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids,
                     attention_mask=attention_mask, token_type_ids=token_type_ids,
                     targets=[t for s in samples for t in s["targets"]],
                     labels=torch.tensor([int(s["label"]) for s in samples], dtype=torch.long),
                     meta=[{"identifier": s["identifier"], "image_id": s["image_id"]} for s in samples])


# ---- model -----------------------------------------------------------------------------------------------
class NLVR2Head(MLPClassifier):
    """The concatenated `[CLS]` states [B, 2d] of the left and right image -> [B, 2] logits (index 1 = True):
    Linear(2d, 2d) - GELU - LayerNorm - Linear(2d, 2), as LXMERT's NLVR2 classifier."""

    def __init__(self, d_model: int, layer_norm_eps: float = 1e-12) -> None:
        super().__init__(2 * d_model, 2 * d_model, 2, layer_norm_eps)


class NLVR2Prediction(NamedTuple):
    """Whether the sentence is judged true of the pair, and the probability of True."""

    label: bool
    probability: float


class NLVR2Model(TaskModel):
    """E2EVLP + `NLVR2Head`, with the tokenizer and evaluation image transform that `predict` uses.

    Build it with `from_checkpoint` (pretrained E2EVLP, new head) or `from_pretrained` (a saved NLVR2 model).
    """

    task_name = "nlvr2"
    legacy_files = ("nlvr2_task.json", "nlvr2_config.json")

    def __init__(self, e2evlp: E2EVLP, tokenizer=None, eval_size: int = 800, max_size: int = 1333) -> None:
        super().__init__(e2evlp, NLVR2Head(e2evlp.config.d_model, e2evlp.config.layer_norm_eps))
        self.tokenizer = tokenizer
        self.set_image_size(eval_size, max_size)

    def set_image_size(self, eval_size: int, max_size: int) -> None:
        """The preprocessing of `predict`: shorter side to `eval_size`, longer side at most `max_size`."""
        self.eval_size, self.max_size = int(eval_size), int(max_size)
        self.eval_transforms = make_eval_transforms(self.eval_size, self.max_size)

    def forward(self, batch: Batch) -> TaskOutput:
        """`Batch` of B pairs (pixel_values [2B, 3, H, W] with pair i at rows 2i, 2i+1; input_ids [B, L])
        -> `TaskOutput(logits=[B, 2])` (index 1 = True)."""
        pairs = batch.input_ids.shape[0]
        if batch.pixel_values.shape[0] != 2 * pairs:
            raise ValueError(f"NLVR2 batch of {pairs} sentences needs {2 * pairs} images (left, right per pair), "
                             f"got {batch.pixel_values.shape[0]}")
        types = None if batch.token_type_ids is None else batch.token_type_ids.repeat_interleave(2, 0)
        encoding = self.e2evlp.encode(batch.pixel_values, batch.pixel_mask, batch.input_ids.repeat_interleave(2, 0),
                                      batch.attention_mask.repeat_interleave(2, 0), types)
        pooled = self.e2evlp.pooled_state(encoding)
        return TaskOutput(logits=self.head(pooled.reshape(pairs, -1)))  # row i = [left ; right]

    # ---- inference -------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, left_images: Sequence, right_images: Sequence, sentences: Sequence[str],
                batch_size: int = 32) -> list[NLVR2Prediction]:
        """Judge each sentence on its (left, right) pair; images as `vlpkit.data.raw_images` accepts them (PIL,
        uint8 or float [0, 1] tensors [3, H, W]); a bad image is named by its side and index ("left[3]")."""
        if self.tokenizer is None:
            raise ValueError("NLVR2Model has no tokenizer: pass tokenizer= to from_checkpoint, or set "
                             "model.tokenizer")
        if isinstance(sentences, str):
            raise TypeError("sentences must be a list of strings (one per pair), got a single string")
        left, right, sentences = list(left_images), list(right_images), list(sentences)
        if not len(left) == len(right) == len(sentences):
            raise ValueError(f"need one left image, one right image and one sentence per pair: got {len(left)} "
                             f"left, {len(right)} right, {len(sentences)} sentences")
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        out = []
        try:
            for start in range(0, len(sentences), batch_size):
                chunk = range(start, min(len(sentences), start + batch_size))
                images = prepare_images([side[i] for i in chunk for side in (left, right)], self.eval_transforms,
                                        names=[f"{name}[{i}]" for i in chunk for name in ("left", "right")])
                ids, mask, types = collate_texts([sentences[i] for i in chunk], self.tokenizer,
                                                 self.config.max_text_length)
                batch = Batch(images.pixel_values, images.pixel_mask, ids, mask, types, targets=[]).to(device)
                probs = self(batch).logits.float().softmax(-1)[:, 1].tolist()
                out += [NLVR2Prediction(p > 0.5, p) for p in probs]
        finally:
            self.train(was_training)
        return out

    # ---- construction and persistence ------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path | E2EVLP | None, tokenizer=None, *, eval_size: int = 800,
                        max_size: int = 1333, preset: str = "e2evlp-tiny", **overrides) -> NLVR2Model:
        """A pretrained E2EVLP (`save_pretrained` folder, model, or None: a fresh `preset` with `overrides`) with a
        newly initialised head, whose parameter names are logged and kept in `new_parameters`."""
        model = cls(load_e2evlp(checkpoint, preset, **overrides), tokenizer, eval_size, max_size)
        if checkpoint is not None:  # a fresh model is new throughout: nothing to single out
            model.report_new_parameters()
        return model

    def arguments(self) -> dict[str, Any]:
        return {"eval_size": self.eval_size, "max_size": self.max_size}

    @classmethod
    def from_arguments(cls, e2evlp: E2EVLP, tokenizer, arguments: dict[str, Any], directory: Path) -> NLVR2Model:
        return cls(e2evlp, tokenizer, arguments["eval_size"], arguments["max_size"])


# ---- loss ------------------------------------------------------------------------------------------------
def nlvr2_loss(model: NLVR2Model, batch: Batch) -> dict[str, torch.Tensor]:
    """Trainer loss: {"loss": cross-entropy of the [B, 2] logits against `batch.labels`, "accuracy": the batch's
    accuracy (detached)}."""
    if batch.labels is None:
        raise ValueError("nlvr2_loss needs batch.labels")
    logits = model(batch).logits
    loss = F.cross_entropy(logits.float(), batch.labels)
    accuracy = (logits.detach().argmax(-1) == batch.labels).float().mean()
    return {"loss": loss, "accuracy": accuracy}


# ---- evaluation ------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_nlvr2(model: NLVR2Model, dataset: NLVR2Dataset, tokenizer, batch_size: int = 64,
                  num_workers: int = 0) -> dict[str, Any]:
    """Predictions for every example of `dataset` (built with eval transforms). Under torch.distributed each process
    judges its share (`shard_range`) and every process returns them all.

    Returns:
        {"identifiers": [N], "predictions": [N] bools, "labels": [N] bools (from the file)}.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(Subset(dataset, shard_range(len(dataset))), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=NLVR2Collator(tokenizer, model.config.max_text_length))
    identifiers, predictions, labels = [], [], []
    try:
        for batch in loader:
            identifiers += [m["identifier"] for m in batch.meta]
            predictions += (model(batch.to(device)).logits.argmax(-1) == 1).tolist()
            labels += (batch.labels == 1).tolist()
    finally:
        model.train(was_training)
    identifiers, predictions, labels = (gather_shards(x) for x in (identifiers, predictions, labels))
    return {"identifiers": identifiers, "predictions": predictions, "labels": labels}


def evaluate_nlvr2(model: NLVR2Model, tokenizer, data: NLVR2Split, split: str = "dev",
                   output_dir: str | Path | None = None, *, transforms=None, batch_size: int = 64,
                   num_workers: int = 0) -> dict[str, Any]:
    """Judge every example of a split, write the official prediction CSV and score it with the official metric.

    Args:
        model: an `NLVR2Model`.
        tokenizer: the tokenizer of the model's text vocabulary.
        data: the split's files.
        split: its name (in the file name and the returned dict).
        output_dir: where to write `<split>_predictions.csv` (`identifier,True|False` lines); None: not written
            (the predictions are still scored).
        transforms: the image transform (default: `model.eval_transforms`).
    Returns:
        {"split", "num_examples", "accuracy", "consistency" (official, in percent), "in_loop_accuracy" (percent,
        from the labels seen in the loop), "predictions_file" (when written), and with `data.groups`
        "accuracy_<group>" (percent) and "examples_<group>" (count) for every group}.
    Raises:
        ValueError: `data.groups` lacks some identifier of the split (named).
    """
    dataset = data.dataset(transforms if transforms is not None else model.eval_transforms)
    pred = predict_nlvr2(model, dataset, tokenizer, batch_size, num_workers)
    predictions = dict(zip(pred["identifiers"], pred["predictions"]))
    out: dict[str, Any] = {"split": split, "num_examples": len(predictions)}
    if output_dir is not None:
        path = Path(output_dir) / f"{split}_predictions.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        nlvr2_metric.write_nlvr2_predictions(path, predictions)
        result = nlvr2_metric.evaluate_nlvr2_files(data.jsonl, path)
        out["predictions_file"] = str(path)
    else:
        result = nlvr2_metric.evaluate_nlvr2(nlvr2_metric.load_nlvr2_labels(data.jsonl), predictions)
    out["accuracy"] = 100 * result.accuracy
    out["consistency"] = 100 * result.consistency
    correct = sum(p == y for p, y in zip(pred["predictions"], pred["labels"]))
    out["in_loop_accuracy"] = 100 * correct / max(len(predictions), 1)
    if data.groups is not None:
        hits = {i: float(p == y) for i, p, y in zip(pred["identifiers"], pred["predictions"], pred["labels"])}
        for group, (mean, count) in mean_by_group(hits, data.groups, f"NLVR2 {split}").items():
            out[f"accuracy_{group}"] = 100 * mean  # flat keys, as VQA's accuracy_<answer type>
            out[f"examples_{group}"] = count
    return out


# ---- fine-tuning ---------------------------------------------------------------------------------------------
def finetune_nlvr2(checkpoint: str | Path | E2EVLP | None, setup_or_paths, output_dir: str | Path,
                   config: NLVR2Config | None = None, trainer_overrides: Mapping[str, Any] | None = None, *,
                   tokenizer=None, resume: bool = False) -> FinetuneResult:
    """Fine-tune E2E-VLP on NLVR2, evaluate every evaluation split (dev, test1), save the model and the metrics.

    Args:
        checkpoint: a pretraining `save_pretrained` folder or run folder, an `E2EVLP`, or None (a fresh
            e2evlp-tiny sized for the tokenizer; for the shapes world `setup.model_overrides()`).
        setup_or_paths: a `ShapesSetup`, "shapes", an `NLVR2Data`, or a YAML/JSON description
            (`NLVR2Data.from_dict`).
        output_dir: receives `checkpoints/`, `log.jsonl`, `model/` (`NLVR2Model.save_pretrained`, with the
            recipe), `results/` (official prediction CSVs) and `metrics.json`.
        config: `NLVR2Config` (default: the paper's recipe).
        trainer_overrides: `TrainerConfig` fields applied last (e.g. max_steps, num_workers, eval_every).
        tokenizer: overrides the tokenizer; by default the one saved with the checkpoint, else the data's.
        resume: continue from the latest checkpoint in `output_dir/checkpoints`.
    With `eval_every > 0` the first evaluation split's accuracy is logged during training.

    Returns:
        The `FinetuneResult` (also in `metrics.json`): `metrics` {split: evaluate_nlvr2(...)}; `info`
        {"baselines": {split: {"majority_label": ...}} (shapes world)}.
    """
    config = config if config is not None else NLVR2Config()
    data = NLVR2Data.resolve(setup_or_paths)
    tokenizer = tokenizer or find_tokenizer(checkpoint) or data.tokenizer
    if tokenizer is None:
        raise ValueError("no tokenizer: none is saved with the checkpoint and the data description names none")
    image = config.image_settings(data.kind)
    overrides = fresh_overrides(setup_or_paths, tokenizer) if checkpoint is None else {}
    model = NLVR2Model.from_checkpoint(checkpoint, tokenizer, eval_size=image["eval_size"],
                                       max_size=image["max_size"], **overrides)
    check_tokenizer(tokenizer, model.config)
    train_tf = make_train_transforms(scales=image["train_scales"], max_size=image["max_size"], crop=False,
                                     flip=False)
    return run_finetune("nlvr2", model, nlvr2_loss, data.train.dataset(train_tf),
                        NLVR2Collator(tokenizer, model.config.max_text_length), config, output_dir,
                        config.trainer_config(output_dir, trainer_overrides),
                        scorers=results_scorers(evaluate_nlvr2, tokenizer, data.eval, config.eval_batch_size),
                        watch=next(iter(data.eval), None), checkpoint=checkpoint, resume=resume,
                        info={"baselines": data.baselines})


def evaluate_finetuned(model_dir: str | Path, data="shapes", split: str | None = None,
                       output_dir: str | Path | None = None, config: NLVR2Config | Mapping | None = None, *,
                       device: str | torch.device = "cpu") -> dict[str, Any]:
    """`evaluate_nlvr2` of a `finetune_nlvr2` output folder (or its `model/`) on one evaluation split of `data`
    (default "dev"; "val" and "test" name dev and test1), with the recorded recipe's `eval_batch_size`
    (`config`: see `load_finetuned`)."""
    model, config = load_finetuned(NLVR2Model, NLVR2Config, model_dir, config)
    data = NLVR2Data.resolve(data)
    name, files = eval_split(data.eval, split or "dev", "NLVR2", SPLIT_ALIASES)
    tokenizer = model.tokenizer if model.tokenizer is not None else data.tokenizer
    return evaluate_nlvr2(model.to(device), tokenizer, files, name, output_dir, batch_size=config.eval_batch_size)


TASK = register_task(Task(
    name="nlvr2", config_class=NLVR2Config, model_class=NLVR2Model, finetune=finetune_nlvr2,
    evaluate=evaluate_finetuned,
    summary="NLVR2: is a statement true of a pair of images"
            " (two passes, concatenated; accuracy and consistency)"))
