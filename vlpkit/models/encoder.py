"""The cross-modal Transformer encoder over `[CLS] text [SEP] grid`."""

from __future__ import annotations

import torch
from torch import nn

from .attention import MultiHeadAttention
from .feedforward import FeedForward


class EncoderLayer(nn.Module):
    """Post-norm layer (BERT/DETR): self-attention with positions added to queries and keys, never to values."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1,
                 activation: str = "relu", layer_norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """src, pos: [B, S, d]; padding_mask: [B, S] bool (True = padding) -> [B, S, d]."""
        qk = src + pos
        attended, _ = self.self_attn(qk, qk, src, key_padding_mask=padding_mask)
        src = self.norm1(src + self.dropout(attended))
        return self.norm2(src + self.dropout(self.ffn(src)))


class CrossModalEncoder(nn.Module):
    """A stack of `EncoderLayer`s fusing text tokens and image grid cells in one sequence."""

    def __init__(self, layers: list[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            src: [B, S, d] text embeddings followed by projected grid features (S = L + H*W).
            pos: [B, S, d] positional encodings added to queries/keys in every layer (zero on text tokens,
                whose positions are in their embeddings, BERT style; 2D sine on grid cells).
            padding_mask: [B, S] bool, True on padded text tokens and padded grid cells.
        Returns:
            [B, S, d] memory.
        """
        for layer in self.layers:
            src = layer(src, pos, padding_mask)
        return src
