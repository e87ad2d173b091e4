import math

import torch

from vlpkit.models.position import PositionEmbeddingLearned, PositionEmbeddingSine


def reference_sine(h_valid: int, w_valid: int, num_pos_feats: int, temperature: float = 10000.0):
    """Independent per-cell computation of DETR's normalised sine encoding on the real region only."""
    out = torch.zeros(2 * num_pos_feats, h_valid, w_valid, dtype=torch.float64)
    scale, eps = 2 * math.pi, 1e-6
    for i in range(h_valid):
        for j in range(w_valid):
            y = (i + 1) / (h_valid + eps) * scale
            x = (j + 1) / (w_valid + eps) * scale
            for k in range(num_pos_feats):
                freq = temperature ** (2 * (k // 2) / num_pos_feats)
                fn = math.sin if k % 2 == 0 else math.cos
                out[k, i, j] = fn(y / freq)
                out[num_pos_feats + k, i, j] = fn(x / freq)
    return out


def test_sine_matches_independent_computation_on_padded_mask():
    feats = 8
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[0, :3, :4] = True  # padded image
    mask[1] = True  # unpadded image
    pos = PositionEmbeddingSine(feats)(mask)
    assert pos.shape == (2, 2 * feats, 5, 7)
    torch.testing.assert_close(pos[0, :, :3, :4].double(), reference_sine(3, 4, feats), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[1].double(), reference_sine(5, 7, feats), atol=1e-5, rtol=0)


def test_sine_real_region_unchanged_by_padding():
    small = PositionEmbeddingSine(16)(torch.ones(1, 3, 4, dtype=torch.bool))
    padded_mask = torch.zeros(1, 6, 9, dtype=torch.bool)
    padded_mask[:, :3, :4] = True
    padded = PositionEmbeddingSine(16)(padded_mask)
    torch.testing.assert_close(padded[..., :3, :4], small)


def test_learned_layout_y_then_x():
    enc = PositionEmbeddingLearned(4, max_size=10)
    pos = enc(torch.ones(2, 3, 5, dtype=torch.bool))
    assert pos.shape == (2, 8, 3, 5)
    torch.testing.assert_close(pos[0, :4, 2, 1], enc.row_embed.weight[2])
    torch.testing.assert_close(pos[0, 4:, 2, 1], enc.col_embed.weight[1])
