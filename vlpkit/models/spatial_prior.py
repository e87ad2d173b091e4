"""Optional spatial prior for object queries: a learned reference point per query, a Gaussian bias on its
cross-attention around that point (SMCA, Gao et al. 2021) and boxes predicted relative to it (Anchor DETR,
Wang et al. 2022).

Not part of E2E-VLP or DETR, and off in every paper preset (`E2EVLPConfig.detection_spatial_prior=None`). It
exists for short CPU budgets: a plain DETR decoder needs many epochs before its queries attend to single
objects (docs/pretraining.md measures this on the shapes world), while a query that starts out looking at one
region of the image can read that region's object from the first steps. Written here because no maintained
library ships these as blocks that fit a decoder shared with captioning.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def grid_reference_logits(num_queries: int) -> torch.Tensor:
    """[Q, 2] inverse-sigmoid (x, y) of the centres of a ceil(sqrt(Q))-sided grid, row-major, first Q cells."""
    side = math.ceil(math.sqrt(num_queries))
    centres = (torch.arange(side, dtype=torch.float64) + 0.5) / side
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], dim=-1)[:num_queries]
    return torch.logit(points).float()


def build_reference_points(num_queries: int) -> nn.Embedding:
    """Learned reference points, stored as logits and initialised on a regular grid over the image."""
    embedding = nn.Embedding(num_queries, 2)
    with torch.no_grad():
        embedding.weight.copy_(grid_reference_logits(num_queries))
    return embedding


def grid_cell_centres(image_padding_mask: torch.Tensor) -> torch.Tensor:
    """Normalised (x, y) centre of every grid cell, relative to each image's unpadded extent.

    Args:
        image_padding_mask: [B, H, W] bool, True on cells that cover only padding (the valid region of each
            image is its top-left corner, as `vlpkit.data.batch` pads).
    Returns:
        [B, H*W, 2]; padded cells get coordinates > 1 (they are masked out of attention anyway).
    """
    valid = ~image_padding_mask
    rows = valid.any(dim=2).sum(dim=1).clamp(min=1).to(torch.float32)  # [B]
    cols = valid.any(dim=1).sum(dim=1).clamp(min=1).to(torch.float32)
    _, h, w = image_padding_mask.shape
    ys = (torch.arange(h, device=valid.device, dtype=torch.float32)[None] + 0.5) / rows[:, None]  # [B, H]
    xs = (torch.arange(w, device=valid.device, dtype=torch.float32)[None] + 0.5) / cols[:, None]  # [B, W]
    return torch.stack([xs[:, None, :].expand(-1, h, -1), ys[:, :, None].expand(-1, -1, w)], dim=-1).flatten(1, 2)


def gaussian_attention_bias(reference: torch.Tensor, cell_centres: torch.Tensor, sigma: float,
                            text_length: int) -> torch.Tensor:
    """Additive cross-attention logits: log of an isotropic Gaussian around each query's reference point.

    Args:
        reference: [Q, 2] reference points (x, y) in [0, 1].
        cell_centres: [B, H*W, 2] from `grid_cell_centres`.
        sigma: the Gaussian's standard deviation in normalised image units.
        text_length: memory positions before the grid (the text); they get bias 0, so detection can still
            read the paired text (the paper's Table 7).
    Returns:
        [B, 1, Q, text_length + H*W] float, broadcast over heads.
    """
    d2 = (cell_centres[:, None, :, :] - reference[None, :, None, :].to(cell_centres.dtype)).pow(2).sum(-1)
    image_bias = -d2 / (2 * sigma**2)  # [B, Q, HW]
    text_bias = image_bias.new_zeros(image_bias.shape[0], image_bias.shape[1], text_length)
    return torch.cat([text_bias, image_bias], dim=-1)[:, None]
