"""The shared Transformer decoder: one set of weights for object queries (parallel) and captions (causal)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .attention import KeyValue, MultiHeadAttention
from .feedforward import FeedForward


class DecoderLayer(nn.Module):
    """Post-norm decoder layer (DETR): self-attention, cross-attention to the encoder memory, feed-forward."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float = 0.1,
                 activation: str = "relu", layer_norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, cross_kv: KeyValue, memory_padding_mask: torch.Tensor,
                query_pos: torch.Tensor | None = None, causal: bool = False,
                past_kv: KeyValue | None = None,
                cross_attn_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, KeyValue]:
        """
        Args:
            tgt: [B, T, d] query states (zeros + query_pos for detection, token embeddings for captions).
            cross_kv: this layer's projected memory keys/values, from `SharedDecoder.memory_kv`.
            memory_padding_mask: [B, S] bool, True on padded memory positions.
            query_pos: [B or 1, T, d] added to queries/keys of both attentions (object queries); None for captions.
            causal: mask future tokens (captions).
            past_kv: this layer's self-attention cache from earlier decoding steps.
            cross_attn_bias: [B, 1, T, S] float added to the cross-attention logits (object queries' spatial
                prior, `vlpkit.models.spatial_prior`), or None.
        Returns:
            [B, T, d] new states, and the self-attention (k, v) including `past_kv` (the grown cache).
        """
        q = tgt if query_pos is None else tgt + query_pos
        attended, self_kv = self.self_attn(q, q, tgt, causal=causal, past_kv=past_kv)
        tgt = self.norm1(tgt + self.dropout(attended))
        q = tgt if query_pos is None else tgt + query_pos
        attended, _ = self.cross_attn(q, kv=cross_kv, key_padding_mask=memory_padding_mask,
                                      attn_bias=cross_attn_bias)
        tgt = self.norm2(tgt + self.dropout(attended))
        return self.norm3(tgt + self.dropout(self.ffn(tgt))), self_kv


@dataclass
class DecoderCache:
    """State of incremental caption decoding.

    cross_kv: per layer, the memory's projected cross-attention keys/values ([B', heads, S, head_dim] each),
        computed once per encoding. B' is the number of images; the decoded rows B may be a multiple of it
        (beams of one image, image-major), which then share their image's row (grouped cross-attention).
    memory_padding_mask: [B', S] bool.
    self_kv: per layer, the self-attention keys/values of the tokens decoded so far ([B, heads, t, head_dim]),
        or None before the first step.
    """

    cross_kv: list[KeyValue]
    memory_padding_mask: torch.Tensor
    self_kv: list[KeyValue] | None = None

    @property
    def length(self) -> int:
        return 0 if self.self_kv is None else self.self_kv[0][0].shape[2]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the self-attention cache rows `index` ([B] long), e.g. the beams that survive a step.

        Cross-attention keys/values are not touched: beams are only reordered among the copies of the same image,
        whose memory rows are identical.
        """
        if self.self_kv is not None:
            self.self_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.self_kv]


class SharedDecoder(nn.Module):
    """A stack of `DecoderLayer`s with a final LayerNorm, run in two modes with the same weights.

    - detection: `forward(tgt=zeros, query_pos=object queries, causal=False)` returns every layer's output
      (normalised) for DETR's auxiliary losses;
    - captioning: `forward(tgt=token embeddings, causal=True)`, or step by step with a `DecoderCache`.
    """

    def __init__(self, layers: list[DecoderLayer], norm: nn.LayerNorm) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def memory_kv(self, memory: torch.Tensor, memory_pos: torch.Tensor) -> list[KeyValue]:
        """Each layer's cross-attention keys (memory + positions) and values (memory), projected once.

        memory, memory_pos: [B, S, d] -> list (one per layer) of ([B, heads, S, head_dim], [B, heads, S, head_dim]).
        """
        keys = memory + memory_pos
        return [layer.cross_attn.project_kv(keys, memory) for layer in self.layers]

    def forward(self, tgt: torch.Tensor, cross_kv: list[KeyValue], memory_padding_mask: torch.Tensor,
                query_pos: torch.Tensor | None = None, causal: bool = False,
                cache: DecoderCache | None = None, return_intermediate: bool = True,
                cross_attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            tgt: [B, T, d].
            cross_kv: from `memory_kv`.
            memory_padding_mask: [B, S] bool.
            query_pos: [B or 1, T, d] or None.
            causal: causal self-attention (captions).
            cache: when given, `tgt` holds only the new tokens; the cache's self-attention keys/values are
                used and extended in place.
            return_intermediate: return every layer's output (detection's auxiliary losses) or only the last.
            cross_attn_bias: [B, 1, T, S] float added to every layer's cross-attention logits, or None.
        Returns:
            [num_layers or 1, B, T, d]: layer outputs after the final LayerNorm (the last is the decoder output).
        """
        outputs, new_kv = [], []
        for i, layer in enumerate(self.layers):
            past = cache.self_kv[i] if cache is not None and cache.self_kv is not None else None
            tgt, kv = layer(tgt, cross_kv[i], memory_padding_mask, query_pos, causal, past, cross_attn_bias)
            if return_intermediate or i == len(self.layers) - 1:
                outputs.append(self.norm(tgt))
            new_kv.append(kv)
        if cache is not None:
            cache.self_kv = new_kv
        return torch.stack(outputs)
