"""Prediction heads: masked LM and caption LM (tied to token embeddings), image-text matching, detection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .feedforward import MLP


class TiedLMHead(nn.Module):
    """BERT's LM head: dense -> GELU -> LayerNorm, then a projection whose weight *is* the token embedding matrix.

    [B, L, d] -> [B, L, vocab_size]. Used for MLM (tied to the encoder's word embeddings) and for caption
    generation (tied to the decoder's token embeddings).
    """

    def __init__(self, word_embeddings: nn.Embedding, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        vocab_size, d_model = word_embeddings.weight.shape
        self.dense = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.word_embeddings = word_embeddings  # shared module: its weight is the output projection
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(F.gelu(self.dense(hidden)))
        return F.linear(hidden, self.word_embeddings.weight, self.bias)


class Pooler(nn.Module):
    """BERT pooler: dense + tanh on the [CLS] state. [B, d] -> [B, d]."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, cls_state: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls_state))


class ITMHead(nn.Module):
    """Image-text matching on the pooled [CLS] state: [B, d] -> [B, 2] logits (index 1 = matched)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.pooler = Pooler(d_model)
        self.classifier = nn.Linear(d_model, 2)

    def forward(self, cls_state: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooler(cls_state))


class DetectionHead(nn.Module):
    """DETR's heads on decoder states: classes (+1 no-object), boxes (3-layer MLP, sigmoid, normalised cxcywh),
    and Visual Genome attributes (logits over `num_attributes`; absent when it is 0).

    [..., Q, d] -> dict of [..., Q, K+1], [..., Q, 4], [..., Q, A]. With `reference` ([Q, 2] inverse-sigmoid
    reference points, `vlpkit.models.spatial_prior`) the box centre is predicted as an offset from it.
    """

    def __init__(self, d_model: int, num_classes: int, num_attributes: int = 0) -> None:
        super().__init__()
        self.class_embed = nn.Linear(d_model, num_classes + 1)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        self.attr_embed = nn.Linear(d_model, num_attributes) if num_attributes > 0 else None

    def forward(self, hidden: torch.Tensor, reference: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        boxes = self.bbox_embed(hidden).float()
        if reference is not None:
            boxes = boxes + F.pad(reference.float(), (0, 2))
        out = {"pred_logits": self.class_embed(hidden), "pred_boxes": boxes.sigmoid()}
        if self.attr_embed is not None:
            out["pred_attributes"] = self.attr_embed(hidden)
        return out
