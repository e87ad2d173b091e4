"""Pretraining data: a weighted mixture of sources, each a reader plus the tasks it serves, and the collator that
turns samples into MLM/ITM/detection/caption batches.

The paper pretrains on COCO captions + instances and Visual Genome objects/attributes/regions (6.01M pairs on 180K
images). Here a `Source` wraps any reader whose raw samples (no transforms) have "image" (PIL), "image_id",
"target" (absolute xyxy "boxes", "labels", optional "attributes") and "captions" (list of str) or "text".
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ..data.batch import Batch, collate_images, collate_texts
from ..data.masking import IGNORE_INDEX, mask_tokens, normalise_caption

TASKS = ("mlm", "itm", "detection", "attributes", "caption", "itc")


def _seed(*parts) -> int:
    """A stable 63-bit seed from any printable parts (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class Source:
    """One pretraining source: a reader, the tasks its samples serve, and its share of the mixture.

    weight: expected number of times each of its images is visited per epoch (0.5 = half of them, drawn afresh
        every epoch; 2 = each twice).
    """

    name: str
    dataset: Dataset
    tasks: tuple[str, ...] = TASKS[:5]  # "itc" (not in the paper) only when asked for
    weight: float = 1.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"source {self.name!r}: unknown task(s) {unknown}; valid tasks: {TASKS}")
        if not self.weight > 0 or not math.isfinite(self.weight):
            raise ValueError(f"source {self.name!r}: weight must be a positive number, got {self.weight}")
        if len(self.dataset) == 0:
            raise ValueError(f"source {self.name!r} is empty")


class PretrainingDataset(Dataset):
    """Mixture of `Source`s: item i -> (image tensor [3, h, w], target dict, caption str).

    Randomness (which caption of an image, the augmentation) is drawn from generators seeded by (seed, epoch,
    index), so an epoch is reproducible in any process, any worker, and after a resume. Call `set_epoch` to vary
    it between epochs (the trainer does).

    Target keys added: "has_boxes" (False when the source does not serve detection), "tasks" (the source's
    tasks), "source" (its name), "image_key" ((source, image_id), used to draw ITM negatives from other images).
    """

    def __init__(self, sources: Sequence[Source], transforms, seed: int = 0) -> None:
        if not sources:
            raise ValueError("PretrainingDataset needs at least one source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        self.sources = list(sources)
        self.transforms = transforms
        self.seed = seed
        self.epoch = 0
        self._index: list[tuple[int, int]] = []
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Redraw the fractional part of each source's share and the per-item randomness for `epoch`."""
        self.epoch = epoch
        index = []
        for s, source in enumerate(self.sources):
            n = len(source.dataset)
            whole, frac = divmod(source.weight, 1.0)
            items = list(range(n)) * int(whole)
            extra = round(frac * n)
            if extra:
                rng = random.Random(_seed(self.seed, epoch, source.name))
                items += rng.sample(range(n), extra)
            index += [(s, i) for i in sorted(items)]
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int):
        s, j = self._index[i]
        source = self.sources[s]
        sample = source.dataset[j]
        captions = sample.get("captions") or ([sample["text"]] if sample.get("text") else [])
        if not captions and any(t in source.tasks for t in ("mlm", "itm", "caption")):
            raise ValueError(f"source {source.name!r} item {j} (image {sample.get('image_id')}) has no caption "
                             f"but the source serves text tasks {source.tasks}")
        rng = random.Random(_seed(self.seed, self.epoch, i))
        caption = captions[rng.randrange(len(captions))] if captions else ""
        target = dict(sample["target"])
        if "detection" not in source.tasks:
            target = {k: v for k, v in target.items() if k not in ("boxes", "labels", "attributes")}
        elif "attributes" not in source.tasks:
            target.pop("attributes", None)
        with torch.random.fork_rng(devices=[]):  # torchvision's v2 transforms draw from the global CPU generator
            torch.default_generator.manual_seed(_seed(self.seed, self.epoch, i, "augment"))
            image, target, caption = self.transforms(sample["image"], target, caption)
        target["has_boxes"] = "detection" in source.tasks
        target["tasks"] = source.tasks
        target["source"] = source.name
        target["image_key"] = (source.name, sample.get("image_id"))
        return image, target, caption


class PretrainingCollator:
    """Samples -> `Batch` with every pretraining field.

    - caption_ids: the true caption `[CLS] caption [SEP] [PAD]...` (targets of image-to-text generation; rows of
      samples whose source does not serve "caption" keep only [CLS], so they add no target);
    - ITM: each sample of a source serving "itm" gets, with probability `p_negative`, the caption of another
      sample of the batch whose image differs and that comes from the same source (itm_labels 0), else its own (1);
      -100 where ITM does not apply or no such other sample is in the batch;
    - MLM: BERT masking of the encoder text (`vlpkit.data.masking.mask_tokens`); labels only on matched pairs of
      sources serving "mlm" (predicting a mismatched caption from the image would teach noise). With
      `visual_ids` (not in the paper), those tokens (colour, shape, size, count words) are selected with
      `visual_probability` instead of `mlm_probability`, so that MLM cannot be solved from the text alone.
    - extra ITM pairs (`itm_extra_negatives` = K > 0; not in the paper): each sample with an ITM row also gets
      `batch.itm_pairs` rows that reuse its image features: its own caption (label 1) and the captions of K other
      ITM samples of the batch (label 0; distinct samples, skipping captions equal to its own under
      `normalise_caption`), all unmasked.
      They multiply the pairs per step by about K + 2 for the cost of encoder rows only.
    - ITM on unmasked text only (`itm_unmasked_only=True`, needs K >= 1; not in the paper, which scores ITM on the
      masked encoder text as BERT-style models do; ALBEF and UNITER score it on unmasked text): the masked rows
      keep their own captions (no negatives there, so MLM has a target in every row) and carry no ITM label; ITM
      is scored on the unmasked `itm_pairs` rows alone. Masking hides the very words that tell a caption from
      another image's (with `visual_ids`, half of the colour and shape words).
    - ITC (a source serving "itc"; not in the paper): `batch.itc_texts`, each such sample's own unmasked text and
      which rows share an image or a text (not each other's negatives).
    Draws are seeded by the batch's (seed, epoch, sample indices) through the samples' targets.
    """

    def __init__(self, tokenizer, max_length: int = 40, mlm_probability: float = 0.15, p_negative: float = 0.5,
                 seed: int = 0, pad_to_multiple_of: int | None = None, itm_extra_negatives: int = 0,
                 visual_ids: torch.Tensor | None = None, visual_probability: float | None = None,
                 itm_unmasked_only: bool = False) -> None:
        if isinstance(itm_extra_negatives, bool) or not isinstance(itm_extra_negatives, int) \
                or itm_extra_negatives < 0:
            raise ValueError(f"itm_extra_negatives={itm_extra_negatives!r}; expected an integer >= 0")
        if itm_unmasked_only and itm_extra_negatives < 1:
            raise ValueError("itm_unmasked_only=True scores ITM on the unmasked extra rows only, which needs "
                             f"itm_extra_negatives >= 1 (got {itm_extra_negatives})")
        self.itm_unmasked_only = itm_unmasked_only
        self.itm_extra_negatives = itm_extra_negatives
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.mlm_probability = mlm_probability
        self.p_negative = p_negative
        self.seed = seed
        self.pad_to_multiple_of = pad_to_multiple_of
        if (visual_ids is None) != (visual_probability is None):
            raise ValueError("visual_ids and visual_probability go together (both set, or both None)")
        self.visual_ids = visual_ids
        self.visual_probability = visual_probability

    def __call__(self, samples) -> Batch:
        if not samples:
            raise ValueError("PretrainingCollator got an empty batch")
        images, targets, captions = zip(*samples)
        keys = [t["image_key"] for t in targets]
        rng = random.Random(_seed(self.seed, keys, captions))
        texts, itm = list(captions), []
        for i, t in enumerate(targets):
            # negatives come from other images of the same source: a text of another kind (a Visual Genome
            # region phrase beside a COCO sentence) would be told apart by its style, not by the image
            others = [j for j, k in enumerate(keys) if k != keys[i] and k[0] == keys[i][0]]
            if "itm" not in t["tasks"] or not others:
                itm.append(IGNORE_INDEX)
            elif not self.itm_unmasked_only and rng.random() < self.p_negative:
                texts[i] = captions[rng.choice(others)]
                itm.append(0)
            else:
                itm.append(1)
        pixel_values, pixel_mask = collate_images(images, self.pad_to_multiple_of)
        input_ids, attention_mask, token_type_ids = collate_texts(texts, self.tokenizer, self.max_length)
        generator = torch.Generator().manual_seed(rng.getrandbits(63))
        masked_ids, mlm_labels = mask_tokens(input_ids, attention_mask, self.tokenizer, generator,
                                             self.mlm_probability, self.visual_ids, self.visual_probability)
        no_mlm = torch.tensor([label == 0 or "mlm" not in t["tasks"] for label, t in zip(itm, targets)])
        mlm_labels[no_mlm] = IGNORE_INDEX
        caption_ids, _, _ = collate_texts(list(captions), self.tokenizer, self.max_length)
        no_caption = torch.tensor(["caption" not in t["tasks"] for t in targets])
        caption_ids[no_caption, 1:] = self.tokenizer.pad_token_id
        # drawn last, so that itm_extra_negatives=0 leaves every other draw as it was
        itm_pairs = self._extra_pairs(rng, keys, captions, itm) if self.itm_extra_negatives else None
        if self.itm_unmasked_only:  # the masked rows serve MLM only
            itm = [IGNORE_INDEX] * len(itm)
        itc_texts = self._itc_texts(keys, captions, targets)
        return Batch(pixel_values=pixel_values, pixel_mask=pixel_mask, input_ids=masked_ids,
                     attention_mask=attention_mask, token_type_ids=token_type_ids, targets=list(targets),
                     mlm_labels=mlm_labels, itm_labels=torch.tensor(itm), itm_pairs=itm_pairs, itc_texts=itc_texts,
                     caption_ids=caption_ids,
                     meta=[{"caption": c, "text": x, "image_key": k} for c, x, k in zip(captions, texts, keys)])

    def _extra_pairs(self, rng: random.Random, keys, captions, itm) -> dict[str, torch.Tensor] | None:
        rows: list[tuple[int, str, int]] = []
        eligible = [i for i, label in enumerate(itm) if label != IGNORE_INDEX]  # ITM samples with a partner
        texts = {i: normalise_caption(captions[i]) for i in eligible}
        for i in eligible:
            others = [j for j in eligible if keys[j] != keys[i] and keys[j][0] == keys[i][0] and texts[j] != texts[i]]
            rows.append((i, captions[i], 1))
            rows += [(i, captions[j], 0) for j in rng.sample(others, min(self.itm_extra_negatives, len(others)))]
        if not rows:
            return None
        ids, mask, types = collate_texts([text for _, text, _ in rows], self.tokenizer, self.max_length)
        return {"image_index": torch.tensor([i for i, _, _ in rows]), "input_ids": ids, "attention_mask": mask,
                "token_type_ids": types, "labels": torch.tensor([label for _, _, label in rows])}

    def _itc_texts(self, keys, captions, targets) -> dict[str, torch.Tensor] | None:
        rows = [i for i, t in enumerate(targets) if "itc" in t["tasks"]]
        if len(rows) < 2:
            return None
        texts = [normalise_caption(captions[i]) for i in rows]
        same = torch.tensor([[keys[i] == keys[j] or texts[a] == texts[b] for b, j in enumerate(rows)]
                             for a, i in enumerate(rows)])
        ids, mask, types = collate_texts([captions[i] for i in rows], self.tokenizer, self.max_length)
        return {"index": torch.tensor(rows), "input_ids": ids, "attention_mask": mask, "token_type_ids": types,
                "same": same}
