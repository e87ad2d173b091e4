"""vlpkit.data.batch: image/text padding masks (property tests), truncation warnings, the Batch object."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlpkit.data import batch as batch_module
from vlpkit.data.batch import Batch, TextTruncationWarning, collate_images, collate_samples, collate_texts
from vlpkit.data.tokenization import train_wordpiece
from vlpkit.data.transforms import make_eval_transforms

CORPUS = [
    "a man riding a horse on the left side of the road",
    "two dogs are playing with a red ball in the park",
    "a small cat sits to the right of a wooden table",
    "a woman holds an umbrella while walking in the rain",
] * 3
WORDS = sorted({w for t in CORPUS for w in t.split()})


@functools.cache
def tokenizer():
    return train_wordpiece(CORPUS, vocab_size=200)


@pytest.fixture(autouse=True)
def _reset_warn_once():
    batch_module._warned.clear()
    yield
    batch_module._warned.clear()


# ---------------------------------------------------------------------------------------------------------- images


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 24), st.integers(1, 24)), min_size=1, max_size=5),
    multiple=st.sampled_from([None, 1, 8]),
)
def test_pixel_mask_marks_exactly_the_top_left_image(sizes, multiple):
    images = [torch.randn(3, h, w) for h, w in sizes]
    pixel_values, pixel_mask = collate_images(images, pad_to_multiple_of=multiple)
    height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
    if multiple:
        assert pixel_values.shape[-2] % multiple == 0 and pixel_values.shape[-1] % multiple == 0
        assert height <= pixel_values.shape[-2] < height + multiple
        assert width <= pixel_values.shape[-1] < width + multiple
    else:
        assert pixel_values.shape[-2:] == (height, width)
    assert pixel_values.dtype == torch.float32 and pixel_mask.dtype == torch.bool
    assert pixel_mask.shape == (len(sizes), *pixel_values.shape[-2:])
    for i, (img, (h, w)) in enumerate(zip(images, sizes)):
        expected_mask = torch.zeros(pixel_mask.shape[1:], dtype=torch.bool)
        expected_mask[:h, :w] = True
        assert torch.equal(pixel_mask[i], expected_mask)
        assert torch.equal(pixel_values[i, :, :h, :w], img)
        assert (pixel_values[i][:, ~expected_mask] == 0).all()
        # Independent view: the mask's row and column sums are the image's width and height.
        assert pixel_mask[i].sum(1).tolist() == [w] * h + [0] * (pixel_mask.shape[1] - h)
        assert pixel_mask[i].sum(0).tolist() == [h] * w + [0] * (pixel_mask.shape[2] - w)


@pytest.mark.parametrize(
    "images, error, match",
    [
        ([], ValueError, "empty batch"),
        ([torch.zeros(3, 4, 4), torch.zeros(4, 4)], ValueError, "image 1 .* shape \\(4, 4\\)"),
        ([torch.zeros(3, 4, 4, dtype=torch.uint8)], TypeError, "image 0 .* torch.uint8"),
        ([torch.zeros(1, 4, 4)], ValueError, "image 0"),
        ([[0.0]], TypeError, "image 0 .* list"),
    ],
)
def test_collate_images_errors(images, error, match):
    with pytest.raises(error, match=match):
        collate_images(images)


# ----------------------------------------------------------------------------------------------------------- texts


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=15).map(" ".join), min_size=1, max_size=6),
    max_length=st.integers(2, 20),
)
def test_attention_mask_marks_exactly_the_real_tokens(texts, max_length):
    tok = tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TextTruncationWarning)
        input_ids, attention_mask, token_type_ids = collate_texts(texts, tok, max_length)
    # Independent count: each text encoded alone, without padding, cut to max_length.
    lengths = [min(len(tok(t)["input_ids"]), max_length) for t in texts]
    assert input_ids.shape == attention_mask.shape == token_type_ids.shape == (len(texts), max(lengths))
    assert attention_mask.sum(1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert attention_mask[i, :n].eq(1).all() and attention_mask[i, n:].eq(0).all()
        assert input_ids[i, 0] == tok.cls_token_id and input_ids[i, n - 1] == tok.sep_token_id
        assert input_ids[i, n:].eq(tok.pad_token_id).all()
        full = tok(texts[i])["input_ids"]
        assert input_ids[i, : n - 1].tolist() == full[: n - 1]
    assert token_type_ids.eq(0).all()
    assert input_ids.dtype == attention_mask.dtype == torch.long


def test_word_lists_encode_like_strings():
    tok = tokenizer()
    texts = ["a man riding a horse", "two dogs"]
    a = collate_texts(texts, tok)
    b = collate_texts([t.split() for t in texts], tok)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_overlong_text_is_truncated_with_one_warning():
    tok = tokenizer()
    long_text = " ".join(WORDS * 3)
    with pytest.warns(TextTruncationWarning, match="max_length=40") as record:
        ids, mask, _ = collate_texts([long_text, "a dog"], tok)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second over-long batch must not warn again
        ids2, _, _ = collate_texts([long_text], tok)
    assert len([w for w in record if issubclass(w.category, TextTruncationWarning)]) == 1
    assert ids.shape[1] == 40 and int(mask[0].sum()) == 40
    assert ids[0, -1] == tok.sep_token_id
    assert ids[0, :39].tolist() == tok(long_text)["input_ids"][:39]
    assert torch.equal(ids2[0], ids[0])


def test_empty_text_becomes_cls_sep_with_a_warning():
    tok = tokenizer()
    with pytest.warns(TextTruncationWarning, match="empty text"):
        ids, mask, _ = collate_texts(["a dog", "  "], tok)
    assert ids[1, :2].tolist() == [tok.cls_token_id, tok.sep_token_id]
    assert mask[1].tolist() == [1, 1] + [0] * (ids.shape[1] - 2)


@pytest.mark.parametrize(
    "texts, max_length, error, match",
    [
        ([], 40, ValueError, "empty batch"),
        (["a"], 1, ValueError, "max_length"),
        (["a", 3], 40, TypeError, "text 1"),
        ([["a"], "b"], 40, TypeError, "text 1"),
    ],
)
def test_collate_texts_errors(texts, max_length, error, match):
    with pytest.raises(error, match=match):
        collate_texts(texts, tokenizer(), max_length)


# ----------------------------------------------------------------------------------------------------------- Batch


def test_collate_samples_end_to_end():
    tok = tokenizer()
    t = make_eval_transforms(size=32, max_size=64)
    samples = [
        t(torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8), {"boxes": [[1, 2, 30, 20]], "labels": [4]}, "a dog"),
        t(torch.randint(0, 256, (3, 90, 30), dtype=torch.uint8), None, "two dogs are playing"),
    ]
    batch = collate_samples(samples, tok, pad_to_multiple_of=8)
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.pixel_values.shape == (2, 3, 64, 40)  # (32, 40) and (64, 21) -> (64, 40), multiple of 8
    for i, (_, tgt, _) in enumerate(samples):
        h, w = tgt["size"].tolist()
        assert int(batch.pixel_mask[i].sum()) == h * w and bool(batch.pixel_mask[i, h - 1, w - 1])
        # Padding is exactly 0 after normalisation.
        assert (batch.pixel_values[i][:, ~batch.pixel_mask[i]] == 0).all()
    assert batch.attention_mask.sum(1).tolist() == [len(tok(s[2])["input_ids"]) for s in samples]
    assert batch.targets[0]["labels"].tolist() == [4] and batch.targets[1]["boxes"].shape == (0, 4)
    assert batch.mlm_labels is None and batch.meta is None
    with pytest.raises(ValueError, match="empty batch"):
        collate_samples([], tok)


def test_batch_to_moves_every_tensor_and_keeps_meta():
    batch = Batch(
        pixel_values=torch.zeros(1, 3, 4, 4),
        pixel_mask=torch.ones(1, 4, 4, dtype=torch.bool),
        input_ids=torch.zeros(1, 3, dtype=torch.long),
        attention_mask=torch.ones(1, 3, dtype=torch.long),
        token_type_ids=torch.zeros(1, 3, dtype=torch.long),
        targets=[{"boxes": torch.zeros(2, 4), "labels": torch.zeros(2, dtype=torch.long), "image_id": 7,
                  "attributes": [["red"], []]}],
        itm_labels=torch.ones(1, dtype=torch.long),
        meta=[{"caption": "x", "tensor": torch.zeros(1)}],
    )
    moved = batch.to("meta")
    assert moved.pixel_values.device.type == "meta" and moved.itm_labels.device.type == "meta"
    assert moved.targets[0]["boxes"].device.type == "meta" and moved.targets[0]["image_id"] == 7
    assert moved.targets[0]["attributes"] == [["red"], []]
    assert moved.meta is batch.meta and moved.mlm_labels is None
    assert batch.pixel_values.device.type == "cpu"  # the original is unchanged
    assert moved.pixel_mask.dtype == torch.bool
