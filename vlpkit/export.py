"""`torch.export` of E2E-VLP for deployment: encode + detect at a fixed input size, and one caption decoding step.

`E2EVLP.encode` checks its inputs with Python branches on tensor *values* (are the token ids in the vocabulary,
does the batch hold padded images), which `torch.export` cannot trace (data-dependent control flow). The wrappers
here compose the same blocks with tensors in and tensors out and without those branches, so:

- validate inputs before calling an exported program (it does not: ids out of range index out of bounds);
- with `pixel_mask`, padded pixels are always zeroed before every convolution (an all-ones mask changes nothing),
  so one exported program serves padded and unpadded batches; without it, images are taken as unpadded.

tests/test_export.py checks every exported program against the eager model (max abs difference <= 1e-4).

    >>> program = export_detector(model, pixel_values, input_ids, attention_mask=attention_mask)
    >>> logits, boxes, *attributes = program.module()(pixel_values, input_ids, attention_mask)
"""

from __future__ import annotations

import torch
from torch import nn

from .models.backbone import mask_from_sizes, valid_sizes_at_stride
from .models.decoder import DecoderCache
from .models.e2evlp import E2EVLP
from .outputs import EncoderOutput

__all__ = ["DecodeStepForExport", "DetectorForExport", "cache_to_tensors", "export_decode_step",
           "export_detector"]


class DetectorForExport(nn.Module):
    """`model.detect(model.encode(...))` with flat tensor inputs and outputs.

    forward(pixel_values [B, 3, H, W], pixel_mask [B, H, W] bool, input_ids [B, L], attention_mask [B, L])
    -> (pred_logits [B, Q, K+1], pred_boxes [B, Q, 4], pred_attributes [B, Q, A]).
    The `pixel_mask` argument exists only with `with_pixel_mask=True`; `pred_attributes` only when the model has an
    attribute head.
    """

    def __init__(self, model: E2EVLP, with_pixel_mask: bool = True) -> None:
        super().__init__()
        self.model = model
        self.with_pixel_mask = with_pixel_mask

    def forward(self, pixel_values: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.with_pixel_mask:
            pixel_mask, input_ids, attention_mask = inputs
        else:
            (input_ids, attention_mask), pixel_mask = inputs, None
        detection = self.model.detect(self.encode(pixel_values, pixel_mask, input_ids, attention_mask))
        outputs = (detection.pred_logits, detection.pred_boxes)
        return outputs if detection.pred_attributes is None else outputs + (detection.pred_attributes,)

    def encode(self, pixel_values, pixel_mask, input_ids, attention_mask) -> EncoderOutput:
        """`E2EVLP.embed_image` + `E2EVLP.encode` without their value checks (same blocks, same order)."""
        model, backbone = self.model, self.model.backbone
        batch, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones(batch, height, width, dtype=torch.bool, device=pixel_values.device)
        pixel_mask = pixel_mask.bool()
        # GridFeatureExtractor's pre-hooks zero the padding before each convolution when `_active_mask` is set; it
        # sets it only after asking `pixel_mask.all()`, the branch export cannot trace, so it is set here instead.
        backbone._active_mask = pixel_mask if (backbone.mask_padding and self.with_pixel_mask) else None
        backbone._image_size = (height, width)
        try:
            grid = backbone.trunk(pixel_values)
        finally:
            backbone._active_mask = None
        grid_mask = mask_from_sizes(valid_sizes_at_stride(pixel_mask, backbone.stride.bit_length() - 1),
                                    grid.shape[-2], grid.shape[-1])
        features = backbone.input_proj(grid)
        pos = model.position_encoding(grid_mask).to(features.dtype)
        text = model.text_embeddings(input_ids)
        src = torch.cat([text, features.flatten(2).transpose(1, 2).to(text.dtype)], dim=1)
        memory_pos = torch.cat([torch.zeros_like(text), pos.flatten(2).transpose(1, 2).to(text.dtype)], dim=1)
        padding_mask = torch.cat([~attention_mask.bool(), ~grid_mask.flatten(1)], dim=1)
        memory = model.encoder(src, memory_pos, padding_mask)
        return EncoderOutput(memory, padding_mask, memory_pos, text.shape[1], tuple(grid.shape[-2:]))


def export_detector(model: E2EVLP, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                    pixel_mask: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None) -> torch.export.ExportedProgram:
    """Export encode + detect for the shapes of the example inputs (batch, image size and text length are fixed).

    Args:
        model: an E2EVLP in eval mode (dropout is traced as it is set).
        pixel_values: [B, 3, H, W] example images.
        input_ids: [B, L] example token ids (`[CLS] text [SEP] [PAD]...`).
        pixel_mask: [B, H, W] example mask; when given, the program takes a `pixel_mask` argument after
            `pixel_values` (padded batches), otherwise images are taken as unpadded.
        attention_mask: [B, L] example mask (default all ones); the program always takes it.
    Returns:
        The `torch.export.ExportedProgram`; call `program.module()(pixel_values, input_ids, attention_mask)`
        (with `pixel_mask` after `pixel_values` when exported with one) -> (pred_logits, pred_boxes, and
        pred_attributes when the model has an attribute head).
    """
    if model.training:
        raise ValueError("export_detector: call model.eval() first (dropout would be exported as in training)")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    wrapper = DetectorForExport(model, with_pixel_mask=pixel_mask is not None).eval()
    inputs = (pixel_values,) + ((pixel_mask.bool(),) if pixel_mask is not None else ()) + (input_ids, attention_mask)
    return torch.export.export(wrapper, inputs)


class DecodeStepForExport(nn.Module):
    """`E2EVLP.decode_step` with the `DecoderCache` flattened into stacked tensors (N decoder layers).

    forward(token_ids [B, 1], cross_k, cross_v [N, B, heads, S, head_dim], memory_padding_mask [B, S] bool,
            past_k, past_v [N, B, heads, t, head_dim])
    -> (logits [B, 1, V], new_k, new_v [N, B, heads, t + 1, head_dim]).
    """

    def __init__(self, model: E2EVLP) -> None:
        super().__init__()
        self.model = model

    def forward(self, token_ids, cross_k, cross_v, memory_padding_mask, past_k, past_v):
        cache = DecoderCache(list(zip(cross_k.unbind(0), cross_v.unbind(0))), memory_padding_mask,
                             list(zip(past_k.unbind(0), past_v.unbind(0))))
        logits = self.model.decode_step(token_ids, cache)
        return (logits, torch.stack([k for k, _ in cache.self_kv]), torch.stack([v for _, v in cache.self_kv]))


def cache_to_tensors(cache: DecoderCache) -> tuple[torch.Tensor, ...]:
    """A `DecoderCache` with at least one decoded token -> (cross_k, cross_v, memory_padding_mask, past_k, past_v),
    the cache arguments of `DecodeStepForExport`."""
    if cache.self_kv is None:
        raise ValueError("cache_to_tensors: the cache holds no decoded token yet; run one eager decode_step first "
                         "(the exported step needs a past of at least one token)")
    return (torch.stack([k for k, _ in cache.cross_kv]), torch.stack([v for _, v in cache.cross_kv]),
            cache.memory_padding_mask, torch.stack([k for k, _ in cache.self_kv]),
            torch.stack([v for _, v in cache.self_kv]))


def export_decode_step(model: E2EVLP, token_ids: torch.Tensor, cache: DecoderCache,
                       dynamic_length: bool = True) -> torch.export.ExportedProgram:
    """Export one incremental decoding step for the example's batch and memory length.

    Args:
        model: an E2EVLP in eval mode.
        token_ids: [B, 1] example next tokens.
        cache: an example `DecoderCache` after at least one step (`init_decoder_cache` then `decode_step`);
            two with `dynamic_length` (export would specialise an example of length 1 to that constant).
        dynamic_length: let the past length t vary (from 1 to max_position_embeddings - 1) in the program;
            False fixes it to the example's.
    Returns:
        The `ExportedProgram`; `program.module()(token_ids, *cache_to_tensors(cache))` -> (logits, new_k, new_v).
    """
    if model.training:
        raise ValueError("export_decode_step: call model.eval() first (dropout would be exported as in training)")
    if token_ids.dim() != 2 or token_ids.shape[1] != 1:
        raise ValueError(f"export_decode_step: token_ids must have shape [B, 1], got {list(token_ids.shape)}")
    args = (token_ids,) + cache_to_tensors(cache)
    dynamic_shapes = None
    if dynamic_length:
        if cache.length < 2:
            raise ValueError(f"export_decode_step: with dynamic_length the example cache needs at least 2 decoded "
                             f"tokens, got {cache.length} (an example of length 1 is specialised to that constant; "
                             f"the program still runs from length 1)")
        # the upper bound lets export prove that position t + 1 stays inside the position table
        past = torch.export.Dim("past_length", min=1, max=model.config.max_position_embeddings - 1)
        dynamic_shapes = (None, None, None, None, {3: past}, {3: past})
    return torch.export.export(DecodeStepForExport(model).eval(), args, dynamic_shapes=dynamic_shapes)
