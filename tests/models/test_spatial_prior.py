"""The optional spatial prior of object queries (`E2EVLPConfig.detection_spatial_prior`)."""

import math

import pytest
import torch
import torch.nn.functional as F

from vlpkit import build_e2evlp
from vlpkit.config import ConfigError
from vlpkit.models.attention import MultiHeadAttention
from vlpkit.models.spatial_prior import gaussian_attention_bias, grid_cell_centres, grid_reference_logits
from vlpkit.presets import PRESETS


def test_reference_points_start_on_a_grid():
    points = grid_reference_logits(16).sigmoid()
    expected = [((j + 0.5) / 4, (i + 0.5) / 4) for i in range(4) for j in range(4)]
    torch.testing.assert_close(points, torch.tensor(expected), atol=1e-6, rtol=0)
    assert grid_reference_logits(10).shape == (10, 2)  # not a square: the first 10 cells of a 4x4 grid
    torch.testing.assert_close(grid_reference_logits(10), grid_reference_logits(16)[:10])


def test_cell_centres_follow_each_images_unpadded_extent():
    padding = torch.ones(2, 3, 4, dtype=torch.bool)
    padding[0] = False  # the whole 3x4 grid is image
    padding[1, :2, :3] = False  # image covers 2x3 cells, the rest is batch padding
    centres = grid_cell_centres(padding).view(2, 3, 4, 2)
    for b, (rows, cols) in enumerate([(3, 4), (2, 3)]):
        for i in range(rows):
            for j in range(cols):
                torch.testing.assert_close(centres[b, i, j], torch.tensor([(j + 0.5) / cols, (i + 0.5) / rows]))


def test_gaussian_bias_matches_a_direct_computation():
    torch.manual_seed(0)
    reference = torch.rand(5, 2)
    centres = torch.rand(2, 6, 2)
    sigma, text_length = 0.2, 3
    bias = gaussian_attention_bias(reference, centres, sigma, text_length)
    assert bias.shape == (2, 1, 5, text_length + 6)
    assert torch.all(bias[..., :text_length] == 0)
    for b in range(2):
        for q in range(5):
            for s in range(6):
                dx, dy = (centres[b, s] - reference[q]).tolist()
                density = math.exp(-(dx * dx + dy * dy) / (2 * sigma**2))
                assert bias[b, 0, q, text_length + s].item() == pytest.approx(math.log(density), abs=1e-5)


def test_attention_bias_is_added_to_the_logits_and_padding_stays_masked():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2).eval()
    query, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    bias = torch.randn(2, 1, 3, 5)
    out, (k, v) = attn(query, memory, memory, key_padding_mask=padding, attn_bias=bias)
    q = attn._split(attn.q_proj(query))
    logits = q @ k.transpose(-1, -2) / math.sqrt(8) + bias
    logits = logits.masked_fill(padding[:, None, None, :], float("-inf"))
    expected = attn.out_proj((logits.softmax(-1) @ v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_a_narrow_prior_makes_each_query_read_its_own_region():
    """With a tiny sigma every object query sees only the grid cell under its reference point (plus the text)."""
    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-tiny", detection_spatial_prior=1e-3, num_queries=4, dropout=0.0,
                         num_decoder_layers=1)  # one layer: no query self-attention after the cross-attention.eval()
    pixels = torch.randn(1, 3, 64, 64)  # stride 32: a 2x2 grid; each reference sits on one cell's centre
    with torch.no_grad():
        model.reference_points.weight.copy_(torch.logit(torch.tensor([[0.25, 0.25], [0.75, 0.25],
                                                                        [0.25, 0.75], [0.75, 0.75]])))
        base = model.detect(model.encode(pixels)).pred_logits
        changed = pixels.clone()
        changed[..., :32, :32] += 5.0
        enc = model.encode(changed)
        # hold the encoder memory of every other cell fixed, so only the top-left cell differs
        memory = model.encode(pixels).memory.clone()
        cell = enc.text_length  # grid cell (0, 0)
        memory[:, cell] = enc.memory[:, cell]
        enc.memory = memory
        after = model.detect(enc).pred_logits
    moved = (after - base).abs().amax(-1)[0]
    assert moved[0] > 1e-2
    assert torch.all(moved[1:] < 1e-4), moved


def test_prior_is_off_in_every_paper_preset_and_checked():
    for name, preset in PRESETS.items():
        assert preset.get("detection_spatial_prior") is None, name
    assert build_e2evlp("e2evlp-tiny").reference_points is None
    assert "reference_points.weight" not in build_e2evlp("e2evlp-tiny").state_dict()
    with pytest.raises(ConfigError, match="detection_spatial_prior"):
        build_e2evlp("e2evlp-tiny", detection_spatial_prior=0.0)


def test_boxes_are_offsets_from_the_reference_point():
    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-tiny", detection_spatial_prior=0.15).eval()
    hidden = torch.randn(2, model.config.num_queries, model.config.d_model)
    reference = model.reference_points.weight
    with_ref = model.detection_head(hidden, reference)["pred_boxes"]
    raw = model.detection_head.bbox_embed(hidden)
    expected = (raw + F.pad(reference, (0, 2))).sigmoid()
    torch.testing.assert_close(with_ref, expected)
    torch.testing.assert_close(with_ref[..., 2:], model.detection_head(hidden)["pred_boxes"][..., 2:])


def test_save_and_load_round_trip_keeps_reference_points(tmp_path):
    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-tiny", detection_spatial_prior=0.15).eval()
    with torch.no_grad():
        model.reference_points.weight.add_(0.3)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded.reference_points.weight, model.reference_points.weight)
    pixels = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(loaded.detect(loaded.encode(pixels)).pred_boxes,
                                   model.detect(model.encode(pixels)).pred_boxes)

