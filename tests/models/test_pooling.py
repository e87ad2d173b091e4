"""`E2EVLPConfig.pooling`: what the matching heads read ([CLS], or the mean of the unpadded text states)."""

import pytest
import torch

from vlpkit import build_e2evlp
from vlpkit.config import E2EVLPConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_e2evlp("e2evlp-tiny", pooling="text_mean").eval()


def test_text_mean_is_the_mean_of_the_real_text_states(model):
    ids = torch.tensor([[2, 11, 12, 13, 3, 0, 0], [2, 21, 22, 23, 24, 25, 3]])
    attention = (ids != 0).long()
    with torch.no_grad():
        enc = model.encode(torch.randn(2, 3, 64, 64), input_ids=ids, attention_mask=attention)
    expected = torch.stack([enc.text_states[0, :5].mean(0), enc.text_states[1].mean(0)])
    torch.testing.assert_close(enc.pooled("text_mean"), expected)
    torch.testing.assert_close(model.pooled_state(enc), expected)
    torch.testing.assert_close(model.itm_logits(enc), model.itm_head(expected))
    assert torch.equal(enc.pooled("cls"), enc.cls_state)


def test_text_mean_ignores_padding(model):
    """A padded row pools to what the same row pools to alone (so ITM does not depend on batch-mates)."""
    img = torch.randn(1, 3, 64, 64)
    ids = torch.tensor([[2, 11, 12, 13, 3]])
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone = model.itm_logits(model.encode(img, input_ids=ids))
        batched = model.itm_logits(model.encode(img, input_ids=padded, attention_mask=(padded != 0).long()))
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_pooling_reaches_the_itm_logits():
    """The same weights read through "cls" and "text_mean" give different ITM logits: the option is live."""
    torch.manual_seed(0)
    cls_model = build_e2evlp("e2evlp-tiny").eval()
    mean_model = build_e2evlp("e2evlp-tiny", pooling="text_mean").eval()
    mean_model.load_state_dict(cls_model.state_dict())
    ids = torch.tensor([[2, 11, 12, 13, 3]])
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = cls_model.itm_logits(cls_model.encode(img, input_ids=ids))
        b = mean_model.itm_logits(mean_model.encode(img, input_ids=ids))
    assert not torch.allclose(a, b)


def test_unknown_pooling_is_named():
    with pytest.raises(ValueError, match="pooling='max'"):
        E2EVLPConfig(pooling="max")
