"""Text embeddings at initialisation: the token identity must dominate what the encoder and decoder read."""

import pytest
import torch

from vlpkit import build_e2evlp


@pytest.mark.parametrize("module", ["text_embeddings", "caption_embeddings"])
def test_tables_follow_bert_init(module):
    torch.manual_seed(0)
    emb = getattr(build_e2evlp("e2evlp-tiny"), module)
    for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
        if table is not None:
            assert table.weight.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("module", ["text_embeddings", "caption_embeddings"])
def test_changing_a_token_changes_its_embedding(module):
    # with N(0, 1) positions beside N(0, 0.02) words, two tokens at one position embed to nearly the same vector
    torch.manual_seed(0)
    emb = getattr(build_e2evlp("e2evlp-tiny"), module).eval()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    other = ids.clone()
    other[0, 2] = 99
    a, b = emb(ids)[0, 2], emb(other)[0, 2]
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) < 0.8  # ~0.67 expected (1 of 3 equal parts); the old init gave > 0.99
    torch.testing.assert_close(emb(ids)[0, 1], emb(other)[0, 1])  # other positions are untouched
