"""The caption decoder never sees the caption it predicts.

Image-to-text generation encodes the image alone ([CLS] [SEP] + grid), so the only way a caption token can reach
the prediction of an earlier position is through the decoder's self-attention, which is causal. Each check is
also run on a deliberately leaky set-up (the caption given to the encoder as text) to show that it would catch
a leak.
"""

from __future__ import annotations

import pytest
import torch

from vlpkit.builder import build_e2evlp
from vlpkit.losses.label_smoothing import label_smoothed_cross_entropy

T = 7  # decoder input length: [BOS] w1 ... w6


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_e2evlp("e2evlp-tiny", vocab_size=50).eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)


@pytest.fixture
def captions(model):
    words = torch.randint(5, model.config.vocab_size, (2, T + 1))
    words[:, 0] = model.config.bos_token_id
    return words  # decoder input words[:, :T], targets words[:, 1:]


def leaky_encoding(model, images, captions):
    """The bug this file guards against: the target caption given to the encoder as its text."""
    cfg = model.config
    text = torch.cat([torch.full((2, 1), cfg.cls_token_id), captions[:, 1:], torch.full((2, 1), cfg.sep_token_id)], 1)
    return model.encode(images, input_ids=text)


def test_generation_encodes_the_image_alone(model, images, monkeypatch):
    seen = []
    encode = model.encode

    def spy(pixel_values, pixel_mask=None, input_ids=None, **kwargs):
        seen.append(input_ids)
        out = encode(pixel_values, pixel_mask, input_ids, **kwargs)
        seen.append(out.text_length)
        return out

    monkeypatch.setattr(model, "encode", spy)
    model.generate(pixel_values=images, num_beams=2, max_length=3)
    assert seen == [None, 2]  # no text in: [CLS] [SEP] only


@torch.no_grad()
@pytest.mark.parametrize("position", range(1, T))
def test_changing_a_caption_token_changes_no_earlier_logits(model, images, captions, position):
    changed = captions.clone()
    changed[:, position] = (changed[:, position] - 5 + 1) % (model.config.vocab_size - 5) + 5
    assert (changed != captions).sum() == 2

    encoding = model.encode(images)  # image-to-text: what the decoder may read does not include the caption
    before = model.caption_logits(encoding, captions[:, :T])
    after = model.caption_logits(encoding, changed[:, :T])
    # positions 0 .. position-1 predict tokens 1 .. position: none may move when token `position` changes
    torch.testing.assert_close(after[:, :position], before[:, :position], atol=1e-6, rtol=0)
    assert (after[:, position:] - before[:, position:]).abs().amax() > 1e-3  # the change does reach later ones

    leaky_before = model.caption_logits(leaky_encoding(model, images, captions), captions[:, :T])
    leaky_after = model.caption_logits(leaky_encoding(model, images, changed), captions[:, :T])
    assert (leaky_after[:, :position] - leaky_before[:, :position]).abs().amax() > 1e-3  # a leak is detected


def embedding_grads(model, images, captions, leaky):
    """Per position t, the gradient of the caption loss at t w.r.t. every decoder input embedding and every
    encoder text embedding: [T, B, T, d] and [T, B, L, d]."""
    caught = {}
    hooks = [module.register_forward_hook(lambda m, i, out, name=name: caught.__setitem__(name, out))
             for name, module in (("decoder", model.caption_embeddings), ("encoder", model.text_embeddings))]
    try:
        encoding = leaky_encoding(model, images, captions) if leaky else model.encode(images)
        logits = model.caption_logits(encoding, captions[:, :T])
    finally:
        for hook in hooks:
            hook.remove()
    losses = label_smoothed_cross_entropy(logits, captions[:, 1:], ignore_index=model.config.pad_token_id,
                                          reduction="none")  # [B, T]
    dec, enc = [], []
    for t in range(T):
        g_dec, g_enc = torch.autograd.grad(losses[:, t].sum(), [caught["decoder"], caught["encoder"]],
                                           retain_graph=True)
        dec.append(g_dec)
        enc.append(g_enc)
    return torch.stack(dec), torch.stack(enc)


def test_caption_loss_cannot_be_reduced_by_copying(model, images, captions):
    """The loss at position t has exactly zero gradient w.r.t. every input that carries its target (token t+1)
    or later tokens: no setting of the weights can make it copy them."""
    dec, enc = embedding_grads(model, images, captions, leaky=False)
    for t in range(T):
        assert dec[t, :, t + 1:].abs().sum() == 0  # future decoder inputs, the target first (none for t = T-1)
        assert dec[t, :, : t + 1].abs().amax(dim=-1).gt(0).all()  # the visible prefix is used
    # the encoder saw only [CLS] [SEP]: its text carries no caption token
    assert enc.shape[2] == 2

    leaky_dec, leaky_enc = embedding_grads(model, images, captions, leaky=True)
    for t in range(T):
        assert leaky_dec[t, :, t + 1:].abs().sum() == 0  # the decoder itself stays causal...
        # ...but through a leaky encoder the loss at t reaches its own target (encoder text position t + 1)
        assert leaky_enc[t, :, t + 1].abs().amax() > 0


@torch.no_grad()
def test_teacher_forcing_gives_each_position_what_generation_gives(model, images, captions):
    """Incremental decoding cannot see the future (it is not fed yet); teacher forcing matches it position by
    position, so training conditions equal generation conditions."""
    encoding = model.encode(images)
    forced = model.caption_logits(encoding, captions[:, :T])
    cache = model.init_decoder_cache(encoding)
    stepped = torch.cat([model.decode_step(captions[:, t:t + 1], cache) for t in range(T)], dim=1)
    torch.testing.assert_close(stepped, forced, atol=1e-5, rtol=0)
