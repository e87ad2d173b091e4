"""2D positional encodings of the image grid: DETR's sine encoding and a learned alternative."""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """DETR's 2D sine encoding, computed from the cumulative sum of the *unpadded* mask.

    Rows and columns are numbered 1..h and 1..w over the real region only, normalised by the last real index
    (so padding never shifts the encoding), scaled to [0, 2*pi], and encoded with `num_pos_feats` sines/cosines
    each; the output concatenates the y half then the x half.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, grid_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            grid_mask: [B, H, W] bool, True on real cells.
        Returns:
            [B, 2 * num_pos_feats, H, W] float32.
        """
        not_mask = grid_mask.float()
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=grid_mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute 2D encoding: a row table and a column table (DETR's alternative), y half then x half."""

    def __init__(self, num_pos_feats: int = 128, max_size: int = 64) -> None:
        super().__init__()
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, grid_mask: torch.Tensor) -> torch.Tensor:
        """[B, H, W] bool -> [B, 2 * num_pos_feats, H, W]."""
        b, h, w = grid_mask.shape
        if h > self.row_embed.num_embeddings or w > self.col_embed.num_embeddings:
            raise ValueError(f"grid {h}x{w} exceeds the learned position table "
                             f"({self.row_embed.num_embeddings}x{self.col_embed.num_embeddings}); "
                             "raise max_size or use position_embedding='sine'")
        y = self.row_embed(torch.arange(h, device=grid_mask.device))
        x = self.col_embed(torch.arange(w, device=grid_mask.device))
        pos = torch.cat([y[:, None, :].expand(h, w, -1), x[None, :, :].expand(h, w, -1)], dim=-1)
        return pos.permute(2, 0, 1)[None].expand(b, -1, -1, -1)
