"""A frozen image trunk whose grid features are computed once per image and then looked up.

Fine-tuning with the trunk frozen (the ResNet and the 1x1 projection: `GridFeatureExtractor`) is not the paper's
recipe, which fine-tunes end to end at a small backbone rate. On a CPU the trunk's forward and backward are most
of a step's cost (docs/blocks/backbone.md measures it). With the trunk frozen, an image's features never change,
so they are memoised.

The key is the image's own pixels (the real region of `pixel_values`, without the batch padding), hashed: a
repeated image hits whatever its batch, and an augmented copy (another scale, a flip) is a different image and
a miss, so the cache can never return stale or wrong features. No library does this for a module's output keyed
by tensor content (`functools.lru_cache` needs hashable arguments), hence the few lines here.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

from .backbone import GridFeatureExtractor, mask_from_sizes, valid_sizes_at_stride


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class GridFeatureCache:
    """Least-recently-used memo of per-image grid features, at most `max_megabytes` of tensors.

    Attributes:
        hits, misses, evictions: counts since construction (or `clear`).
    """

    def __init__(self, max_megabytes: float = 2048.0) -> None:
        if not max_megabytes > 0:
            raise ValueError(f"max_megabytes must be > 0, got {max_megabytes}")
        self.max_bytes = int(max_megabytes * 2**20)
        self._store: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._store)

    @staticmethod
    def key(image: torch.Tensor) -> bytes:
        """A digest of one image's pixels [3, h, w] (shape and dtype included)."""
        data = image.detach().to("cpu", copy=False).contiguous()
        digest = hashlib.blake2b(data.numpy().tobytes(), digest_size=16)
        digest.update(repr((tuple(data.shape), str(data.dtype))).encode())
        return digest.digest()

    def get(self, key: bytes) -> torch.Tensor | None:
        value = self._store.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._store.move_to_end(key)
        return value

    def put(self, key: bytes, value: torch.Tensor) -> None:
        size = _nbytes(value)
        if size > self.max_bytes:
            return
        if key in self._store:
            self.bytes -= _nbytes(self._store.pop(key))
        self._store[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._store.popitem(last=False)
            self.bytes -= _nbytes(old)
            self.evictions += 1

    def clear(self) -> None:
        self._store.clear()
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    def stats(self) -> dict[str, float]:
        """{"hits", "misses", "evictions", "entries", "megabytes"}."""
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "entries": len(self),
                "megabytes": self.bytes / 2**20}


class CachedGridFeatures:
    """A `GridFeatureExtractor` frozen (no parameter trains, BatchNorm in eval mode) and memoised per image.

    Same call and outputs as the extractor: `(features [B, d, H/s, W/s], grid_mask [B, H/s, W/s])`. Features of
    the grid cells that cover real pixels are exactly the extractor's in eval mode (it zeroes padding before
    every convolution, `mask_padding=True`, so an image's features do not depend on its batch); cells outside
    the image, which every attention masks, hold zeros.

    A plain object, not an `nn.Module`: `freeze_trunk` sets it as `E2EVLP.feature_cache`, which `embed_image`
    calls instead of `E2EVLP.backbone`, so the model's parameters and state-dict keys stay as they were.
    """

    def __init__(self, extractor: GridFeatureExtractor, cache: GridFeatureCache) -> None:
        self.extractor = extractor
        self.cache = cache

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None):
        ext = self.extractor
        batch, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones(batch, height, width, dtype=torch.bool, device=pixel_values.device)
        pixel_mask = pixel_mask.bool()
        if not ext.mask_padding and not bool(pixel_mask.all()):
            raise ValueError("a cached trunk needs mask_padding=True when the batch is padded: without it an "
                             "image's features depend on the images it is batched with")
        halvings = ext.stride.bit_length() - 1
        rows, cols = pixel_mask.any(2).sum(1).tolist(), pixel_mask.any(1).sum(1).tolist()
        grid_sizes = valid_sizes_at_stride(pixel_mask, halvings).tolist()  # [B, 2] (rows, cols) per image
        keys = [self.cache.key(pixel_values[i, :, : rows[i], : cols[i]]) for i in range(batch)]
        first: dict[bytes, int] = {}  # each image's first row in the batch
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        self.cache.hits += batch - len(first)  # an image repeated within the batch is computed once
        features = {k: self.cache.get(k) for k in first}
        missing = [k for k, f in features.items() if f is None]
        if missing:
            index = [first[k] for k in missing]
            was_training = ext.training
            ext.eval()
            try:
                feats, _ = ext(pixel_values[index], pixel_mask[index])
            finally:
                ext.train(was_training)
            for j, (k, i) in enumerate(zip(missing, index)):
                gh, gw = grid_sizes[i]
                features[k] = feats[j, :, :gh, :gw].clone()
                self.cache.put(k, features[k])
        grid_h, grid_w = -(-height // ext.stride), -(-width // ext.stride)
        out = pixel_values.new_zeros(batch, ext.input_proj.out_channels, grid_h, grid_w)
        for i, k in enumerate(keys):
            f = features[k]
            out[i, :, : f.shape[1], : f.shape[2]] = f
        return out, mask_from_sizes(torch.tensor(grid_sizes, device=pixel_values.device), grid_h, grid_w)


def freeze_trunk(model, max_megabytes: float = 2048.0) -> GridFeatureCache:
    """Freeze `model.backbone` (an `E2EVLP`'s ResNet and 1x1 projection: `requires_grad=False`) and memoise its
    features per image (`CachedGridFeatures`, at most `max_megabytes`). Returns the cache (see its `stats`)."""
    for param in model.backbone.parameters():
        param.requires_grad_(False)
    cache = GridFeatureCache(max_megabytes)
    model.feature_cache = CachedGridFeatures(model.backbone, cache)
    return cache
