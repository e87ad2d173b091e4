"""Batching: pad images and texts to the batch maximum and keep masks that say what is real.

Masks follow the Hugging Face convention: ``pixel_mask`` and ``attention_mask`` are 1/True on real pixels and
tokens, 0/False on padding. Images are anchored top-left and padded with zeros at the bottom and right, after
normalisation (so a padded pixel is 0, not the ImageNet mean).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from vlpkit.data.tokenization import DEFAULT_MAX_TEXT_LENGTH

__all__ = ["Batch", "TextTruncationWarning", "collate_images", "collate_samples", "collate_texts"]


class TextTruncationWarning(UserWarning):
    """An over-long text was cut to ``max_length`` tokens, or an empty text was encoded as ``[CLS] [SEP]``."""


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """Warn once per process and kind of problem (a dataset of long captions would otherwise warn every batch)."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, TextTruncationWarning, stacklevel=3)


@dataclass
class Batch:
    """A padded batch for the model.

    Attributes:
        pixel_values: ``[B, 3, H, W]`` float32 normalised images, zero in the padding.
        pixel_mask: ``[B, H, W]`` bool, True = real pixel.
        input_ids: ``[B, L]`` long token ids (``[CLS] text [SEP] [PAD]...``).
        attention_mask: ``[B, L]`` long, 1 = real token.
        token_type_ids: ``[B, L]`` long.
        targets: one dict per image (``"boxes"`` normalised cxcywh ``[N, 4]``, ``"labels"`` ``[N]``, ...).
        mlm_labels: ``[B, L]`` long, -100 where no MLM target (masked language modelling).
        itm_labels: ``[B]`` long, 1 = matching pair (image-text matching).
        itm_pairs: extra image-text matching rows that reuse the batch's images (pretraining with
            ``itm_extra_negatives``): ``"image_index"`` ``[R]`` (row of the batch), ``"input_ids"``,
            ``"attention_mask"``, ``"token_type_ids"`` ``[R, L']``, ``"labels"`` ``[R]`` (1 = matching).
        itc_texts: the own, unmasked text of each sample of the image-text contrastive option of pretraining
            (not in the paper): ``"index"`` ``[R]`` (row of the batch), ``"input_ids"``, ``"attention_mask"``,
            ``"token_type_ids"`` ``[R, L']``, ``"same"`` ``[R, R]`` bool (True where two rows share an image or an
            identical text, so neither is the other's negative).
        caption_ids: ``[B, T]`` long decoder token ids (captioning / image-to-text generation).
        caption_mask: ``[B, T]`` long, 1 = real token.
        answer_scores: ``[B, A]`` float soft answer scores (VQA).
        labels: ``[B]`` long per-example labels (e.g. NLVR2).
        meta: one dict per example (ids, raw captions...), never moved to a device.
    """

    pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    targets: list[dict]
    mlm_labels: torch.Tensor | None = None
    itm_labels: torch.Tensor | None = None
    itm_pairs: dict[str, torch.Tensor] | None = None
    itc_texts: dict[str, torch.Tensor] | None = None
    caption_ids: torch.Tensor | None = None
    caption_mask: torch.Tensor | None = None
    answer_scores: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    meta: list[dict] | None = None

    def __len__(self) -> int:
        return self.pixel_values.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor (including those inside ``targets``) on ``device``; ``meta`` is shared."""

        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(device, non_blocking=non_blocking)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            if isinstance(value, list):
                return [move(v) for v in value]
            return value

        moved = {f.name: move(getattr(self, f.name)) for f in fields(self) if f.name != "meta"}
        return Batch(**moved, meta=self.meta)


def collate_images(
    images: Sequence[torch.Tensor], pad_to_multiple_of: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad images to a common size.

    Args:
        images: ``B`` float tensors ``[3, h_i, w_i]`` (normalised).
        pad_to_multiple_of: round the padded height and width up to a multiple of this (e.g. 32, the backbone
            stride), or ``None``.

    Returns:
        ``pixel_values`` ``[B, 3, H, W]`` float32 with ``H = max h_i`` and ``W = max w_i`` (rounded up), each image
        in the top-left corner and zeros elsewhere; ``pixel_mask`` ``[B, H, W]`` bool, True on the image.
    """
    if len(images) == 0:
        raise ValueError("collate_images got an empty batch (no images)")
    for i, img in enumerate(images):
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"image {i} of the batch is a {type(img).__name__}, expected a tensor [3, h, w]")
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"image {i} of the batch has shape {tuple(img.shape)}, expected [3, h, w]")
        if not img.is_floating_point():
            raise TypeError(
                f"image {i} of the batch has dtype {img.dtype}; expected float (apply the transforms first)"
            )
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    if pad_to_multiple_of:
        height = -(-height // pad_to_multiple_of) * pad_to_multiple_of
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    # Padding to the batch maximum is a zeros tensor plus a slice copy; torch has no built-in for ragged 2-D padding
    # (pad_sequence pads one dimension only) and transformers' image processors work on numpy, not tensors.
    pixel_values = images[0].new_zeros((len(images), 3, height, width), dtype=torch.float32)
    pixel_mask = torch.zeros((len(images), height, width), dtype=torch.bool, device=images[0].device)
    for i, img in enumerate(images):
        h, w = img.shape[1:]
        pixel_values[i, :, :h, :w] = img
        pixel_mask[i, :h, :w] = True
    return pixel_values, pixel_mask


def collate_texts(
    texts: Sequence[str] | Sequence[Sequence[str]],
    tokenizer,
    max_length: int = DEFAULT_MAX_TEXT_LENGTH,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokenise and pad texts as ``[CLS] text [SEP] [PAD]...``.

    A text longer than ``max_length`` tokens (special tokens included) is cut to ``max_length`` (keeping the final
    [SEP]) and an empty or blank text is encoded as ``[CLS] [SEP]``; each case warns once per process with a
    :class:`TextTruncationWarning`.

    Args:
        texts: ``B`` strings, or ``B`` lists of words (pre-split text, e.g. PTB-tokenised captions).
        tokenizer: a ``BertTokenizerFast`` (see :mod:`vlpkit.data.tokenization`).
        max_length: maximum tokens per text, [CLS] and [SEP] included (default 40).

    Returns:
        ``input_ids``, ``attention_mask`` (1 = real token), ``token_type_ids``, each ``[B, L]`` long with
        ``L = min(max_length, longest text)``.
    """
    if len(texts) == 0:
        raise ValueError("collate_texts got an empty batch (no texts)")
    if max_length < 2:
        raise ValueError(f"max_length must leave room for [CLS] and [SEP] (>= 2), got {max_length}")
    texts = list(texts)
    split = not isinstance(texts[0], str)
    for i, t in enumerate(texts):
        if split and (isinstance(t, str) or not all(isinstance(w, str) for w in t)):
            raise TypeError(f"text {i}: mix of strings and word lists; give all strings or all lists of strings")
        if not split and not isinstance(t, str):
            raise TypeError(f"text {i} is a {type(t).__name__}; expected a string (or give all texts as word lists)")
    texts = [list(t) for t in texts] if split else texts

    blank = [i for i, t in enumerate(texts) if not (any(w.strip() for w in t) if split else t.strip())]
    if blank:
        _warn_once("empty", f"empty text (e.g. #{blank[0]} of a batch) encoded as [CLS] [SEP]")
    # One untruncated pass gives the true lengths for the warning; the second pass truncates and pads.
    lengths = [len(ids) for ids in tokenizer(texts, is_split_into_words=split)["input_ids"]]
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if too_long:
        i = too_long[0]
        _warn_once(
            "long",
            f"text longer than max_length={max_length} tokens truncated (e.g. #{i} of a batch, {lengths[i]} tokens)",
        )
    enc = tokenizer(
        texts,
        is_split_into_words=split,
        padding="longest",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        return_token_type_ids=True,
        return_attention_mask=True,
    )
    return enc["input_ids"].long(), enc["attention_mask"].long(), enc["token_type_ids"].long()


def collate_samples(
    samples: Sequence[tuple[torch.Tensor, dict, str]],
    tokenizer,
    max_length: int = DEFAULT_MAX_TEXT_LENGTH,
    pad_to_multiple_of: int | None = None,
) -> Batch:
    """Build a :class:`Batch` from transformed ``(image, target, text)`` samples (the transforms' output).

    Task fields (``mlm_labels``, ``itm_labels``...) are left ``None`` for the task code to fill.
    """
    if len(samples) == 0:
        raise ValueError("collate_samples got an empty batch (no samples)")
    images, targets, texts = zip(*samples)
    pixel_values, pixel_mask = collate_images(images, pad_to_multiple_of)
    input_ids, attention_mask, token_type_ids = collate_texts(
        ["" if t is None else t for t in texts], tokenizer, max_length
    )
    return Batch(
        pixel_values=pixel_values,
        pixel_mask=pixel_mask,
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        targets=list(targets),
    )
