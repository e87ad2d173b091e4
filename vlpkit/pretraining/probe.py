"""The grounding probe: does the encoder read the image to fill in a word that only the image gives?

Each visual word of a held-out caption (a colour, shape, size or count word: `visual_word_ids`) is masked on its
own, one row per occurrence, and the MLM head predicts it twice: with the caption's own image, and with the grid
of another image of the batch (the next one, cyclically). The probe is the accuracy with the right image minus the
accuracy with the wrong one. A model whose text side ignores the grid scores exactly 0 (both predictions are the
same); a model that reads the image scores up to the ceiling of its accuracy. Not in the paper: it measures what
MLM with random masking cannot show (docs/pretraining.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.batch import collate_texts
from ..outputs import ImageEmbedding


@dataclass
class GroundingProbe:
    """Counts over the probed rows; `right`, `wrong` and `gain` are accuracies (0 when no row was probed)."""

    correct_right: int = 0
    correct_wrong: int = 0
    rows: int = 0

    @property
    def right(self) -> float:
        return self.correct_right / self.rows if self.rows else 0.0

    @property
    def wrong(self) -> float:
        return self.correct_wrong / self.rows if self.rows else 0.0

    @property
    def gain(self) -> float:
        """Accuracy with the right image minus with another image's grid."""
        return self.right - self.wrong

    def add(self, other: GroundingProbe) -> GroundingProbe:
        return GroundingProbe(self.correct_right + other.correct_right, self.correct_wrong + other.correct_wrong,
                              self.rows + other.rows)


def _visual_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, visual_ids: torch.Tensor, mask_id: int):
    """One row per visual token: (caption index [R], masked ids [R, L], labels [R]) with that token masked."""
    where = (torch.isin(input_ids, visual_ids.to(input_ids.device)) & attention_mask.bool()).nonzero()
    caption = where[:, 0]
    masked = input_ids[caption].clone()
    labels = masked[torch.arange(len(where)), where[:, 1]].clone()
    masked[torch.arange(len(where)), where[:, 1]] = mask_id
    return caption, masked, labels


@torch.no_grad()
def probe_batch(model, image: ImageEmbedding, captions: list[str], tokenizer, visual_ids: torch.Tensor,
                max_length: int | None = None) -> GroundingProbe:
    """The probe on one batch: `image` holds B >= 2 embedded images (`model.embed_image`), `captions` one caption
    of each, in the same order; the wrong image of caption i is image (i + 1) mod B."""
    if len(captions) != len(image):
        raise ValueError(f"probe_batch: {len(captions)} captions for {len(image)} images")
    if len(captions) < 2:
        raise ValueError("probe_batch needs at least 2 images (the wrong image is another image of the batch)")
    device = image.features.device
    ids, mask, types = (t.to(device) for t in collate_texts(captions, tokenizer,
                                                            max_length or model.config.max_text_length))
    caption, masked, labels = _visual_rows(ids, mask, visual_ids, model.config.mask_token_id)
    if not len(caption):
        return GroundingProbe()
    counts = []
    for shift in (0, 1):
        encoding = model.encode(input_ids=masked, attention_mask=mask[caption], token_type_ids=types[caption],
                                image=image.select((caption + shift) % len(captions)))
        logits = model.mlm_logits(encoding)
        position = (masked == model.config.mask_token_id).float().argmax(1)
        predicted = logits[torch.arange(len(caption), device=device), position].argmax(-1)
        counts.append(int((predicted == labels).sum()))
    return GroundingProbe(counts[0], counts[1], len(caption))


@torch.no_grad()
def grounding_probe(model, tokenizer, pixel_values: torch.Tensor, captions: list[str], visual_ids: torch.Tensor,
                    pixel_mask: torch.Tensor | None = None, batch_size: int = 32) -> GroundingProbe:
    """The probe over a set of images [N, 3, H, W] (normalised, as the model's transforms give them) and one
    caption of each; batches of `batch_size` (each at least 2 images) choose the wrong images."""
    if len(captions) != len(pixel_values):
        raise ValueError(f"grounding_probe: {len(captions)} captions for {len(pixel_values)} images")
    if len(captions) < 2:
        raise ValueError("grounding_probe needs at least 2 images (the wrong image is another image of the set)")
    model.eval()
    device = next(model.parameters()).device
    starts = list(range(0, len(captions), batch_size))
    if len(captions) - starts[-1] == 1 and len(starts) > 1:  # no batch of one image: it would have no wrong image
        starts.pop()
    total = GroundingProbe()
    for start, stop in zip(starts, starts[1:] + [len(captions)]):
        image = model.embed_image(pixel_values[start:stop].to(device),
                                  None if pixel_mask is None else pixel_mask[start:stop].to(device))
        total = total.add(probe_batch(model, image, captions[start:stop], tokenizer, visual_ids))
    return total
