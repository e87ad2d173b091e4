"""Inputs of the two text-side pre-training tasks: masked language modelling (MLM) and image-text matching (ITM).

MLM follows BERT: each maskable token is selected with probability ``mlm_probability`` (15%); a selected token
is replaced by [MASK] 80% of the time, by a random word 10% of the time, and left unchanged 10% of the time.
The label of a selected token is its original id; every other label is -100 (ignored by the loss).

ITM pairs each caption with its own image (label 1) or, with probability ``p_negative`` (50%), with a caption
of a *different* image (label 0).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

__all__ = [
    "IGNORE_INDEX",
    "ItmPair",
    "ItmSampler",
    "SpecialTokenIds",
    "make_itm_pairs",
    "mask_tokens",
    "normalise_caption",
    "special_token_ids",
    "visual_word_ids",
]

#: Label value ignored by ``torch.nn.functional.cross_entropy`` (its default ``ignore_index``).
IGNORE_INDEX = -100


class SpecialTokenIds(NamedTuple):
    """What :func:`mask_tokens` needs to know about a vocabulary.

    Attributes:
        mask_id: id of [MASK].
        vocab_size: number of ids; random replacements are drawn from ``range(vocab_size)``.
        special_ids: ids never selected for masking and never used as a random replacement
            ([PAD], [UNK], [CLS], [SEP], [MASK], ...).
    """

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]


def special_token_ids(tokenizer) -> SpecialTokenIds:
    """The :class:`SpecialTokenIds` of a Hugging Face tokenizer (``mask_token_id``, ``len``, ``all_special_ids``)."""
    if tokenizer.mask_token_id is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no [MASK] token")
    return SpecialTokenIds(
        mask_id=int(tokenizer.mask_token_id),
        vocab_size=len(tokenizer),
        special_ids=tuple(sorted({int(i) for i in tokenizer.all_special_ids})),
    )


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    tokenizer_or_special_ids,
    generator: torch.Generator,
    mlm_probability: float = 0.15,
    priority_ids: torch.Tensor | None = None,
    priority_probability: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of a padded batch of token ids.

    Choices (the paper follows BERT and says no more):

    * Special tokens (from ``all_special_ids``) and padding (``attention_mask == 0``) are never selected.
    * **At least one token is selected in every text that has a maskable token.** BERT does not do this; with
      short captions (~10 maskable tokens) about 20% of texts would otherwise get no MLM target, and a batch
      where no text gets one makes the mean loss 0/0 = NaN. When the 15% draw selects nothing in a text, one of
      its maskable tokens is selected uniformly at random. This raises the selection rate of a text of ``n``
      maskable tokens from ``p`` to ``p + (1 - p)**n / n``.
    * Random replacements are drawn uniformly from the non-special ids (a random word is never [MASK], [PAD]...).
      A random replacement may equal the original token, with probability 1 / (number of non-special ids).

    Args:
        input_ids: ``[B, L]`` long token ids.
        attention_mask: ``[B, L]`` 1/True = real token, 0/False = padding.
        tokenizer_or_special_ids: a Hugging Face tokenizer or a :class:`SpecialTokenIds`.
        generator: the ``torch.Generator`` all draws come from (seed it for reproducible masks); it must live on
            the same device as ``input_ids``.
        mlm_probability: the selection probability of a maskable token, in (0, 1].
        priority_ids: optional ``[K]`` long ids selected with ``priority_probability`` instead (not in BERT or the
            paper: "visual words", such as colour and shape names, masked more often so that MLM cannot be solved
            from the text alone; :func:`visual_word_ids`). ``None`` draws exactly as without it.
        priority_probability: the selection probability of a priority token, in (0, 1].

    Returns:
        ``(masked_input_ids, mlm_labels)``, both ``[B, L]`` long. ``masked_input_ids`` is a new tensor (the input
        is not modified); ``mlm_labels`` holds the original id at selected positions and -100 elsewhere.
    """
    if input_ids.ndim != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be a [B, L] long tensor, got {tuple(input_ids.shape)} {input_ids.dtype}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    if not 0.0 < mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1], got {mlm_probability}")
    ids = (
        tokenizer_or_special_ids
        if isinstance(tokenizer_or_special_ids, SpecialTokenIds)
        else special_token_ids(tokenizer_or_special_ids)
    )
    device = input_ids.device
    special = torch.tensor(ids.special_ids, dtype=torch.long, device=device)
    maskable = attention_mask.bool() & ~torch.isin(input_ids, special)

    probability: torch.Tensor | float = mlm_probability
    if priority_ids is not None:
        if priority_probability is None or not 0.0 < priority_probability <= 1.0:
            raise ValueError(f"priority_probability must be in (0, 1] with priority_ids, got {priority_probability}")
        priority = torch.isin(input_ids, priority_ids.to(device))
        probability = torch.where(priority, priority_probability, mlm_probability)
    selected = (torch.rand(input_ids.shape, generator=generator, device=device) < probability) & maskable
    # Rows with maskable tokens but no selection: select the maskable token with the largest random score.
    empty = maskable.any(dim=1) & ~selected.any(dim=1)
    if empty.any():
        scores = torch.rand(input_ids.shape, generator=generator, device=device).masked_fill(~maskable, -1.0)
        forced = torch.zeros_like(selected)
        forced.scatter_(1, scores.argmax(dim=1, keepdim=True), True)
        selected |= forced & empty[:, None]

    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

    action = torch.rand(input_ids.shape, generator=generator, device=device)
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    candidates = torch.ones(ids.vocab_size, dtype=torch.bool, device=device)
    candidates[special[special < ids.vocab_size]] = False
    candidates = candidates.nonzero().squeeze(1)
    random_words = candidates[
        torch.randint(len(candidates), input_ids.shape, generator=generator, device=device)
    ]

    masked = input_ids.clone()
    masked[to_mask] = ids.mask_id
    masked[to_random] = random_words[to_random]
    return masked, labels


class ItmPair(NamedTuple):
    """One image-text matching example.

    Attributes:
        image_index: the image the pair is about.
        text: the caption shown with it.
        label: 1 = the caption belongs to the image, 0 = it belongs to another image.
        text_image_index: the image the caption was written for (== image_index iff label == 1).
    """

    image_index: int
    text: str
    label: int
    text_image_index: int


def normalise_caption(text: str) -> str:
    """The form in which two captions count as the same text: lowercased, punctuation dropped, whitespace
    collapsed. Negatives whose caption equals one of the anchor's own would be false negatives (generic captions
    such as "There are five shapes in the image." recur across images)."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


class ItmSampler:
    """Draws ITM pairs: a caption stays with its image, or (probability ``p_negative``) is swapped for a caption of
    a different image, chosen uniformly among the other images that have captions, then uniformly among that
    image's captions.

    Args:
        captions_by_image: captions of each image, as a sequence (index = image index) or a mapping
            ``image_index -> captions``. Images without captions are allowed but never give a negative.
        p_negative: probability that a pair is a negative, in [0, 1].
    """

    def __init__(self, captions_by_image: Sequence[Sequence[str]] | Mapping[int, Sequence[str]], p_negative=0.5):
        if not 0.0 <= p_negative <= 1.0:
            raise ValueError(f"p_negative must be in [0, 1], got {p_negative}")
        items = captions_by_image.items() if isinstance(captions_by_image, Mapping) else enumerate(captions_by_image)
        self.captions: dict[int, list[str]] = {}
        for image_index, caps in items:
            if isinstance(caps, str):
                raise TypeError(f"captions of image {image_index} must be a list of strings, got a single string")
            caps = list(caps)
            for j, c in enumerate(caps):
                if not isinstance(c, str):
                    raise TypeError(f"caption {j} of image {image_index} is {type(c).__name__}, expected str")
            self.captions[int(image_index)] = caps
        self.p_negative = p_negative
        self._with_captions = [i for i, caps in self.captions.items() if caps]
        if p_negative > 0 and len(self._with_captions) < 2:
            raise ValueError(
                f"ITM negatives need captions of at least 2 different images; got {len(self._with_captions)}"
            )

    def negative_text(self, image_index: int, rng: random.Random) -> tuple[str, int]:
        """A caption of an image other than ``image_index``: ``(text, its image index)``."""
        pool = self._with_captions
        own = bool(self.captions.get(image_index))
        if own and len(pool) < 2:
            raise ValueError(f"no other image with captions to draw an ITM negative for image {image_index}")
        # Uniform over the other images: draw from one slot fewer and map the image itself to the last slot.
        other = pool[rng.randrange(len(pool) - own)]
        if other == image_index:
            other = pool[-1]
        return rng.choice(self.captions[other]), other

    def sample(self, image_index: int, text: str, rng: random.Random) -> ItmPair:
        """Keep ``(image_index, text)`` as a positive, or with probability ``p_negative`` replace the text."""
        if rng.random() < self.p_negative:
            neg, source = self.negative_text(image_index, rng)
            return ItmPair(image_index, neg, 0, source)
        return ItmPair(image_index, text, 1, image_index)


def make_itm_pairs(
    captions_by_image: Sequence[Sequence[str]] | Mapping[int, Sequence[str]],
    rng: random.Random,
    p_negative: float = 0.5,
) -> list[ItmPair]:
    """One ITM pair per caption, in order (image by image, caption by caption); see :class:`ItmSampler`.

    Args:
        captions_by_image: captions of each image (sequence indexed by image, or mapping image index -> captions).
        rng: a seeded ``random.Random``; the same seed gives the same pairs.
        p_negative: probability that a pair is a negative.

    Returns:
        A list of :class:`ItmPair`, as many as there are captions.
    """
    sampler = ItmSampler(captions_by_image, p_negative)
    return [
        sampler.sample(image_index, caption, rng)
        for image_index, caps in sampler.captions.items()
        for caption in caps
    ]


def visual_word_ids(tokenizer, words: Sequence[str]) -> torch.Tensor:
    """``[K]`` ids of the ``words`` that the tokenizer keeps as one token (colour, shape, size, count words...).

    A word split into word pieces is left out: masking one of its pieces would leave the rest as a hint. Raises
    when none of the words is a single token, since masking by priority would then silently do nothing.
    """
    ids = []
    for word in words:
        pieces = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(pieces) == 1 and pieces[0] != tokenizer.unk_token_id:
            ids.append(pieces[0])
    if not ids:
        raise ValueError(f"none of the visual words {list(words)[:10]}... is a single token of this tokenizer")
    return torch.tensor(sorted(set(ids)), dtype=torch.long)
