"""Image-text retrieval (Flickr30K / COCO) with a cross-modal matching score and circle loss.

- score: `RetrievalHead` on the fused [CLS] state of `[CLS] text [SEP] grid` (the text mean with the model's
  `pooling: text_mean`) -> one logit per (image, text) pair.
  By default it starts as the pretrained ITM head's log-odds: pooler copied, weight = w_matched - w_unmatched,
  bias = b_matched - b_unmatched, so sigmoid(logit) equals the ITM "matched" probability before fine-tuning.
- loss: circle loss (Sun et al., 2020; `vlpkit.losses.circle`) on the similarity s = sigmoid(logit) in [0, 1].
  Each image of a batch is an anchor with its caption as positive and sampled captions of other images as
  negatives; each caption is an anchor with its image as positive and sampled other images as negatives.
  Negatives are drawn among the other samples of the batch, "random" (uniform) or "hard" (the highest-scoring of a
  random pool, scored without gradient); a caption identical to one of the anchor image's own captions is never a
  negative (frequent in COCO and the shapes world: "a man riding a wave on a surfboard").
- evaluation: recall@1/5/10 of text retrieval (image queries: a hit when any of the image's captions is in the top
  K) and image retrieval (caption queries), `vlpkit.metrics.retrieval`. Every pair needs its own encoder pass:
  "full" scores all pairs (each image's backbone features computed once, texts batched); "rerank" ranks with a
  cheap score, the cosine of separately encoded image-only and text-only [CLS] states, then re-scores each
  query's top k candidates with the full model (ALBEF's protocol; candidates beyond k keep the cheap order).
"""

from __future__ import annotations

import functools
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data.batch import Batch, collate_images, collate_texts
from ..data.masking import normalise_caption
from ..data.raw_images import as_image_list, prepare_images
from ..data.task_data import CaptionData, caption_data
from ..data.tokenization import DEFAULT_MAX_TEXT_LENGTH
from ..data.transforms import make_eval_transforms, make_train_transforms
from ..engine import TrainerConfig
from ..losses.circle import circle_loss
from ..metrics.retrieval import RetrievalResult, retrieval_recall
from ..models import E2EVLP
from ..models.heads import ITMHead, Pooler
from ..ops.distributed import gather_shards, shard_range
from ..outputs import EncoderOutput, ImageEmbedding
from .base import (
    TaskConfig,
    TaskModel,
    TaskOutput,
    find_tokenizer,
    load_e2evlp,
    load_finetuned,
    task_trainer,
)
from .captioning import DETR_TRAIN_SCALES, load_task_e2evlp, split_scorers
from .finetuning import FinetuneResult, run_finetune
from .registry import Task, register_task

logger = logging.getLogger(__name__)

NEGATIVE_SAMPLING = ("random", "hard")
HEAD_INITS = ("itm", "random")
EVAL_MODES = ("full", "rerank")


# ---------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RetrievalConfig(TaskConfig):
    """Recipe of retrieval fine-tuning and evaluation.

    From the paper (issue 7): circle loss, batch 64, lr 5e-5, 4 epochs. Chosen by vlpkit: margin 0.4 and gamma 80
    (Sun et al.'s setting for fine-grained image retrieval with pair-wise labels), 3 + 3 random in-batch negatives
    per positive, backbone lr lr/10 (DETR's ratio), DETR's image sizes without the crop, re-ranking k = 128.
    """

    trainer: TrainerConfig = field(default_factory=lambda: task_trainer(
        batch_size=64, epochs=4, lr=5e-5, backbone_lr=5e-6, weight_decay=1e-4, clip_max_norm=0.1, seed=42))
    frozen_trunk: bool = False  # not the paper: trunk frozen, features cached per image (feature_cache.py)
    trunk_cache_megabytes: float = 2048.0
    margin: float = 0.4
    gamma: float = 80.0
    num_text_negatives: int = 3  # wrong captions per image anchor
    num_image_negatives: int = 3  # wrong images per caption anchor
    negatives: str = "random"  # "random" | "hard"
    hard_negative_pool: int = 16  # "hard": candidates scored (no gradient) per anchor, the best kept
    head_init: str = "itm"  # "itm" (log-odds of the pretrained ITM head) | "random"
    max_text_length: int = DEFAULT_MAX_TEXT_LENGTH
    train_scales: list[int] = field(default_factory=lambda: list(DETR_TRAIN_SCALES))
    max_size: int = 1333
    eval_size: int = 800
    flip: bool = True  # horizontal flip also swaps "left"/"right" in the captions
    crop: bool = False
    eval_mode: str = "full"  # "full" | "rerank"
    rerank_k: int = 128
    image_batch_size: int = 16  # images per backbone pass in evaluation
    pair_batch_size: int = 256  # (image, text) pairs per encoder pass in evaluation
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    max_eval_images: int | None = None  # evaluate on the first N images of a split and their captions

    def __post_init__(self) -> None:
        self.check_trainer()
        self.train_scales = [int(s) for s in self.train_scales]
        self.ks = [int(k) for k in self.ks]
        problems = []
        if not self.margin >= 0 or not self.gamma > 0:
            problems.append(f"margin={self.margin}, gamma={self.gamma} (expected margin >= 0, gamma > 0)")
        if self.negatives not in NEGATIVE_SAMPLING:
            problems.append(f"negatives={self.negatives!r} (expected one of {NEGATIVE_SAMPLING})")
        if self.head_init not in HEAD_INITS:
            problems.append(f"head_init={self.head_init!r} (expected one of {HEAD_INITS})")
        if self.eval_mode not in EVAL_MODES:
            problems.append(f"eval_mode={self.eval_mode!r} (expected one of {EVAL_MODES})")
        if self.num_text_negatives < 0 or self.num_image_negatives < 0:
            problems.append(f"num_text_negatives={self.num_text_negatives}, num_image_negatives="
                            f"{self.num_image_negatives} (expected >= 0)")
        if self.num_text_negatives + self.num_image_negatives == 0:
            problems.append("no negatives (num_text_negatives + num_image_negatives = 0)")
        if self.negatives == "hard" and self.hard_negative_pool < max(self.num_text_negatives,
                                                                      self.num_image_negatives):
            problems.append(f"hard_negative_pool={self.hard_negative_pool} < the number of negatives kept")
        for name in ("rerank_k", "image_batch_size", "pair_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} (expected >= 1)")
        if not self.ks or min(self.ks) < 1:
            problems.append(f"ks={self.ks} (expected positive integers)")
        if problems:
            raise ValueError("invalid RetrievalConfig: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------
class TextInputs(NamedTuple):
    """Tokenised texts `[CLS] text [SEP] [PAD]...`: input_ids, attention_mask (1 = token), token_type_ids, [N, L]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor

    def select(self, index: torch.Tensor, device: torch.device | str | None = None) -> TextInputs:
        index = index.to(self.input_ids.device)
        return TextInputs(*(t.index_select(0, index).to(device or t.device) for t in self))

    def __len__(self) -> int:  # type: ignore[override]
        return self.input_ids.shape[0]


def text_inputs(texts: Sequence[str], tokenizer, max_length: int = DEFAULT_MAX_TEXT_LENGTH) -> TextInputs:
    """Tokenise and pad every text once (padding to the longest text, at most `max_length` tokens)."""
    return TextInputs(*collate_texts(list(texts), tokenizer, max_length))


class RetrievalHead(nn.Module):
    """[B, d] fused [CLS] state -> [B] matching logit: BERT pooler (dense + tanh), then a linear layer to one unit."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.pooler = Pooler(d_model)
        self.classifier = nn.Linear(d_model, 1)

    def forward(self, cls_state: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooler(cls_state)).squeeze(-1)

    @torch.no_grad()
    def init_from_itm(self, itm_head: ITMHead) -> None:
        """Start as the ITM head's log-odds `logit_matched - logit_unmatched` (sigmoid = its matched probability)."""
        self.pooler.load_state_dict(itm_head.pooler.state_dict())
        weight, bias = itm_head.classifier.weight, itm_head.classifier.bias
        self.classifier.weight.copy_((weight[1] - weight[0])[None])
        self.classifier.bias.copy_((bias[1] - bias[0])[None])


class RetrievalModel(TaskModel):
    """E2EVLP + `RetrievalHead` (new parameters `head.pooler.*`, `head.classifier.*`).

    `tokenizer` (for `match`) and the evaluation image size are kept on the instance, not in the weights;
    `save_pretrained(directory, config)` records them (tokenizer/, `task.json`).
    """

    task_name = "retrieval"
    legacy_files = (None, "retrieval_config.json")

    def __init__(self, e2evlp: E2EVLP, tokenizer=None, head_init: str = "itm", eval_size: int = 800,
                 max_size: int = 1333, max_text_length: int = DEFAULT_MAX_TEXT_LENGTH) -> None:
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init={head_init!r}; expected one of {HEAD_INITS}")
        head = RetrievalHead(e2evlp.config.d_model)
        if head_init == "itm":
            head.init_from_itm(e2evlp.itm_head)
        super().__init__(e2evlp, head)
        self.head_init = head_init
        self.tokenizer = tokenizer
        self.eval_size, self.max_size, self.max_text_length = eval_size, max_size, max_text_length

    @classmethod
    def from_checkpoint(cls, checkpoint_or_model: str | Path | E2EVLP | None, tokenizer=None, head_init: str = "itm",
                        eval_size: int = 800, max_size: int = 1333, preset: str = "e2evlp-tiny",
                        **overrides) -> RetrievalModel:
        """Wrap a pretrained E2EVLP (folder from `E2EVLP.save_pretrained`, a model, or None: a fresh `preset`)."""
        model = cls(load_e2evlp(checkpoint_or_model, preset, **overrides), tokenizer, head_init, eval_size, max_size)
        model.report_new_parameters()
        if head_init == "itm":
            logger.info("RetrievalModel: the head starts as the pretrained ITM head's log-odds (matched - unmatched)")
        return model

    def arguments(self) -> dict[str, Any]:
        return {"eval_size": self.eval_size, "max_size": self.max_size, "max_text_length": self.max_text_length}

    @classmethod
    def from_arguments(cls, e2evlp: E2EVLP, tokenizer, arguments: dict[str, Any], directory: Path) -> RetrievalModel:
        # "random": the head's initialisation does not matter, its trained weights are loaded next
        return cls(e2evlp, tokenizer, "random", arguments["eval_size"], arguments["max_size"],
                   arguments["max_text_length"])

    @classmethod
    def legacy_arguments(cls, stored: dict[str, Any], recipe: dict[str, Any] | None) -> dict[str, Any]:
        recipe = RetrievalConfig.from_dict(recipe or {})
        return {"eval_size": recipe.eval_size, "max_size": recipe.max_size, "max_text_length": recipe.max_text_length}

    def score(self, encoding: EncoderOutput) -> torch.Tensor:
        """[B] matching logits of the encoded pairs (higher = better match)."""
        return self.head(self.e2evlp.pooled_state(encoding))

    def score_pairs(self, image: ImageEmbedding, image_index: torch.Tensor, texts: TextInputs,
                    text_index: torch.Tensor) -> torch.Tensor:
        """[P] logits of the pairs (image `image_index[p]`, text `text_index[p]`) in one encoder pass.

        `image` is `embed_image` of the images (the backbone runs once per image however many pairs use it).
        """
        device = image.features.device
        ids, mask, types = texts.select(text_index, device)
        return self.score(self.e2evlp.encode(input_ids=ids, attention_mask=mask, token_type_ids=types,
                                             image=image.select(image_index)))

    def forward(self, batch: Batch) -> TaskOutput:
        """`TaskOutput(logits=[B])`: the matching logits of the row-aligned pairs (image b, text b) of `batch`."""
        encoding = self.e2evlp.encode(batch.pixel_values, batch.pixel_mask, batch.input_ids, batch.attention_mask,
                                      batch.token_type_ids)
        return TaskOutput(logits=self.score(encoding))

    @torch.no_grad()
    def match(self, images, texts: Sequence[str], image_batch_size: int = 16,
              pair_batch_size: int = 256) -> torch.Tensor:
        """[N_img, N_txt] matching logits of every (image, text) pair of raw images and strings (on the CPU).

        Images: PIL images or tensors [3, H, W] (uint8, or float in [0, 1]) or a batch [B, 3, H, W]; they are
        resized (shorter side `eval_size`) and normalised here. sigmoid(logit) is the similarity in [0, 1] that
        training optimised. Runs in eval mode (the previous mode is restored).
        """
        if self.tokenizer is None:
            raise ValueError("RetrievalModel.match needs a tokenizer: pass tokenizer= to from_checkpoint/"
                             "from_pretrained or set model.tokenizer")
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty list of strings")
        transforms = make_eval_transforms(self.eval_size, self.max_size)
        raw = as_image_list(images)
        lazy = _LazyImages(len(raw), lambda i: prepare_images([raw[i]], transforms, i).pixel_values[0])
        tokens = text_inputs(texts, self.tokenizer, self.max_text_length)
        return full_scores(self, lazy, tokens, image_batch_size, pair_batch_size)


def _unwrap(model) -> RetrievalModel:
    if not isinstance(model, RetrievalModel):
        raise TypeError(f"expected a RetrievalModel, got {type(model).__name__}")
    return model


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
class RetrievalTrainDataset(Dataset):
    """Images with all their captions (a `per="image"` reader) -> one positive caption per image and epoch.

    The caption is drawn by a generator seeded with (seed, epoch, index): reproducible in any worker and after a
    resume. Sample: `{"image", "image_id", "target", "text", "captions"}`.
    """

    def __init__(self, reader, seed: int = 0) -> None:
        if getattr(reader, "per", "image") != "image":
            raise ValueError("RetrievalTrainDataset needs a reader with per='image' (all captions of each image)")
        self.reader, self.seed, self.epoch = reader, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict:
        sample = self.reader[index]
        captions = list(sample["captions"])
        if not captions:
            raise ValueError(f"image {sample['image_id']} has no caption")
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
        return {**sample, "text": captions[rng.randrange(len(captions))], "captions": captions}


class RetrievalCollator:
    """`RetrievalTrainDataset` samples -> `Batch` of positive pairs: pixel_values/pixel_mask, input_ids etc. of each
    image's positive caption, meta `{"image_id", "text", "captions"}` (negatives are drawn in the loss)."""

    def __init__(self, tokenizer, max_length: int = DEFAULT_MAX_TEXT_LENGTH) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, samples: Sequence[dict]) -> Batch:
        if not samples:
            raise ValueError("RetrievalCollator got an empty batch")
        pixel_values, pixel_mask = collate_images([s["image"] for s in samples])
        input_ids, attention_mask, token_type_ids = collate_texts([s["text"] for s in samples], self.tokenizer,
                                                                  self.max_length)
        return Batch(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=input_ids,
                     attention_mask=attention_mask, token_type_ids=token_type_ids,
                     targets=[s["target"] for s in samples],
                     meta=[{"image_id": s["image_id"], "text": s["text"], "captions": s["captions"]}
                           for s in samples])


def negative_mask(meta: Sequence[dict]) -> torch.Tensor:
    """[B, B] bool: True where (image i, text j) is a negative pair, i.e. another image whose caption text_j is
    none of image i's own captions (compared lowercased, without punctuation)."""
    own = [{normalise_caption(c) for c in m["captions"]} | {normalise_caption(m["text"])} for m in meta]
    texts = [normalise_caption(m["text"]) for m in meta]
    ids = [m["image_id"] for m in meta]
    return torch.tensor([[ids[i] != ids[j] and texts[j] not in own[i] for j in range(len(meta))]
                         for i in range(len(meta))], dtype=torch.bool)


# ---------------------------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------------------------
def _random_candidates(valid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to k uniformly drawn True columns per row of `valid` [B, N] -> index [B, k], mask [B, k] (False = none)."""
    b, n = valid.shape
    keys = torch.rand(b, n, device=valid.device).masked_fill(~valid, -1.0)
    values, index = keys.topk(min(k, n), dim=1)
    mask = values >= 0
    if index.shape[1] < k:
        pad = k - index.shape[1]
        index = F.pad(index, (0, pad))
        mask = F.pad(mask, (0, pad), value=False)
    return index, mask


def _pairs(anchor_is_image: bool, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor rows b with candidate columns index[b, :] -> flat (image, text) indices of the pairs."""
    anchors = torch.arange(index.shape[0], device=index.device)[:, None].expand_as(index).reshape(-1)
    return (anchors, index.reshape(-1)) if anchor_is_image else (index.reshape(-1), anchors)


def sample_negatives(model: RetrievalModel, image: ImageEmbedding, texts: TextInputs, valid: torch.Tensor, k: int,
                     anchor_is_image: bool, strategy: str = "random",
                     pool: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Negatives of each anchor among the other samples of the batch.

    Args:
        valid: [B, B] bool, valid[a, c] = candidate c may be a negative of anchor a (texts of an image anchor, or
            images of a text anchor).
        strategy: "random" (uniform among valid candidates) or "hard" (score `pool` random valid candidates with
            the current model, without gradient, and keep the k highest).
    Returns:
        index [B, k] of the candidates, mask [B, k] (False where an anchor has fewer than k valid candidates).
    """
    if strategy == "random":
        return _random_candidates(valid, k)
    index, mask = _random_candidates(valid, max(pool, k))
    with torch.no_grad():
        img, txt = _pairs(anchor_is_image, index)
        scores = model.score_pairs(image, img[mask.reshape(-1)], texts, txt[mask.reshape(-1)])
        full = torch.full(index.shape, float("-inf"), device=index.device)
        full[mask] = scores.float().to(full.device)
    best = full.topk(k, dim=1).indices
    return index.gather(1, best), mask.gather(1, best)


def retrieval_loss(model: RetrievalModel, batch: Batch, config: RetrievalConfig | None = None) -> dict:
    """Circle loss over the batch's positive pairs and sampled negatives (see the module docstring).

    One backbone pass for the B images, one encoder pass for the B positive pairs and every sampled negative.
    Returns {"loss": mean over anchors with at least one negative, "circle_i2t" / "circle_t2i": the image- and
    caption-anchor means, "sim_pos" / "sim_neg": mean similarity of positives and negatives (for logging)}.
    """
    config = config or RetrievalConfig()
    if batch.meta is None:
        raise ValueError("retrieval_loss needs batch.meta with each sample's 'image_id', 'text' and 'captions'")
    b = len(batch)
    image = model.e2evlp.embed_image(batch.pixel_values, batch.pixel_mask)
    device = image.features.device
    texts = TextInputs(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    valid = negative_mask(batch.meta).to(device)  # [image i, text j]
    sample = functools.partial(sample_negatives, model, image, texts, strategy=config.negatives,
                               pool=config.hard_negative_pool)
    text_neg, text_mask = sample(valid, config.num_text_negatives, True)  # captions of other images, per image
    image_neg, image_mask = sample(valid.T, config.num_image_negatives, False)  # other images, per caption

    arange = torch.arange(b, device=device)
    parts = [(arange, arange)]
    for anchor_is_image, index, mask in ((True, text_neg, text_mask), (False, image_neg, image_mask)):
        img, txt = _pairs(anchor_is_image, index)
        keep = mask.reshape(-1)
        parts.append((img[keep], txt[keep]))
    logits = model.score_pairs(image, torch.cat([p[0] for p in parts]), texts, torch.cat([p[1] for p in parts]))
    sim = logits.float().sigmoid()
    pos, rest = sim[:b, None], sim[b:]
    n_text = int(text_mask.sum())
    neg_text = torch.zeros(text_mask.shape, device=device).masked_scatter(text_mask, rest[:n_text])
    neg_image = torch.zeros(image_mask.shape, device=device).masked_scatter(image_mask, rest[n_text:])

    kw = dict(margin=config.margin, gamma=config.gamma, reduction="sum")
    i2t = circle_loss(pos, neg_text, neg_mask=text_mask, **kw)
    t2i = circle_loss(pos, neg_image, neg_mask=image_mask, **kw)
    n_i2t, n_t2i = int(text_mask.any(1).sum()), int(image_mask.any(1).sum())
    with torch.no_grad():
        sim_neg = rest.mean() if rest.numel() else sim.new_zeros(())
    return {"loss": (i2t + t2i) / max(n_i2t + n_t2i, 1), "circle_i2t": i2t.detach() / max(n_i2t, 1),
            "circle_t2i": t2i.detach() / max(n_t2i, 1), "sim_pos": pos.detach().mean(), "sim_neg": sim_neg}


# ---------------------------------------------------------------------------------------------------------------
# Scoring every pair, or re-ranking a cheap score's top k
# ---------------------------------------------------------------------------------------------------------------
class _LazyImages(Sequence):
    """A sequence of preprocessed images [3, h, w] produced on access (a whole test split is never held)."""

    def __init__(self, n: int, get) -> None:
        self.n, self.get = n, get

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.get(i)


def _image_chunks(images: Sequence[torch.Tensor], size: int, device, share: range):
    for start in range(share.start, share.stop, size):
        rows = range(start, min(share.stop, start + size))
        pixel_values, pixel_mask = collate_images([images[i] for i in rows])
        yield rows, pixel_values.to(device), pixel_mask.to(device)


@torch.no_grad()
def score_selected_pairs(model: RetrievalModel, images: Sequence[torch.Tensor], texts: TextInputs,
                         selected: torch.Tensor, image_batch_size: int = 16,
                         pair_batch_size: int = 256) -> torch.Tensor:
    """Full-model logits of the pairs where `selected` [N_img, N_txt] is True (NaN elsewhere), on the CPU.

    Images go through the backbone `image_batch_size` at a time (once each); the selected pairs of those images
    are encoded `pair_batch_size` at a time, in row-major order. Under torch.distributed each process scores the
    rows of its share of the images (`shard_range`) and every process returns all rows.
    """
    model = _unwrap(model)
    device = next(model.parameters()).device
    out = torch.full(selected.shape, float("nan"))
    share = shard_range(len(images))
    was_training = model.training
    model.eval()
    try:
        for rows, pixel_values, pixel_mask in _image_chunks(images, image_batch_size, device, share):
            image = model.e2evlp.embed_image(pixel_values, pixel_mask)
            local, text = selected[rows.start:rows.stop].nonzero(as_tuple=True)
            for start in range(0, len(local), pair_batch_size):
                i, t = local[start:start + pair_batch_size], text[start:start + pair_batch_size]
                out[i + rows.start, t] = model.score_pairs(image, i, texts, t).float().cpu()
    finally:
        model.train(was_training)
    return torch.cat(gather_shards([out[share.start:share.stop]]))


def full_scores(model: RetrievalModel, images: Sequence[torch.Tensor], texts: TextInputs,
                image_batch_size: int = 16, pair_batch_size: int = 256) -> torch.Tensor:
    """[N_img, N_txt] logits of every pair (N_img * N_txt encoder rows)."""
    selected = torch.ones(len(images), len(texts), dtype=torch.bool)
    return score_selected_pairs(model, images, texts, selected, image_batch_size, pair_batch_size)


@torch.no_grad()
def dual_scores(model: RetrievalModel, images: Sequence[torch.Tensor], texts: TextInputs,
                image_batch_size: int = 16, text_batch_size: int = 256) -> torch.Tensor:
    """[N_img, N_txt] cosine of separately encoded [CLS] states: `[CLS] [SEP] grid` for each image, `[CLS] text
    [SEP]` alone for each text (N_img + N_txt encoder rows). The cheap first stage of re-ranking; not trained for
    this by the task loss, so keep k generous. Under torch.distributed each process encodes its share of the
    images and of the texts (`shard_range`) and every process returns the whole matrix."""
    model = _unwrap(model)
    e2evlp = model.e2evlp
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        image_cls = []
        for _, pixel_values, pixel_mask in _image_chunks(images, image_batch_size, device, shard_range(len(images))):
            image_cls.append(e2evlp.encode(pixel_values, pixel_mask).cls_state.float().cpu())
        text_cls = []
        share = shard_range(len(texts))
        for start in range(share.start, share.stop, text_batch_size):
            ids, mask, types = texts.select(torch.arange(start, min(share.stop, start + text_batch_size)), device)
            states = e2evlp.encoder(e2evlp.text_embeddings(ids, types), torch.zeros(*ids.shape, e2evlp.config.d_model,
                                    device=device), ~mask.bool())
            text_cls.append(states[:, 0].float().cpu())
    finally:
        model.train(was_training)
    image_cls, text_cls = (torch.cat(gather_shards(x)) for x in (image_cls, text_cls))
    return F.normalize(image_cls, dim=-1) @ F.normalize(text_cls, dim=-1).T


@dataclass
class RerankScores:
    """Two-stage scores. i2t: [N_img, N_txt] for text retrieval (each image's top-k texts by `cheap` re-scored);
    t2i: [N_img, N_txt] for image retrieval (each text's top-k images re-scored); candidates outside the top k keep
    the cheap order, below every re-scored one. num_pairs: pairs encoded by the full model."""

    i2t: torch.Tensor
    t2i: torch.Tensor
    cheap: torch.Tensor
    num_pairs: int


def rerank_scores(model: RetrievalModel, images: Sequence[torch.Tensor], texts: TextInputs, k: int = 128,
                  cheap: torch.Tensor | None = None, image_batch_size: int = 16,
                  pair_batch_size: int = 256) -> RerankScores:
    """Rank with `cheap` ([N_img, N_txt]; default `dual_scores`), re-score each query's top k with the full model.

    With k >= max(N_img, N_txt) every pair is re-scored and i2t = t2i = `full_scores` exactly.
    """
    if k < 1:
        raise ValueError(f"k={k}; expected >= 1")
    n_img, n_txt = len(images), len(texts)
    if cheap is None:
        cheap = dual_scores(model, images, texts, image_batch_size)
    if tuple(cheap.shape) != (n_img, n_txt):
        raise ValueError(f"cheap scores have shape {list(cheap.shape)}, expected [N_img={n_img}, N_txt={n_txt}]")
    cheap = cheap.float().cpu()
    rows = torch.zeros(n_img, n_txt, dtype=torch.bool).scatter_(1, cheap.topk(min(k, n_txt), dim=1).indices, True)
    cols = torch.zeros(n_img, n_txt, dtype=torch.bool).scatter_(0, cheap.topk(min(k, n_img), dim=0).indices, True)
    full = score_selected_pairs(model, images, texts, rows | cols, image_batch_size, pair_batch_size)

    def merge(chosen: torch.Tensor) -> torch.Tensor:
        floor = full[chosen].min() - 1.0  # every candidate outside the top k ranks below every re-scored one
        return torch.where(chosen, full, cheap - cheap.max() + floor)

    return RerankScores(merge(rows), merge(cols), cheap, int((rows | cols).sum()))


def rerank_recall(scores: RerankScores, text_to_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> RetrievalResult:
    """Recall@K with text retrieval read from `scores.i2t` and image retrieval from `scores.t2i`."""
    i2t, t2i = retrieval_recall(scores.i2t, text_to_image, ks), retrieval_recall(scores.t2i, text_to_image, ks)
    return RetrievalResult(i2t.text_r, t2i.image_r, i2t.text_ranks, t2i.image_ranks)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------
def _recall_dict(result: RetrievalResult) -> dict[str, float]:
    out = {f"text_R@{k}": v for k, v in result.text_r.items()}
    out.update({f"image_R@{k}": v for k, v in result.image_r.items()})
    out["R_mean"] = result.r_mean
    return out


def evaluate_retrieval(model: RetrievalModel, tokenizer, data, split: str = "test",
                       output_dir: str | Path | None = None, config: RetrievalConfig | None = None,
                       mode: str | None = None, k: int | None = None) -> dict[str, float]:
    """Recall@K on `split`: every image of the split against every caption of the split.

    Args:
        model: a RetrievalModel. tokenizer: tokenises the captions. data: anything `caption_data` accepts.
        mode: "full" or "rerank" (default `config.eval_mode`); k: re-ranking depth (default `config.rerank_k`).
        output_dir: when given, writes `retrieval_{split}_results.json`: image ids, captions with their image
            index, the top-10 captions of each image and top-10 images of each caption, and the metrics. (No
            official results format exists for retrieval; recall is computed locally.)
    Returns:
        {"text_R@1", "text_R@5", "text_R@10" (image queries), "image_R@1".. (caption queries), "R_mean",
        "num_images", "num_texts", "scored_pairs"}, recalls in percent.
    """
    config = config or RetrievalConfig()
    mode, k = mode or config.eval_mode, k or config.rerank_k
    if mode not in EVAL_MODES:
        raise ValueError(f"mode={mode!r}; expected one of {EVAL_MODES}")
    data = caption_data(data, tokenizer)
    reader = data.split(split).reader("image", make_eval_transforms(config.eval_size, config.max_size))
    n = len(reader) if config.max_eval_images is None else min(config.max_eval_images, len(reader))
    annotations = [reader.annotation(i) for i in range(n)]
    captions = [(i, c) for i, a in enumerate(annotations) for c in a["captions"]]
    text_to_image = torch.tensor([i for i, _ in captions])
    images = _LazyImages(n, lambda i: reader[i]["image"])
    texts = text_inputs([c for _, c in captions], tokenizer, config.max_text_length)
    if mode == "full":
        scores = full_scores(model, images, texts, config.image_batch_size, config.pair_batch_size)
        result, i2t, t2i, pairs = retrieval_recall(scores, text_to_image, config.ks), scores, scores, scores.numel()
    else:
        rerank = rerank_scores(model, images, texts, k, None, config.image_batch_size, config.pair_batch_size)
        result, i2t, t2i, pairs = rerank_recall(rerank, text_to_image, config.ks), rerank.i2t, rerank.t2i, rerank.num_pairs
    metrics = {**_recall_dict(result), "num_images": float(n), "num_texts": float(len(captions)),
               "scored_pairs": float(pairs)}
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        top_t = i2t.topk(min(10, i2t.shape[1]), dim=1).indices.tolist()
        top_i = t2i.topk(min(10, t2i.shape[0]), dim=0).indices.T.tolist()
        ids = [a["image_id"] for a in annotations]
        record = {"split": split, "mode": mode, "k": k if mode == "rerank" else None, "metrics": metrics,
                  "image_ids": ids, "texts": [{"image_index": i, "image_id": ids[i], "caption": c} for i, c in captions],
                  "text_retrieval_top10": top_t, "image_retrieval_top10": top_i}
        (out / f"retrieval_{split}_results.json").write_text(json.dumps(record) + "\n")
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------------------------
def finetune_retrieval(checkpoint, setup_or_paths, output_dir: str | Path,
                       config: RetrievalConfig | Mapping | None = None,
                       trainer_overrides: Mapping[str, Any] | None = None, resume: bool = False) -> FinetuneResult:
    """Fine-tune for image-text retrieval with circle loss, evaluate on val and test, save model and metrics.

    Args:
        checkpoint: a pretraining folder (`E2EVLP.save_pretrained`) or run folder, an E2EVLP, or None (a fresh
            e2evlp-tiny sized for the data's tokenizer).
        setup_or_paths: see `vlpkit.data.task_data.caption_data` (the same images-with-captions files).
        output_dir: receives the trainer's checkpoints and log, `model/` (with its tokenizer and recipe),
            the official results files of val and test (`retrieval_<split>_results.json`) and `metrics.json`.
        config: a RetrievalConfig or a dict of its fields. trainer_overrides: TrainerConfig fields.
    The val split is scored at every evaluation and at the last step (which writes its results file).

    Returns:
        The `FinetuneResult` (also in `metrics.json`): `metrics` {val split: ..., test split: ...}
        (`evaluate_retrieval`), for the splits the data has.
    """
    config = config if isinstance(config, RetrievalConfig) else RetrievalConfig.from_dict(config or {})
    data: CaptionData = caption_data(setup_or_paths, find_tokenizer(checkpoint))
    model = RetrievalModel.from_checkpoint(load_task_e2evlp(checkpoint, data), data.tokenizer, config.head_init,
                                           config.eval_size, config.max_size)
    model.max_text_length = config.max_text_length
    train_tf = make_train_transforms(scales=config.train_scales, max_size=config.max_size, crop=config.crop,
                                     flip=config.flip)
    train_set = RetrievalTrainDataset(data.split(config.train_split).reader("image", train_tf),
                                      config.trainer.seed)
    scorers = split_scorers(evaluate_retrieval, data, config)
    return run_finetune("retrieval", model, functools.partial(retrieval_loss, config=config), train_set,
                        RetrievalCollator(data.tokenizer, config.max_text_length), config, output_dir,
                        config.trainer_config(output_dir, trainer_overrides), scorers=scorers,
                        watch=config.val_split if config.val_split in scorers else None, watch_writes=True,
                        checkpoint=checkpoint, resume=resume)


def evaluate_finetuned(model_dir: str | Path, data, split: str | None = None, output_dir: str | Path | None = None,
                       config: RetrievalConfig | Mapping | None = None, *,
                       device: str | torch.device = "cpu") -> dict[str, Any]:
    """`evaluate_retrieval` of a `finetune_retrieval` output folder (or its `model/`) on `split` of `data`
    (default: the recipe's `test_split`), with the recorded recipe's scoring mode and sizes (`config`: see
    `load_finetuned`). Returns its metrics with "split"."""
    model, config = load_finetuned(RetrievalModel, RetrievalConfig, model_dir, config)
    data = caption_data(data, model.tokenizer)
    split = split or config.test_split
    tokenizer = model.tokenizer if model.tokenizer is not None else data.tokenizer
    return {"split": split, **evaluate_retrieval(model.to(device), tokenizer, data, split, output_dir, config)}


TASK = register_task(Task(
    name="retrieval", config_class=RetrievalConfig, model_class=RetrievalModel, finetune=finetune_retrieval,
    evaluate=evaluate_finetuned,
    summary="Flickr30K / COCO image-text retrieval (circle loss; recall@1/5/10)"))
