"""vlpkit.data.masking: BERT masking rates and invariants, ITM pair sampling."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from vlpkit.data.masking import (
    IGNORE_INDEX,
    ItmSampler,
    SpecialTokenIds,
    make_itm_pairs,
    mask_tokens,
    normalise_caption,
    special_token_ids,
)
from vlpkit.data.tokenization import train_wordpiece

IDS = SpecialTokenIds(mask_id=4, vocab_size=1000, special_ids=(0, 1, 2, 3, 4))
PAD, CLS, SEP, MASK = 0, 2, 3, 4


def make_batch(lengths: list[int], seq_len: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] w_1 .. w_n [SEP] [PAD].. with words drawn from the non-special ids."""
    ids = torch.full((len(lengths), seq_len), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, 0] = CLS
        ids[i, 1 : n + 1] = torch.randint(5, IDS.vocab_size, (n,), generator=gen)
        ids[i, n + 1] = SEP
        mask[i, : n + 2] = 1
    return ids, mask


def within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """|count - n p| within `sigmas` binomial standard deviations."""
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.fixture(scope="module")
def large_batch():
    gen = torch.Generator().manual_seed(123)
    lengths = torch.randint(30, 60, (600,), generator=gen).tolist()
    ids, mask = make_batch(lengths, 64, gen)
    masked, labels = mask_tokens(ids, mask, IDS, torch.Generator().manual_seed(0))
    return ids, mask, masked, labels


def test_selection_rate_is_15_percent(large_batch):
    ids, mask, _, labels = large_batch
    maskable = mask.bool() & (ids > 4)
    selected = labels != IGNORE_INDEX
    n = int(maskable.sum())
    # With >= 30 maskable tokens per text, the at-least-one rule adds at most 0.85**30 ~ 0.8% of a token per text.
    assert within(int(selected.sum()), n, 0.15)


def test_80_10_10_split(large_batch):
    ids, _, masked, labels = large_batch
    selected = labels != IGNORE_INDEX
    n = int(selected.sum())
    became_mask = int((masked[selected] == MASK).sum())
    unchanged = int((masked[selected] == ids[selected]).sum())
    other = n - became_mask - unchanged
    p_same = 0.1 / (IDS.vocab_size - 5)  # a random word equal to the original
    assert within(became_mask, n, 0.8)
    assert within(unchanged, n, 0.1 + p_same)
    assert within(other, n, 0.1 - p_same)


def test_random_replacements_are_never_special(large_batch):
    ids, _, masked, labels = large_batch
    replaced = (labels != IGNORE_INDEX) & (masked != MASK) & (masked != ids)
    assert replaced.any()
    assert (masked[replaced] > 4).all() and (masked[replaced] < IDS.vocab_size).all()


def test_labels_and_untouched_positions(large_batch):
    ids, mask, masked, labels = large_batch
    selected = labels != IGNORE_INDEX
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])
    special_or_pad = (~mask.bool()) | (ids <= 4)
    assert not selected[special_or_pad].any()


def test_at_least_one_masked_per_text_with_maskable_tokens():
    gen = torch.Generator().manual_seed(5)
    lengths = [0, 1, 2, 3] * 200  # 0: "[CLS] [SEP]" only, nothing to mask
    ids, mask = make_batch(lengths, 6, gen)
    masked, labels = mask_tokens(ids, mask, IDS, torch.Generator().manual_seed(1))
    per_row = (labels != IGNORE_INDEX).sum(dim=1)
    lengths_t = torch.tensor(lengths)
    assert (per_row[lengths_t == 0] == 0).all()
    assert torch.equal(masked[lengths_t == 0], ids[lengths_t == 0])
    assert (per_row[lengths_t > 0] >= 1).all()
    # For one maskable token the rule makes selection certain; for three, the expected rate is
    # p + (1 - p)**3 / 3 (the forced pick is uniform among the three).
    rows3 = labels[lengths_t == 3][:, 1:4] != IGNORE_INDEX
    expected = 0.15 + 0.85**3 / 3
    assert within(int(rows3.sum()), rows3.numel(), expected)
    # The forced pick is uniform over positions.
    forced = rows3[rows3.sum(dim=1) == 1].float().sum(dim=0)
    assert chisquare(forced.tolist()).pvalue > 1e-4


def test_probability_one_selects_every_maskable_token():
    gen = torch.Generator().manual_seed(2)
    ids, mask = make_batch([5, 3, 0], 8, gen)
    masked, labels = mask_tokens(ids, mask, IDS, torch.Generator().manual_seed(0), mlm_probability=1.0)
    maskable = mask.bool() & (ids > 4)
    assert torch.equal(labels != IGNORE_INDEX, maskable)


def test_seeded_and_pure():
    gen = torch.Generator().manual_seed(3)
    ids, mask = make_batch([10, 20, 7], 24, gen)
    before = ids.clone()
    a = mask_tokens(ids, mask, IDS, torch.Generator().manual_seed(42))
    b = mask_tokens(ids, mask, IDS, torch.Generator().manual_seed(42))
    c = mask_tokens(ids, mask, IDS, torch.Generator().manual_seed(43))
    assert torch.equal(ids, before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_with_a_real_tokenizer():
    tok = train_wordpiece(["a dog runs on the grass", "two cats sleep on a red sofa"] * 3, vocab_size=100)
    ids_info = special_token_ids(tok)
    assert ids_info.mask_id == tok.mask_token_id
    assert set(ids_info.special_ids) >= {tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id}
    enc = tok(["a dog runs", "two cats sleep on a red sofa"], padding="longest", return_tensors="pt")
    masked, labels = mask_tokens(
        enc["input_ids"], enc["attention_mask"], tok, torch.Generator().manual_seed(0), mlm_probability=1.0
    )
    specials = torch.isin(enc["input_ids"], torch.tensor(ids_info.special_ids))
    assert torch.equal(labels == IGNORE_INDEX, specials | (enc["attention_mask"] == 0))
    assert torch.equal(masked[specials], enc["input_ids"][specials])


@pytest.mark.parametrize(
    "ids, mask, p, match",
    [
        (torch.ones(2, 3), torch.ones(2, 3), 0.15, "long"),
        (torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4), 0.15, "shape"),
        (torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3), 0.0, "mlm_probability"),
    ],
)
def test_mask_tokens_errors(ids, mask, p, match):
    with pytest.raises(ValueError, match=match):
        mask_tokens(ids, mask, IDS, torch.Generator().manual_seed(0), mlm_probability=p)


# ---------------------------------------------------------------------------------------------------------------- ITM

CAPTIONS = [
    ["a dog on grass", "a brown dog"],
    ["a red car", "a car parked", "a red vehicle"],
    ["two cats"],
    [],
    ["a dog on grass"],  # same text as image 0's first caption: a negative is still from another image
]


def test_itm_pairs_positive_and_negative_sources():
    pairs = make_itm_pairs(CAPTIONS, random.Random(0))
    assert len(pairs) == sum(len(c) for c in CAPTIONS)
    expected_order = [(i, c) for i, caps in enumerate(CAPTIONS) for c in caps]
    for pair, (image, caption) in zip(pairs, expected_order):
        assert pair.image_index == image
        if pair.label == 1:
            assert pair.text == caption and pair.text_image_index == image
        else:
            assert pair.label == 0
            assert pair.text_image_index != image
            assert pair.text in CAPTIONS[pair.text_image_index]


def test_itm_negative_never_from_same_image_and_rate_is_half():
    rng = random.Random(7)
    sampler = ItmSampler(CAPTIONS, p_negative=0.5)
    n = 20000
    pairs = [sampler.sample(i % 3, CAPTIONS[i % 3][0], rng) for i in range(n)]
    negatives = [p for p in pairs if p.label == 0]
    assert all(p.text_image_index != p.image_index for p in negatives)
    assert within(len(negatives), n, 0.5)
    assert all(p.text_image_index != 3 for p in pairs)  # image 3 has no caption to lend


def test_itm_negative_image_is_uniform_over_the_others():
    rng = random.Random(11)
    sampler = ItmSampler(CAPTIONS, p_negative=1.0)
    for image in (0, 1, 4):  # first, middle and last of the images with captions
        sources = Counter(sampler.sample(image, "x", rng).text_image_index for _ in range(3000))
        others = [j for j in (0, 1, 2, 4) if j != image]
        assert set(sources) == set(others)
        assert chisquare([sources[j] for j in others]).pvalue > 1e-4


def test_itm_mapping_input_seeded_and_extremes():
    by_id = {10: ["a"], 20: ["b", "c"], 30: ["d"]}
    a = make_itm_pairs(by_id, random.Random(3))
    b = make_itm_pairs(by_id, random.Random(3))
    assert a == b
    assert {p.image_index for p in a} == {10, 20, 30}
    assert all(p.label == 1 for p in make_itm_pairs(by_id, random.Random(0), p_negative=0.0))
    assert all(p.label == 0 for p in make_itm_pairs(by_id, random.Random(0), p_negative=1.0))


@pytest.mark.parametrize(
    "captions, p, error, match",
    [
        ([["only one image"]], 0.5, ValueError, "at least 2"),
        ([["a"], "bare string"], 0.5, TypeError, "single string"),
        ([["a"], ["b", 3]], 0.5, TypeError, "caption 1 of image 1"),
        ([["a"], ["b"]], 1.5, ValueError, "p_negative"),
    ],
)
def test_itm_errors(captions, p, error, match):
    with pytest.raises(error, match=match):
        make_itm_pairs(captions, random.Random(0), p_negative=p)


def test_normalise_caption_ignores_case_punctuation_and_spacing_only():
    assert normalise_caption("There are five shapes in the image.") == "there are five shapes in the image"
    assert normalise_caption("  a RED circle,left of a square ") == normalise_caption("a red circle left of a square")
    assert normalise_caption("a red circle") != normalise_caption("a red circles")


def test_priority_ids_are_selected_at_their_own_rate():
    gen = torch.Generator().manual_seed(5)
    ids, mask = make_batch([30] * 400, 32, gen)
    priority = torch.arange(5, 105)  # about 10% of the word ids
    masked, labels = mask_tokens(ids, mask, IDS, torch.Generator().manual_seed(0), 0.15, priority, 0.6)
    is_priority = torch.isin(ids, priority) & mask.bool() & (ids > 4)
    other = mask.bool() & (ids > 4) & ~is_priority
    chosen = labels != IGNORE_INDEX
    n_p, n_o = int(is_priority.sum()), int(other.sum())
    assert within(int((chosen & is_priority).sum()), n_p, 0.6)
    # the other tokens keep BERT's rate (plus the forced selection, negligible for 30-token texts)
    assert within(int((chosen & other).sum()), n_o, 0.15)


def test_priority_none_draws_exactly_as_before():
    gen = torch.Generator().manual_seed(3)
    ids, mask = make_batch([5, 9, 12], 14, gen)
    a = mask_tokens(ids, mask, IDS, torch.Generator().manual_seed(7))
    b = mask_tokens(ids, mask, IDS, torch.Generator().manual_seed(7), 0.15, None, None)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="priority_probability"):
        mask_tokens(ids, mask, IDS, torch.Generator().manual_seed(7), 0.15, torch.tensor([9]), None)


def test_visual_word_ids_keeps_single_token_words():
    from vlpkit.data.masking import visual_word_ids

    tok = train_wordpiece(["a red circle and two blue squares", "a green star"] * 20, vocab_size=120)
    ids = visual_word_ids(tok, ["red", "blue", "squares", "notaword"])
    expected = {tok.convert_tokens_to_ids(w) for w in ("red", "blue", "squares") if w in tok.get_vocab()}
    assert set(ids.tolist()) == expected and expected
    with pytest.raises(ValueError, match="single token"):
        visual_word_ids(tok, ["zzzzqqq"])
