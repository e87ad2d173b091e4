import torch

from vlpkit import build_e2evlp


def test_incremental_decoding_matches_full_recomputation():
    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-tiny").eval()
    pixels = torch.randn(3, 3, 64, 80)
    tokens = torch.randint(5, model.config.vocab_size, (3, 9))
    with torch.no_grad():
        enc = model.encode(pixels)
        full = model.caption_logits(enc, tokens)
        cache = model.init_decoder_cache(enc)
        steps = [model.decode_step(tokens[:, t : t + 1], cache) for t in range(tokens.shape[1])]
        assert cache.length == tokens.shape[1]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
        # a multi-token chunk after a cached prefix is causal too
        cache = model.init_decoder_cache(enc)
        first = model.decode_step(tokens[:, :4], cache)
        rest = model.decode_step(tokens[:, 4:], cache)
        torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=0)


def test_causal_logits_ignore_future_tokens():
    model = build_e2evlp("e2evlp-tiny").eval()
    enc = model.encode(torch.randn(1, 3, 64, 64))
    a = torch.tensor([[2, 10, 11, 12, 13]])
    b = a.clone()
    b[0, 3:] = torch.tensor([40, 41])
    with torch.no_grad():
        la, lb = model.caption_logits(enc, a), model.caption_logits(enc, b)
    torch.testing.assert_close(la[:, :3], lb[:, :3])
    assert not torch.allclose(la[:, 3:], lb[:, 3:])


def test_cache_reorder_selects_rows():
    model = build_e2evlp("e2evlp-tiny").eval()
    enc = model.encode(torch.randn(2, 3, 64, 64)).repeat_interleave(2)
    tokens = torch.randint(5, 100, (4, 3))
    with torch.no_grad():
        cache = model.init_decoder_cache(enc)
        model.decode_step(tokens, cache)
        index = torch.tensor([1, 1, 3, 2])
        cache.reorder(index)
        nxt = torch.full((4, 1), 7)
        stepped = model.decode_step(nxt, cache)[:, 0]
        full = model.caption_logits(enc, torch.cat([tokens[index], nxt], 1))[:, -1]
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=0)


def test_grouped_cross_attention_equals_expanded_keys_and_values():
    import pytest

    from vlpkit.models.attention import MultiHeadAttention

    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4).eval()
    images, beams, t, s = 3, 4, 2, 7
    memory = torch.randn(images, s, 32)
    kv = attn.project_kv(memory, memory)
    mask = torch.zeros(images, s, dtype=torch.bool)
    mask[1, 5:] = True  # padding in one image
    query = torch.randn(images * beams, t, 32)
    grouped, _ = attn(query, kv=kv, key_padding_mask=mask)
    expanded = tuple(x.repeat_interleave(beams, 0) for x in kv)
    reference, _ = attn(query, kv=expanded, key_padding_mask=mask.repeat_interleave(beams, 0))
    torch.testing.assert_close(grouped, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="grouped queries need a whole multiple"):
        attn(torch.randn(images * beams + 1, t, 32), kv=kv, key_padding_mask=mask)


def test_beam_search_keeps_one_cross_attention_row_per_image():
    from vlpkit.generation.decoding import CachedCaptionStep

    torch.manual_seed(0)
    model = build_e2evlp("e2evlp-tiny").eval()
    with torch.no_grad():
        encoding = model.encode(torch.randn(3, 3, 64, 64))
        step = CachedCaptionStep(model, encoding, num_beams=4)
        assert step.cache.cross_kv[0][0].shape[0] == 3  # not 12: the beams of an image share its row
        step(torch.full((12, 1), model.config.bos_token_id))
        step.reorder(torch.tensor([4, 4, 5, 6, 8, 9, 9, 11]))  # image 0 finished; images 1 and 2 go on
    assert step.cache.cross_kv[0][0].shape[0] == 2 and step.cache.self_kv[0][0].shape[0] == 8
    torch.testing.assert_close(step.cache.cross_kv[0][0], model.init_decoder_cache(encoding).cross_kv[0][0][1:])
