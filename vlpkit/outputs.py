"""Typed outputs of `E2EVLP` and of caption generation: the vocabulary every layer shares (the models produce
them, `vlpkit.generation` and the tasks read them), so it sits below all of them and imports only torch."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch


@dataclass
class ImageEmbedding:
    """The image side of the encoder input, from `E2EVLP.embed_image`; reusable across several encodings
    (pretraining encodes each image twice: with its text, and alone for caption generation).

    features: [B, H*W, d] projected grid features.
    pos: [B, H*W, d] 2D positional encodings.
    padding_mask: [B, H*W] bool, True on grid cells that cover only padding.
    grid_size: (H, W).
    """

    features: torch.Tensor
    pos: torch.Tensor
    padding_mask: torch.Tensor
    grid_size: tuple[int, int]

    def __len__(self) -> int:
        return self.features.shape[0]

    def select(self, index: torch.Tensor) -> ImageEmbedding:
        """Rows `index` ([R] long; an image may appear several times, once per text it is paired with)."""
        index = index.to(self.features.device)
        return ImageEmbedding(self.features.index_select(0, index), self.pos.index_select(0, index),
                              self.padding_mask.index_select(0, index), self.grid_size)


@dataclass
class EncoderOutput:
    """What `E2EVLP.encode` returns; every decoding mode consumes it without re-encoding.

    memory: [B, S, d] fused states of `[CLS] text [SEP] grid` (S = text_length + H*W).
    memory_padding_mask: [B, S] bool, True on padded text tokens and padded grid cells.
    memory_pos: [B, S, d] positions added to keys in the decoder's cross-attention (zero on text tokens).
    text_length: number of text positions L at the front of `memory` (including [CLS] and [SEP]).
    grid_size: (H, W) of the image grid.
    """

    memory: torch.Tensor
    memory_padding_mask: torch.Tensor
    memory_pos: torch.Tensor
    text_length: int
    grid_size: tuple[int, int]

    @property
    def cls_state(self) -> torch.Tensor:
        """[B, d] final state of the [CLS] token."""
        return self.memory[:, 0]

    def pooled(self, pooling: str = "cls") -> torch.Tensor:
        """[B, d] one state per row: the [CLS] state ("cls") or the mean of the unpadded text states
        ("text_mean"; `E2EVLPConfig.pooling`)."""
        if pooling == "cls":
            return self.cls_state
        if pooling != "text_mean":
            raise ValueError(f"pooling={pooling!r}; expected 'cls' or 'text_mean'")
        keep = (~self.memory_padding_mask[:, : self.text_length]).unsqueeze(-1).to(self.memory.dtype)
        return (self.text_states * keep).sum(1) / keep.sum(1).clamp(min=1.0)

    @property
    def text_states(self) -> torch.Tensor:
        """[B, L, d]."""
        return self.memory[:, : self.text_length]

    @property
    def image_states(self) -> torch.Tensor:
        """[B, H*W, d]."""
        return self.memory[:, self.text_length :]

    def repeat_interleave(self, repeats: int) -> EncoderOutput:
        """Each image's rows repeated `repeats` times in a row (e.g. once per beam): B -> B * repeats."""
        return EncoderOutput(self.memory.repeat_interleave(repeats, 0),
                             self.memory_padding_mask.repeat_interleave(repeats, 0),
                             self.memory_pos.repeat_interleave(repeats, 0), self.text_length, self.grid_size)


@dataclass
class DetectionOutput:
    """DETR-style set predictions.

    pred_logits: [B, Q, K+1] class logits (last index = no-object).
    pred_boxes: [B, Q, 4] normalised cxcywh in [0, 1], float32.
    pred_attributes: [B, Q, A] attribute logits, or None without an attribute head.
    aux_outputs: one dict with the same keys per intermediate decoder layer (for auxiliary losses).
    """

    pred_logits: torch.Tensor
    pred_boxes: torch.Tensor
    pred_attributes: torch.Tensor | None = None
    aux_outputs: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The dict `vlpkit.losses.SetCriterion` and DETR-style code expect."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return out


@dataclass
class GenerationOutput:
    """sequences: [B, T] token ids (starting after BOS, padded with pad_token_id after EOS);
    scores: [B] length-penalised sum of token log-probabilities of each returned sequence;
    beams: optional [B, num_return, T] / [B, num_return] of every returned hypothesis."""

    sequences: torch.Tensor
    scores: torch.Tensor
    all_sequences: torch.Tensor | None = None
    all_scores: torch.Tensor | None = None


@dataclass
class E2EVLPOutput:
    """`E2EVLP.forward`: the encoding and every head that reads it.

    encoder: the `EncoderOutput`; detection: the `DetectionOutput` of the object queries;
    mlm_logits: [B, L, vocab_size] on the text positions; itm_logits: [B, 2] on [CLS] (index 1 = matched).
    """

    encoder: EncoderOutput
    detection: DetectionOutput
    mlm_logits: torch.Tensor
    itm_logits: torch.Tensor
