"""Multi-head attention on `torch.nn.functional.scaled_dot_product_attention`, with separate key/value
projection so that cached keys/values can be reused (cross-attention memory, incremental decoding).

`nn.MultiheadAttention` is not used because it cannot return or accept projected keys/values, which the
decoder needs to compute the memory's cross-attention keys/values once per image and to grow a self-attention
cache token by token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KeyValue = tuple[torch.Tensor, torch.Tensor]  # ([B, heads, S, head_dim], [B, heads, S, head_dim])


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, S, d] -> [B, heads, S, head_dim]
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def project_kv(self, key: torch.Tensor, value: torch.Tensor) -> KeyValue:
        """[B, S, d] keys (positions already added) and values -> per-head projected (k, v)."""
        return self._split(self.k_proj(key)), self._split(self.v_proj(value))

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, causal: bool = False,
                kv: KeyValue | None = None, past_kv: KeyValue | None = None,
                attn_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, KeyValue]:
        """
        Args:
            query: [B, T, d] (positions already added). With `kv` of B' = B / g rows (g > 1), query rows
                `i * g .. i * g + g - 1` all attend to keys/values row i (beams of one image sharing its memory:
                the memory is read once per image, not once per beam); `key_padding_mask` then has B' rows.
            key, value: [B, S, d]; ignored when `kv` is given.
            key_padding_mask: [B, S_total] bool, True on padded keys.
            causal: query i attends to keys 0..(S_past + i) only.
            kv: precomputed projected keys/values (e.g. the memory's, for cross-attention).
            past_kv: cached projected keys/values of earlier steps, prepended to the new ones.
            attn_bias: [B or 1, heads or 1, T, S_total] float added to the attention logits (a spatial prior).
        Returns:
            output [B, T, d], and the (k, v) used (the grown cache, when `past_kv` is given).
        """
        if kv is None:
            kv = self.project_kv(key, value)
        k, v = kv
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)
        q = self._split(self.q_proj(query))
        rows, groups = q.shape[0], q.shape[0] // k.shape[0]
        if groups > 1:  # [B' * g, h, T, dh] -> [B', h, g * T, dh]: a group's queries share one key/value row
            if rows != groups * k.shape[0] or causal or attn_bias is not None:
                raise ValueError(f"{rows} query rows for {k.shape[0]} key/value rows: grouped queries need a "
                                 "whole multiple, no causal mask and no attention bias")
            q = q.unflatten(0, (k.shape[0], groups)).transpose(1, 2).flatten(2, 3)
        t, s = q.shape[2], k.shape[2]
        mask = None
        if key_padding_mask is not None:
            mask = ~key_padding_mask[:, None, None, :]  # SDPA's boolean masks mark keys that take part
        if causal and t > 1:
            allowed = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t)
            mask = allowed if mask is None else mask & allowed
        if attn_bias is not None:
            bias = attn_bias.to(q.dtype)
            mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        if groups > 1:  # [B', h, g * T, dh] -> [B' * g, h, T, dh]
            out = out.unflatten(2, (groups, -1)).transpose(1, 2).flatten(0, 1)
        return self.out_proj(out.transpose(1, 2).flatten(2)), (k, v)
