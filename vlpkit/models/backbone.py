"""Grid feature extractor: a torchvision ResNet trunk with frozen BatchNorm, then a 1x1 conv to d_model."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

_TRUNK_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}
_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")  # "conv1" stands for the whole stem (conv1 + bn1)


def valid_sizes_at_stride(pixel_mask: torch.Tensor, num_halvings: int) -> torch.Tensor:
    """Height/width of the real (unpadded) region of each image after `num_halvings` stride-2 steps.

    Every stride-2 layer of a ResNet (7x7 conv, 3x3 max-pool, 3x3 conv, 1x1 downsample) maps a length n to
    ceil(n / 2), so the real region of size (h, w) becomes (ceil(h / 2^k), ceil(w / 2^k)).

    Args:
        pixel_mask: [B, H, W] bool, True on real pixels (top-left anchored).
    Returns:
        [B, 2] int64 (height, width).
    """
    h = pixel_mask.any(dim=2).sum(dim=1)
    w = pixel_mask.any(dim=1).sum(dim=1)
    div = 2**num_halvings
    return torch.stack([(h + div - 1) // div, (w + div - 1) // div], dim=1)


def mask_from_sizes(sizes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, 2] (h, w) sizes -> [B, height, width] bool mask, True inside the top-left h x w region."""
    rows = torch.arange(height, device=sizes.device)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(width, device=sizes.device)[None, None, :] < sizes[:, 1, None, None]
    return rows & cols


class GridFeatureExtractor(nn.Module):
    """ResNet trunk (C5, stride 32) + 1x1 projection to `d_model`.

    The trunk uses `torchvision.ops.FrozenBatchNorm2d` (BatchNorm statistics and affine parameters are buffers,
    as in DETR). Stages before the last `trainable_layers` have `requires_grad=False`.

    With `mask_padding=True`, padded pixels and their descendants are set to zero before every convolution, so a
    feature at a real position is exactly what the unpadded image alone would give: batching images of different
    sizes cannot change any image's features (DETR lets padding leak into the border features).

    With `channels_last=True` the images enter the trunk in `torch.channels_last` (the builder stores the trunk's
    weights that way too): oneDNN's convolutions then skip a layout conversion per call (benchmarks/bench_levers.py).
    """

    def __init__(self, trunk: nn.Module, out_channels: int, d_model: int, trainable_layers: int = 3,
                 mask_padding: bool = True, stride: int = 32, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.trunk = trunk
        self.num_channels = out_channels
        self.stride = stride
        self.input_proj = nn.Conv2d(out_channels, d_model, kernel_size=1)
        self.mask_padding = mask_padding
        self.trainable_layers = trainable_layers
        frozen = _STAGES[: len(_STAGES) - trainable_layers]
        for name, param in self.trunk.named_parameters():
            stage = "conv1" if name.startswith(("conv1", "bn1")) else name.split(".")[0]
            if stage in frozen:
                param.requires_grad_(False)
        self._active_mask: torch.Tensor | None = None
        self._image_size: tuple[int, int] | None = None
        if mask_padding:
            for module in self.trunk.modules():
                if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):  # max-pool: post-ReLU zeros never win
                    module.register_forward_pre_hook(self._zero_padding)

    def _zero_padding(self, module: nn.Module, args: tuple[torch.Tensor, ...]):
        if self._active_mask is None:
            return None
        (x,) = args
        # how many stride-2 steps lie between the image and this conv's input: ceil-halve the height until it fits
        halvings, height = 0, self._image_size[0]
        while height > x.shape[-2]:
            height, halvings = -(-height // 2), halvings + 1
        mask = mask_from_sizes(valid_sizes_at_stride(self._active_mask, halvings), x.shape[-2], x.shape[-1])
        return (x * mask[:, None].to(x.dtype),)

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None):
        """
        Args:
            pixel_values: [B, 3, H, W] float, normalised, zero in the padded region.
            pixel_mask: [B, H, W] bool/int, 1 on real pixels; None means no padding.
        Returns:
            features: [B, d_model, H/s, W/s] (ceil; s = `stride`, 32 or 16), projected grid features.
            grid_mask: [B, H/s, W/s] bool, True on grid cells that cover real pixels.
        """
        if pixel_mask is None:
            pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[-2:], dtype=torch.bool,
                                    device=pixel_values.device)
        pixel_mask = pixel_mask.bool()
        padded = self.mask_padding and not bool(pixel_mask.all())
        self._active_mask = pixel_mask if padded else None
        self._image_size = tuple(pixel_values.shape[-2:])
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        try:
            x = self.trunk(pixel_values)
        finally:
            self._active_mask = None
        halvings = self.stride.bit_length() - 1
        grid_mask = mask_from_sizes(valid_sizes_at_stride(pixel_mask, halvings), x.shape[-2], x.shape[-1])
        return self.input_proj(x), grid_mask


def build_resnet_trunk(name: str, weights: str | None = None, last_stage: str = "layer4",
                       norm: str = "frozen_bn") -> tuple[nn.Module, int]:
    """A torchvision ResNet without its pooling and classifier, with FrozenBatchNorm2d (or trainable BatchNorm).

    Args:
        name: "resnet18" | "resnet34" | "resnet50" | "resnet101" | "resnet152".
        weights: None (random init), a torchvision weights name such as "IMAGENET1K_V1" (downloaded by torchvision
            if not cached: for users who have network access), or a path to a local `.pth`/`.safetensors` file.
        last_stage: "layer4" (C5, stride 32, the paper) or "layer3" (C4, stride 16: a finer grid for small images).
        norm: "frozen_bn" (the paper and DETR: statistics and affine parameters are fixed buffers, right for a
            pretrained trunk) or "batch_norm" (trainable `nn.BatchNorm2d`, for a trunk trained from scratch: a
            randomly initialised FrozenBatchNorm2d is the identity, which leaves a deep trunk unnormalised).
    Returns:
        (trunk, output channels).
    """
    if last_stage not in ("layer3", "layer4"):
        raise ValueError(f"last_stage={last_stage!r}; expected 'layer3' or 'layer4'")
    if norm not in ("frozen_bn", "batch_norm"):
        raise ValueError(f"norm={norm!r}; expected 'frozen_bn' or 'batch_norm'")
    if name not in _TRUNK_CHANNELS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(_TRUNK_CHANNELS)}")
    builder = getattr(torchvision.models, name)
    tv_weights = None
    if weights is not None and not Path(weights).exists():
        names = [w.name for w in torchvision.models.get_model_weights(name)]
        if weights not in names:
            looks_like_file = "/" in weights or "\\" in weights or Path(weights).suffix in (".pth", ".pt",
                                                                                           ".safetensors")
            if looks_like_file:
                raise FileNotFoundError(f"backbone_weights file not found: {weights}")
            raise ValueError(f"backbone_weights={weights!r} is neither a file nor a torchvision weights name of "
                             f"{name}; valid names: {names}")
        tv_weights = torchvision.models.get_model_weights(name)[weights]
    resnet = builder(weights=tv_weights, norm_layer=FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d)
    children = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    kept = children[: children.index(last_stage) + 1]
    if weights is not None and Path(weights).exists():
        from ..checkpoint import load_state_dict_file

        state = load_state_dict_file(weights)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = resnet.load_state_dict(state, strict=False)
        # strict for the stages the trunk keeps; a file of a truncated trunk (e.g. the trunk warm-up's) may lack
        # the dropped stages and the classifier
        missing = [k for k in missing if k.split(".")[0] in kept]
        if missing or unexpected:
            raise ValueError(f"backbone weights {weights} do not fit {name} up to {last_stage}: missing keys "
                             f"{missing}, unexpected keys {unexpected}")
    trunk = nn.Sequential()
    for child in kept:
        trunk.add_module(child, getattr(resnet, child))
    channels = _TRUNK_CHANNELS[name] // (2 if last_stage == "layer3" else 1)
    return trunk, channels


def interpolate_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """DETR's nearest-neighbour mask downsampling, kept for comparison in tests: [B,H,W] -> [B,*size] bool."""
    return F.interpolate(mask[None].float(), size=size)[0].bool()
