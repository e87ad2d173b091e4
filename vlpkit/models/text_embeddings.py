"""BERT-style text embeddings: token + segment + position, LayerNorm, dropout."""

from __future__ import annotations

import torch
from torch import nn


class TextEmbeddings(nn.Module):
    """Token, segment and absolute position embeddings summed, then LayerNorm and dropout (BERT).

    The caption decoder uses the same class with `type_vocab_size=0` (no segments) and may share the
    `word_embeddings` module with the encoder's instance (the builder decides).
    """

    def __init__(self, word_embeddings: nn.Embedding, max_position_embeddings: int, type_vocab_size: int,
                 d_model: int, dropout: float = 0.1, layer_norm_eps: float = 1e-12, init_std: float = 0.02) -> None:
        super().__init__()
        self.word_embeddings = word_embeddings
        self.position_embeddings = nn.Embedding(max_position_embeddings, d_model)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, d_model) if type_vocab_size > 0 else None
        # BERT's N(0, init_std), like the word embeddings: torch's default N(0, 1) would make positions and
        # segments 50x louder than the tokens, and after the LayerNorm the token identity is nearly lost
        for table in (self.position_embeddings, self.token_type_embeddings):
            if table is not None:
                nn.init.normal_(table.weight, std=init_std)
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                position_offset: int = 0) -> torch.Tensor:
        """
        Args:
            input_ids: [B, L] long.
            token_type_ids: [B, L] long or None (all zeros).
            position_offset: index of the first token (for incremental decoding).
        Returns:
            [B, L, d_model].
        """
        length = input_ids.shape[1]
        if position_offset + length > self.position_embeddings.num_embeddings:
            raise ValueError(f"text of {position_offset + length} tokens exceeds max_position_embeddings="
                             f"{self.position_embeddings.num_embeddings}")
        positions = torch.arange(position_offset, position_offset + length, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(x))
