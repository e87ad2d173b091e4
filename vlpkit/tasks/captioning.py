"""Image captioning (COCO captions / Karpathy split) with E2E-VLP's own decoder.

The encoder reads the image alone (`[CLS] [SEP] grid`, never the caption it predicts); the shared decoder generates
the caption through the caption LM head that pretraining already trained (tied to the word embeddings). Fine-tuning
therefore adds **no parameter**: `CaptionModel.head` is an `nn.Identity`.

- training: teacher forcing, label-smoothed cross-entropy (`vlpkit.losses.label_smoothed_cross_entropy`,
  epsilon 0.1) over the tokens of `[CLS] caption [SEP]` after `[CLS]`;
- inference: beam search (4 beams) with the GNMT length penalty ((5 + len) / 6) ** 0.9 (`vlpkit.generation`);
- evaluation: BLEU-4 and CIDEr-D through pycocoevalcap (`vlpkit.metrics.captioning`); references and candidates
  are PTB-tokenised (Stanford PTBTokenizer when Java is present, its documented pure-python stand-in otherwise);
  results in the COCO caption results format `[{"image_id", "caption"}]`.

Where a split's images and captions are (`CaptionData`, `caption_data`, shared with retrieval) is described in
`vlpkit.data.task_data`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batch import Batch, collate_images, collate_texts
from ..data.raw_images import as_image_list, prepare_images
from ..data.task_data import PATHS_HELP, CaptionData, CaptionSplit, caption_data  # noqa: F401  (public here too)
from ..data.tokenization import DEFAULT_MAX_TEXT_LENGTH, load_tokenizer
from ..data.transforms import make_eval_transforms, make_train_transforms
from ..engine import TrainerConfig
from ..generation.length_penalty import LENGTH_PENALTY_STYLES
from ..losses.label_smoothing import label_smoothed_cross_entropy
from ..metrics.captioning import (
    DEFAULT_METRICS,
    METRICS,
    TOKENIZERS,
    evaluate_captions,
    write_caption_results,
)
from ..models import E2EVLP
from ..ops.distributed import gather_shards, reduce_counts, shard_range
from ..outputs import GenerationOutput
from .base import (  # noqa: F401  (BACKBONE_PREFIX: public here too)
    BACKBONE_PREFIX,
    TaskConfig,
    TaskModel,
    TaskOutput,
    find_tokenizer,
    load_e2evlp,
    load_finetuned,
    task_trainer,
    tokenizer_overrides,
)
from .finetuning import FinetuneResult, run_finetune
from .registry import Task, register_task

DETR_TRAIN_SCALES = tuple(range(480, 801, 32))


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class CaptioningConfig(TaskConfig):
    """Recipe of caption fine-tuning and decoding.

    From the paper (issue 7): label-smoothed loss, beam size 4, GNMT length penalty alpha 0.9. Not stated there,
    chosen by vlpkit: batch 64, lr 5e-5 (the retrieval recipe's), backbone lr lr/10 (DETR's ratio), 10 epochs,
    epsilon 0.1, DETR's image sizes without the random crop (a crop can cut away what the caption mentions).
    """

    trainer: TrainerConfig = field(default_factory=lambda: task_trainer(
        batch_size=64, epochs=10, lr=5e-5, backbone_lr=5e-6, weight_decay=1e-4, clip_max_norm=0.1, seed=42))
    frozen_trunk: bool = False  # not the paper: trunk frozen, features cached per image (feature_cache.py)
    trunk_cache_megabytes: float = 2048.0
    label_smoothing: float = 0.1
    max_caption_length: int = DEFAULT_MAX_TEXT_LENGTH  # tokens of `[CLS] caption [SEP]` in teacher forcing
    num_beams: int = 4
    length_penalty: float = 0.9
    length_penalty_style: str = "gnmt"
    max_generation_length: int = 30  # generated tokens, EOS included
    min_generation_length: int = 0
    train_scales: list[int] = field(default_factory=lambda: list(DETR_TRAIN_SCALES))
    max_size: int = 1333
    eval_size: int = 800
    flip: bool = True  # horizontal flip also swaps "left"/"right" in the caption
    crop: bool = False
    eval_batch_size: int = 16
    eval_tokenizer: str = "auto"  # "auto" (PTB with Java, else the pure-python stand-in), "ptb" or "simple"
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    max_eval_images: int | None = None  # evaluate on the first N images of a split (None: all)

    def __post_init__(self) -> None:
        self.check_trainer()
        self.train_scales = [int(s) for s in self.train_scales]
        self.metrics = list(self.metrics)
        problems = []
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing={self.label_smoothing} (expected 0 <= eps < 1)")
        if self.num_beams < 1:
            problems.append(f"num_beams={self.num_beams} (expected >= 1)")
        if self.length_penalty_style not in LENGTH_PENALTY_STYLES:
            problems.append(f"length_penalty_style={self.length_penalty_style!r} (expected one of "
                            f"{LENGTH_PENALTY_STYLES})")
        if self.max_caption_length < 3:
            problems.append(f"max_caption_length={self.max_caption_length} (expected >= 3: [CLS] word [SEP])")
        if not 0 <= self.min_generation_length <= self.max_generation_length or self.max_generation_length < 1:
            problems.append(f"min/max_generation_length={self.min_generation_length}/{self.max_generation_length}")
        if self.eval_tokenizer not in TOKENIZERS or self.eval_tokenizer == "none":
            problems.append(f"eval_tokenizer={self.eval_tokenizer!r} (expected 'auto', 'ptb' or 'simple')")
        if not self.metrics or any(m not in METRICS for m in self.metrics):
            problems.append(f"metrics={self.metrics} (expected names from {METRICS})")
        if self.eval_batch_size < 1:
            problems.append(f"eval_batch_size={self.eval_batch_size} (expected >= 1)")
        if problems:
            raise ValueError("invalid CaptioningConfig: " + "; ".join(problems))


def load_task_e2evlp(checkpoint, data: CaptionData, preset: str = "e2evlp-tiny") -> E2EVLP:
    """The E2EVLP a task starts from: `checkpoint` (a folder or a model), or a fresh `preset` sized for the data
    (checkpoint=None). The model's vocabulary and special ids must agree with the data's tokenizer; a pretraining
    run that saved its tokenizer beside the model (`<run>/model`, `<run>/tokenizer`) must have used the same one."""
    model = load_e2evlp(checkpoint, preset, **(data.model_overrides if checkpoint is None else {}))
    expected = tokenizer_overrides(data.tokenizer)
    wrong = {k: (getattr(model.config, k), v) for k, v in expected.items() if getattr(model.config, k) != v}
    if wrong:
        raise ValueError(f"the model does not fit the data's tokenizer ((model, tokenizer) values: {wrong}); "
                         "fine-tune with the tokenizer used in pretraining")
    if isinstance(checkpoint, (str, Path)):
        sibling = Path(checkpoint).parent / "tokenizer"
        if (sibling / "vocab.txt").is_file() and load_tokenizer(sibling).get_vocab() != data.tokenizer.get_vocab():
            raise ValueError(f"the data's tokenizer differs from the pretraining tokenizer {sibling}: token ids would "
                             "not mean what the checkpoint learned; give that tokenizer in the data paths")
    return model


# ---------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------
class CaptionCollator:
    """Samples of a captions reader with `per="caption"` (`{"image", "image_id", "target", "text"}`) -> `Batch`.

    Batch fields: pixel_values/pixel_mask; input_ids `[CLS] [SEP]` for every row (the encoder reads the image
    alone); caption_ids/caption_mask `[CLS] caption [SEP] [PAD]...` (teacher forcing input and targets);
    meta `{"image_id", "caption"}`.
    """

    def __init__(self, tokenizer, max_length: int = DEFAULT_MAX_TEXT_LENGTH) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, samples: Sequence[dict]) -> Batch:
        if not samples:
            raise ValueError("CaptionCollator got an empty batch")
        for s in samples:
            if "text" not in s:
                raise KeyError(f"sample of image {s.get('image_id')!r} has no 'text' (keys {sorted(s)}); read the "
                               "training split with per='caption'")
        pixel_values, pixel_mask = collate_images([s["image"] for s in samples])
        caption_ids, caption_mask, _ = collate_texts([s["text"] for s in samples], self.tokenizer, self.max_length)
        b = len(samples)
        tok = self.tokenizer
        input_ids = torch.tensor([[tok.cls_token_id, tok.sep_token_id]]).repeat(b, 1)
        return Batch(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids,
                     attention_mask=torch.ones_like(input_ids), token_type_ids=torch.zeros_like(input_ids),
                     targets=[s["target"] for s in samples], caption_ids=caption_ids, caption_mask=caption_mask,
                     meta=[{"image_id": s["image_id"], "caption": s["text"]} for s in samples])


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class CaptionPrediction:
    """`CaptionModel.caption` output, one entry per image.

    captions: the best caption; scores: its length-penalised log-probability (higher = better);
    beams / beam_scores: every returned hypothesis, best first (only with `return_all_beams=True`).
    """

    captions: list[str]
    scores: list[float]
    beams: list[list[str]] | None = None
    beam_scores: list[list[float]] | None = None


class CaptionModel(TaskModel):
    """E2EVLP fine-tuned for captioning. No new parameter: the head is the pretrained caption LM head.

    `tokenizer` (for `caption`) and the evaluation image size are kept on the instance, not in the weights;
    `save_pretrained(directory, config)` records them (tokenizer/, `task.json`).
    """

    task_name = "caption"
    legacy_files = (None, "captioning_config.json")

    def __init__(self, e2evlp: E2EVLP, tokenizer=None, eval_size: int = 800, max_size: int = 1333) -> None:
        super().__init__(e2evlp, nn.Identity())
        self.tokenizer = tokenizer
        self.eval_size, self.max_size = eval_size, max_size

    @classmethod
    def from_checkpoint(cls, checkpoint_or_model: str | Path | E2EVLP | None, tokenizer=None, eval_size: int = 800,
                        max_size: int = 1333, preset: str = "e2evlp-tiny", **overrides) -> CaptionModel:
        """Wrap a pretrained E2EVLP (folder from `E2EVLP.save_pretrained`, a model, or None: a fresh `preset`)."""
        model = cls(load_e2evlp(checkpoint_or_model, preset, **overrides), tokenizer, eval_size, max_size)
        model.report_new_parameters()  # empty: the caption head was trained in pretraining
        return model

    def arguments(self) -> dict[str, Any]:
        return {"eval_size": self.eval_size, "max_size": self.max_size}

    @classmethod
    def from_arguments(cls, e2evlp: E2EVLP, tokenizer, arguments: dict[str, Any], directory: Path) -> CaptionModel:
        return cls(e2evlp, tokenizer, arguments["eval_size"], arguments["max_size"])

    @classmethod
    def legacy_arguments(cls, stored: dict[str, Any], recipe: dict[str, Any] | None) -> dict[str, Any]:
        recipe = CaptioningConfig.from_dict(recipe or {})
        return {"eval_size": recipe.eval_size, "max_size": recipe.max_size}

    def forward(self, batch: Batch) -> TaskOutput:
        """Teacher-forced next-token logits from the image alone.

        Uses batch.pixel_values/pixel_mask and batch.caption_ids [B, T] (batch.input_ids is not read).
        Returns `TaskOutput(logits=[B, T-1, vocab_size])`; position t predicts caption_ids[:, t + 1].
        """
        if batch.caption_ids is None:
            raise ValueError("CaptionModel.forward needs batch.caption_ids ([CLS] caption [SEP] token ids)")
        encoding = self.e2evlp.encode(batch.pixel_values, batch.pixel_mask)
        return TaskOutput(logits=self.head(self.e2evlp.caption_logits(encoding, batch.caption_ids[:, :-1])))

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None,
                 **kwargs) -> GenerationOutput:
        """Beam search / greedy decoding of preprocessed images; kwargs as `vlpkit.generation.generate`."""
        return self.e2evlp.generate(pixel_values, pixel_mask, **kwargs)

    @torch.no_grad()
    def caption(self, images, num_beams: int = 4, max_length: int = 30, min_length: int = 0,
                length_penalty: float = 0.9, length_penalty_style: str = "gnmt", return_all_beams: bool = False,
                batch_size: int = 16) -> CaptionPrediction:
        """Caption raw images: one PIL image or tensor [3, H, W], a batch [B, 3, H, W], or a list.

        Images are resized (shorter side `eval_size`, longer at most `max_size`) and normalised here. Decoding runs
        in eval mode (the previous mode is restored) on the model's device.
        Returns a `CaptionPrediction` (with every beam when `return_all_beams`).
        """
        if self.tokenizer is None:
            raise ValueError("CaptionModel.caption needs a tokenizer: pass tokenizer= to from_checkpoint/"
                             "from_pretrained or set model.tokenizer")
        images = as_image_list(images)
        transforms = make_eval_transforms(self.eval_size, self.max_size)
        device = next(self.parameters()).device
        out = CaptionPrediction([], [], [] if return_all_beams else None, [] if return_all_beams else None)
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(images), batch_size):
                prepared = prepare_images(images[start:start + batch_size], transforms, start)
                pixel_values, pixel_mask = prepared.pixel_values, prepared.pixel_mask
                gen = self.generate(pixel_values.to(device), pixel_mask.to(device), num_beams=num_beams,
                                    max_length=max_length, min_length=min_length, length_penalty=length_penalty,
                                    length_penalty_style=length_penalty_style,
                                    num_return_sequences=num_beams if return_all_beams else 1)
                out.captions += self.tokenizer.batch_decode(gen.sequences.cpu(), skip_special_tokens=True)
                out.scores += gen.scores.float().cpu().tolist()
                if return_all_beams:
                    every = gen.all_sequences if gen.all_sequences is not None else gen.sequences[:, None]
                    every_scores = gen.all_scores if gen.all_scores is not None else gen.scores[:, None]
                    out.beams += [self.tokenizer.batch_decode(seqs.cpu(), skip_special_tokens=True) for seqs in every]
                    out.beam_scores += every_scores.float().cpu().tolist()
        finally:
            self.train(was_training)
        return out


# ---------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------
def captioning_loss(model: CaptionModel, batch: Batch, label_smoothing: float = 0.1) -> dict[str, torch.Tensor]:
    """Label-smoothed cross-entropy of the caption tokens after [CLS] ([SEP] included, padding excluded).

    Normalised by the number of target tokens averaged over processes (so DDP gradients equal one large
    batch's). Returns {"loss", "nll"} ("nll": the unsmoothed cross-entropy, for logging).
    """
    logits = model(batch).logits.float()
    targets = batch.caption_ids[:, 1:]
    pad = model.config.pad_token_id
    (num_tokens,) = reduce_counts([int((targets != pad).sum())], logits.device)
    loss = label_smoothed_cross_entropy(logits, targets, label_smoothing, ignore_index=pad,
                                        reduction="sum") / num_tokens
    with torch.no_grad():
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad, reduction="sum") / num_tokens
    return {"loss": loss, "nll": nll}


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------
def _unwrap(model) -> tuple[E2EVLP, nn.Module]:
    if isinstance(model, TaskModel):
        return model.e2evlp, model
    if isinstance(model, E2EVLP):
        return model, model
    raise TypeError(f"expected a CaptionModel or E2EVLP, got {type(model).__name__}")


@torch.no_grad()
def predict_captions(model, tokenizer, reader, config: CaptioningConfig | None = None,
                     max_images: int | None = None) -> tuple[dict, dict]:
    """Caption the images of a `per="image"` reader (with evaluation transforms). Under torch.distributed each
    process captions its share (`shard_range`) and every process returns them all.

    Returns ({image_id: caption}, {image_id: [reference captions]}).
    """
    config = config or CaptioningConfig()
    e2evlp, module = _unwrap(model)
    device = next(e2evlp.parameters()).device
    n = len(reader) if max_images is None else min(max_images, len(reader))
    share = shard_range(n)
    predictions, references = {}, {}
    was_training = module.training
    module.eval()
    try:
        for start in range(share.start, share.stop, config.eval_batch_size):
            samples = [reader[i] for i in range(start, min(share.stop, start + config.eval_batch_size))]
            pixel_values, pixel_mask = collate_images([s["image"] for s in samples])
            gen = e2evlp.generate(pixel_values.to(device), pixel_mask.to(device), num_beams=config.num_beams,
                                  max_length=config.max_generation_length, min_length=config.min_generation_length,
                                  length_penalty=config.length_penalty,
                                  length_penalty_style=config.length_penalty_style)
            for s, text in zip(samples, tokenizer.batch_decode(gen.sequences.cpu(), skip_special_tokens=True)):
                predictions[s["image_id"]] = text
                references[s["image_id"]] = list(s["captions"])
    finally:
        module.train(was_training)
    return dict(gather_shards(list(predictions.items()))), dict(gather_shards(list(references.items())))


def evaluate_captioning(model, tokenizer, data, split: str = "test", output_dir: str | Path | None = None,
                        config: CaptioningConfig | None = None) -> dict[str, float]:
    """Caption every image of `split` (beam search) and score against its reference captions.

    Args:
        model: a CaptionModel (or an E2EVLP). tokenizer: decodes the generated ids.
        data: anything `caption_data` accepts. config: decoding and metric settings (default recipe).
        output_dir: when given, writes `captions_{split}_vlpkit_results.json` (COCO caption results format,
            `[{"image_id", "caption"}]`) and `captions_{split}_metrics.json`.
    Returns:
        {"Bleu_1".."Bleu_4", "ROUGE_L", "CIDEr"} (the configured metrics, pycocoevalcap scales: fractions, CIDEr-D
        about 0-10) and "num_images".
    """
    config = config or CaptioningConfig()
    data = caption_data(data, tokenizer)
    reader = data.split(split).reader("image", make_eval_transforms(config.eval_size, config.max_size))
    predictions, references = predict_captions(model, tokenizer, reader, config, config.max_eval_images)
    metrics = evaluate_captions(references, predictions, tokenizer=config.eval_tokenizer, metrics=config.metrics)
    metrics["num_images"] = float(len(predictions))
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_caption_results(out / f"captions_{split}_vlpkit_results.json", predictions)
        (out / f"captions_{split}_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------------------------
def finetune_captioning(checkpoint, setup_or_paths, output_dir: str | Path,
                        config: CaptioningConfig | Mapping | None = None,
                        trainer_overrides: Mapping[str, Any] | None = None, resume: bool = False) -> FinetuneResult:
    """Fine-tune for captioning, evaluate on the val and test splits, save model and metrics.

    Args:
        checkpoint: a pretraining folder (`E2EVLP.save_pretrained`) or run folder, an E2EVLP, or None (a fresh
            e2evlp-tiny sized for the data's tokenizer).
        setup_or_paths: see `caption_data`.
        output_dir: receives the trainer's checkpoints and log, `model/` (CaptionModel.save_pretrained, with its
            tokenizer and recipe), the official results files of val and test (`captions_<split>_vlpkit_results.json`)
            and `metrics.json`.
        config: a CaptioningConfig or a dict of its fields. trainer_overrides: TrainerConfig fields.
    The val split is scored at every evaluation and at the last step (which writes its results file).

    Returns:
        The `FinetuneResult` (also in `metrics.json`): `metrics` {val split: ..., test split: ...}
        (`evaluate_captioning`), for the splits the data has.
    """
    config = config if isinstance(config, CaptioningConfig) else CaptioningConfig.from_dict(config or {})
    data = caption_data(setup_or_paths, find_tokenizer(checkpoint))
    model = CaptionModel.from_checkpoint(load_task_e2evlp(checkpoint, data), data.tokenizer, config.eval_size,
                                         config.max_size)
    train_tf = make_train_transforms(scales=config.train_scales, max_size=config.max_size, crop=config.crop,
                                     flip=config.flip)
    scorers = split_scorers(evaluate_captioning, data, config)
    return run_finetune("caption", model, functools.partial(captioning_loss, label_smoothing=config.label_smoothing),
                        data.split(config.train_split).reader("caption", train_tf),
                        CaptionCollator(data.tokenizer, config.max_caption_length), config, output_dir,
                        config.trainer_config(output_dir, trainer_overrides), scorers=scorers,
                        watch=config.val_split if config.val_split in scorers else None, watch_writes=True,
                        checkpoint=checkpoint, resume=resume)


def split_scorers(evaluate: Callable, data: CaptionData, config: Any) -> dict[str, Callable]:
    """`run_finetune` scorers of the recipe's val and test splits that `data` has (captioning, retrieval):
    `evaluate(model, data.tokenizer, data, split, out, config)` (its loader workers are the recipe's)."""
    return {split: functools.partial(_score, evaluate, data, split, config)
            for split in (config.val_split, config.test_split) if split in data.splits}


def _score(evaluate: Callable, data: CaptionData, split: str, config: Any, model: TaskModel, out: Path | None,
           num_workers: int) -> dict[str, Any]:
    return evaluate(model, data.tokenizer, data, split, out, config)


def evaluate_finetuned(model_dir: str | Path, data, split: str | None = None, output_dir: str | Path | None = None,
                       config: CaptioningConfig | Mapping | None = None, *,
                       device: str | torch.device = "cpu") -> dict[str, Any]:
    """`evaluate_captioning` of a `finetune_captioning` output folder (or its `model/`) on `split` of `data`
    (default: the recipe's `test_split`), decoded and scored with the recorded recipe (`config`: see
    `load_finetuned`). Returns its metrics with "split"."""
    model, config = load_finetuned(CaptionModel, CaptioningConfig, model_dir, config)
    data = caption_data(data, model.tokenizer)
    split = split or config.test_split
    tokenizer = model.tokenizer if model.tokenizer is not None else data.tokenizer
    return {"split": split, **evaluate_captioning(model.to(device), tokenizer, data, split, output_dir, config)}


TASK = register_task(Task(
    name="caption", config_class=CaptioningConfig, model_class=CaptionModel, finetune=finetune_captioning,
    evaluate=evaluate_finetuned,
    summary="COCO captioning: generate a caption (label-smoothed loss, beam search; BLEU-4, CIDEr-D)"))
