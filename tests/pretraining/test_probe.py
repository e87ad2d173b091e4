"""vlpkit.pretraining.probe: the grounding probe (visual words with the right image minus another image's grid)."""

from __future__ import annotations

import json

import pytest
import torch

from vlpkit import build_e2evlp
from vlpkit.data.batch import collate_texts
from vlpkit.data.masking import visual_word_ids
from vlpkit.data.shapes.language import VISUAL_WORDS
from vlpkit.pretraining.probe import grounding_probe


@pytest.fixture(scope="module")
def probe_inputs(shapes_setup):
    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-tiny", **shapes_setup.model_overrides()).eval()
    captions = [a["caption"] for a in json.loads(shapes_setup.world.captions("train").read_text())["annotations"]]
    captions = captions[::5][:7]  # one caption per image, 7 images: batches of 4 and 3
    pixels = torch.randn(len(captions), 3, 64, 64)
    return model, shapes_setup.tokenizer, pixels, captions, visual_word_ids(shapes_setup.tokenizer, VISUAL_WORDS)


def test_a_model_that_ignores_the_image_scores_zero(probe_inputs):
    model, tok, pixels, captions, visual = probe_inputs
    blind = build_e2evlp("e2evlp-tiny", **{k: getattr(model.config, k) for k in
                                            ("vocab_size", "num_classes", "num_attributes")}).eval()
    blind.load_state_dict(model.state_dict())
    with torch.no_grad():  # every image gives the same grid: the text side cannot depend on the image
        blind.backbone.input_proj.weight.zero_()
        blind.backbone.input_proj.bias.zero_()
    result = grounding_probe(blind, tok, pixels, captions, visual, batch_size=4)
    assert result.rows > 0
    assert result.correct_right == result.correct_wrong and result.gain == 0.0


def test_matches_one_row_at_a_time(probe_inputs):
    """The batched probe equals masking each visual word alone and encoding it with image i, then image i+1."""
    model, tok, pixels, captions, visual = probe_inputs
    result = grounding_probe(model, tok, pixels, captions, visual, batch_size=4)
    right = wrong = rows = 0
    with torch.no_grad():
        for start, stop in ((0, 4), (4, 7)):
            for i in range(start, stop):
                ids, mask, types = collate_texts([captions[i]], tok, model.config.max_text_length)
                for pos in torch.isin(ids[0], visual).nonzero().flatten().tolist():
                    masked = ids.clone()
                    masked[0, pos] = model.config.mask_token_id
                    for shift, count in ((0, "right"), (1, "wrong")):
                        j = start + (i - start + shift) % (stop - start)
                        enc = model.encode(pixels[j:j + 1], input_ids=masked, attention_mask=mask,
                                           token_type_ids=types)
                        hit = int(model.mlm_logits(enc)[0, pos].argmax() == ids[0, pos])
                        right, wrong = (right + hit, wrong) if count == "right" else (right, wrong + hit)
                    rows += 1
    assert (result.correct_right, result.correct_wrong, result.rows) == (right, wrong, rows)
    assert rows >= 7  # every shapes caption names at least one colour, shape, size or count


def test_needs_two_images(probe_inputs):
    model, tok, pixels, captions, visual = probe_inputs
    with pytest.raises(ValueError, match="at least 2 images"):
        grounding_probe(model, tok, pixels[:1], captions[:1], visual)
    with pytest.raises(ValueError, match="3 captions for 2 images"):
        grounding_probe(model, tok, pixels[:2], captions[:3], visual)
