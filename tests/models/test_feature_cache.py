"""A frozen trunk memoised per image (`vlpkit.models.feature_cache`): exact, batch-independent, bounded, frozen."""

import pytest
import torch

from vlpkit import build_e2evlp
from vlpkit.models.feature_cache import CachedGridFeatures, GridFeatureCache, freeze_trunk


@pytest.fixture
def model():
    torch.manual_seed(0)
    # trainable BatchNorm: the cache must use its running statistics (eval mode) even while the model trains
    return build_e2evlp("e2evlp-tiny", backbone_norm="batch_norm", backbone_last_stage="layer3")


def _padded_batch(images):
    height, width = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    pixels = torch.zeros(len(images), 3, height, width)
    mask = torch.zeros(len(images), height, width, dtype=torch.bool)
    for k, img in enumerate(images):
        pixels[k, :, : img.shape[1], : img.shape[2]] = img
        mask[k, : img.shape[1], : img.shape[2]] = True
    return pixels, mask


def test_cached_features_equal_the_extractor_on_real_cells(model):
    images = [torch.randn(3, 70, 90), torch.randn(3, 64, 64), torch.randn(3, 97, 33)]
    pixels, mask = _padded_batch(images)
    extractor = model.backbone.eval()
    with torch.no_grad():
        ref, ref_mask = extractor(pixels, mask)
    extractor.train()  # the cache switches to eval mode for its misses and restores the flag
    cached = CachedGridFeatures(extractor, GridFeatureCache())
    first, first_mask = cached(pixels, mask)
    assert extractor.training
    assert torch.equal(first_mask, ref_mask) and first.shape == ref.shape
    torch.testing.assert_close(first * first_mask[:, None], ref * ref_mask[:, None], atol=1e-5, rtol=0)
    assert not first[~first_mask[:, None].expand_as(first)].any()  # cells outside an image hold zeros
    assert (cached.cache.hits, cached.cache.misses, len(cached.cache)) == (0, 3, 3)
    again, _ = cached(pixels, mask)
    assert torch.equal(again, first) and cached.cache.hits == 3


def test_an_image_hits_whatever_it_is_batched_with(model):
    cached = CachedGridFeatures(model.backbone, GridFeatureCache())
    a, b, c = torch.randn(3, 64, 64), torch.randn(3, 48, 80), torch.randn(3, 96, 40)
    alone, alone_mask = cached(a[None])
    pixels, mask = _padded_batch([b, a, c])
    batched, batched_mask = cached(pixels, mask)
    assert cached.cache.hits == 1 and cached.cache.misses == 3
    gh, gw = alone.shape[-2:]
    assert batched_mask[1, :gh, :gw].all() and not batched_mask[1, gh:].any() and not batched_mask[1, :, gw:].any()
    assert torch.equal(batched[1, :, :gh, :gw], alone[0])


def test_a_changed_image_is_a_miss(model):
    cached = CachedGridFeatures(model.backbone, GridFeatureCache())
    img = torch.randn(1, 3, 64, 64)
    first, _ = cached(img)
    flipped, _ = cached(img.flip(-1))
    assert cached.cache.misses == 2 and not torch.allclose(first, flipped)
    assert cached.cache.key(img[0]) != cached.cache.key(img[0].double())  # dtype is part of the key


def test_least_recently_used_images_are_evicted_at_the_budget(model):
    cached = CachedGridFeatures(model.backbone, GridFeatureCache())
    one, _ = cached(torch.randn(1, 3, 64, 64))
    size_mb = one.numel() * one.element_size() / 2**20
    cache = GridFeatureCache(max_megabytes=2.5 * size_mb)  # room for two images
    cached = CachedGridFeatures(model.backbone, cache)
    imgs = [torch.randn(1, 3, 64, 64) for _ in range(3)]
    cached(imgs[0]), cached(imgs[1]), cached(imgs[0]), cached(imgs[2])  # imgs[1] is the least recently used
    assert (len(cache), cache.evictions) == (2, 1)
    assert cache.get(cache.key(imgs[0][0])) is not None and cache.get(cache.key(imgs[1][0])) is None
    assert cache.stats()["megabytes"] == pytest.approx(2 * size_mb)
    with pytest.raises(ValueError, match="max_megabytes"):
        GridFeatureCache(0)


def test_a_padded_batch_without_mask_padding_is_refused(model):
    model.backbone.mask_padding = False
    pixels, mask = _padded_batch([torch.randn(3, 64, 64), torch.randn(3, 32, 64)])
    with pytest.raises(ValueError, match="mask_padding"):
        CachedGridFeatures(model.backbone, GridFeatureCache())(pixels, mask)


def test_freeze_trunk_freezes_the_backbone_keeps_keys_and_trains_the_rest(model):
    keys = list(model.state_dict())
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    cache = freeze_trunk(model, max_megabytes=64)
    assert list(model.state_dict()) == keys
    assert not any(p.requires_grad for p in model.backbone.parameters())
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    pixels, ids = torch.randn(2, 3, 64, 64), torch.tensor([[2, 50, 60, 3], [2, 70, 80, 3]])
    for _ in range(2):
        out = model(pixels, input_ids=ids)
        loss = out.itm_logits.sum() + out.detection.pred_boxes.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (cache.misses, cache.hits) == (2, 2)
    for k, v in model.backbone.state_dict().items():  # weights and BatchNorm running statistics
        assert torch.equal(v, before[k]), k
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_an_image_repeated_in_a_batch_is_computed_once(model):
    cached = CachedGridFeatures(model.backbone, GridFeatureCache())
    a, b = torch.randn(3, 64, 64), torch.randn(3, 64, 64)
    out, _ = cached(torch.stack([a, b, a, a]))
    assert (cached.cache.misses, cached.cache.hits, len(cached.cache)) == (2, 2, 2)
    assert torch.equal(out[0], out[2]) and torch.equal(out[0], out[3]) and not torch.equal(out[0], out[1])
