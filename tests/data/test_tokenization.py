"""vlpkit.data.tokenization: training, layout, save/load round trips, offline loading errors."""

from __future__ import annotations

import functools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import BertTokenizerFast

from vlpkit.data.tokenization import (
    DEFAULT_MAX_TEXT_LENGTH,
    SPECIAL_TOKENS,
    load_tokenizer,
    save_tokenizer,
    train_wordpiece,
)

CORPUS = [
    "A man riding a horse on the left side of the road.",
    "Two dogs are playing with a red ball in the park.",
    "A small cat sits to the right of a wooden table.",
    "A woman holds an umbrella while walking in the rain.",
    "Three people stand next to a large white truck.",
    "A plate of food with broccoli, rice and chicken.",
    "The giraffe eats leaves from a tall tree.",
    "A boy throws a frisbee to his dog on the beach.",
    "A yellow bus parked beside the building.",
    "An airplane flying over snowy mountains.",
] * 3

WORDS = sorted({w.strip(".,").lower() for text in CORPUS for w in text.split()})


@functools.cache
def corpus_tokenizer() -> BertTokenizerFast:
    return train_wordpiece(CORPUS, vocab_size=300, min_frequency=2)


def test_special_tokens_first_and_attributes():
    tok = corpus_tokenizer()
    assert isinstance(tok, BertTokenizerFast)
    assert tok.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        0, 1, 2, 3, 4,
    )
    assert DEFAULT_MAX_TEXT_LENGTH == 40


def test_encoding_is_cls_text_sep_and_every_corpus_word_is_known():
    tok = corpus_tokenizer()
    ids = tok("A dog on the LEFT")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    for text in CORPUS:
        assert tok.unk_token_id not in tok(text)["input_ids"], text
    # Words seen >= min_frequency times become a single piece (the corpus repeats each text 3 times).
    assert tok.tokenize("giraffe") == ["giraffe"]


def test_lowercase_false_keeps_case():
    cased = train_wordpiece(CORPUS, vocab_size=300, lowercase=False)
    assert cased.tokenize("A") != cased.tokenize("a")
    assert corpus_tokenizer().tokenize("The Dog") == corpus_tokenizer().tokenize("the dog")


def test_vocab_size_caps_the_vocabulary():
    full = corpus_tokenizer()
    assert len(full) < 300  # the corpus runs out of merges first
    for size in (60, 150):
        small = train_wordpiece(CORPUS, vocab_size=size)
        assert len(small) == size
        assert small.convert_ids_to_tokens(list(range(5))) == list(SPECIAL_TOKENS)
        for text in CORPUS:  # fewer pieces, but the alphabet keeps every corpus text free of [UNK]
            assert small.unk_token_id not in small(text)["input_ids"]


@pytest.mark.parametrize(
    "texts, error",
    [([], ValueError), (["", "   "], ValueError), (["ok", 3], TypeError)],
)
def test_train_rejects_bad_corpus(texts, error):
    with pytest.raises(error):
        train_wordpiece(texts, vocab_size=100)


def test_train_rejects_tiny_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece(CORPUS, vocab_size=5)


def test_save_load_round_trip(tmp_path):
    tok = corpus_tokenizer()
    folder = save_tokenizer(tok, tmp_path / "tok")
    assert (folder / "tokenizer.json").is_file()
    lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert {t: i for i, t in enumerate(lines)} == tok.get_vocab()
    loaded = load_tokenizer(folder)
    assert isinstance(loaded, BertTokenizerFast)
    assert loaded.get_vocab() == tok.get_vocab()
    for text in CORPUS[:10] + ["zebra on the left!"]:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]


def test_load_folder_with_only_vocab_txt(tmp_path):
    """A plain BERT folder (just vocab.txt) loads to the same encoder as the trained tokenizer."""
    tok = corpus_tokenizer()
    save_tokenizer(tok, tmp_path / "full")
    only = tmp_path / "only"
    only.mkdir()
    (only / "vocab.txt").write_bytes((tmp_path / "full" / "vocab.txt").read_bytes())
    loaded = load_tokenizer(only)
    for text in CORPUS[:10]:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]


def test_load_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_tokenizer(missing)


def test_load_folder_without_tokenizer_files(tmp_path):
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(FileNotFoundError, match="readme.md"):
        load_tokenizer(tmp_path)


def test_load_file_instead_of_folder(tmp_path):
    f = tmp_path / "vocab.txt"
    f.write_text("[PAD]\n")
    with pytest.raises(FileNotFoundError, match="is a file"):
        load_tokenizer(f)


def test_load_uncached_hub_name_does_not_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        load_tokenizer("vlpkit-test/definitely-not-cached", cache_dir=tmp_path)


def test_load_cached_hub_name(tmp_path):
    """A hub name is served from a (hand-made, standard-layout) Hugging Face cache, offline."""
    tok = corpus_tokenizer()
    commit = "0" * 40
    repo = tmp_path / "models--vlpkit-test--tiny-bert"
    snapshot = repo / "snapshots" / commit
    save_tokenizer(tok, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    loaded = load_tokenizer("vlpkit-test/tiny-bert", cache_dir=tmp_path)
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded(CORPUS[0])["input_ids"] == tok(CORPUS[0])["input_ids"]


def test_load_adds_missing_special_token_as_new_id(tmp_path):
    """transformers appends a special token absent from vocab.txt; it must not fall back to [UNK]."""
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c"]) + "\n")
    tok = load_tokenizer(tmp_path)
    assert tok.mask_token_id not in (None, tok.unk_token_id)
    assert tok.mask_token_id == len(tok) - 1 == 7


def test_load_rejects_vocabulary_of_only_special_tokens(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS) + "\n")
    with pytest.raises(ValueError, match="only 5 tokens"):
        load_tokenizer(tmp_path)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=12))
def test_round_trip_of_corpus_vocabulary_texts(words):
    tok = corpus_tokenizer()
    text = " ".join(words)
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8))
def test_round_trip_of_unseen_compounds(words):
    """Words glued together (never in the corpus) still split into known pieces and decode back exactly."""
    tok = corpus_tokenizer()
    text = "".join(words)
    pieces = tok.tokenize(text)
    assert "[UNK]" not in pieces
    assert tok.convert_tokens_to_string(pieces) == text


def test_round_trip_on_real_coco_captions(realdata):
    """Train on real COCO references (PTB-tokenised, from the official coco-caption demo) and round-trip them.

    Decoding gives back BERT's basic tokenisation of the text (lowercased, punctuation split off), which the
    backend's own normaliser and pre-tokeniser compute independently of the WordPiece model.
    """
    entries = json.loads((realdata / "coco_caption" / "fakecap_1000_tokenized_refs_and_test.json").read_text())
    refs = [r for e in entries[:300] for r in e["refs"]]
    tok = train_wordpiece(refs, vocab_size=2000)
    backend = tok.backend_tokenizer
    for text in refs[:200]:
        ids = tok(text)["input_ids"]
        assert tok.unk_token_id not in ids
        words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))]
        decoded = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert decoded == " ".join(words)
        assert tok(decoded)["input_ids"] == ids
