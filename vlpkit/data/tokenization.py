"""WordPiece tokenizers for the text side of E2E-VLP.

E2E-VLP encodes text with BERT's WordPiece vocabulary. vlpkit always returns a
``transformers.BertTokenizerFast`` so that every other module can rely on the same attributes
(``cls_token_id``, ``sep_token_id``, ``mask_token_id``, ``pad_token_id``, ``all_special_ids``).

Two ways to get one:

* :func:`load_tokenizer` - a local folder (``tokenizer.json`` or ``vocab.txt``), or a hub name such as
  ``"bert-base-uncased"`` that is already in the Hugging Face cache. Nothing is ever downloaded.
* :func:`train_wordpiece` - train a new vocabulary on a corpus with Hugging Face ``tokenizers``. Its layout
  puts the special tokens first: ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``, then the
  alphabet and word pieces. (A loaded BERT vocabulary keeps BERT's own layout: ``[PAD]=0, [UNK]=100,
  [CLS]=101, [SEP]=102, [MASK]=103``; code must use the ``*_token_id`` attributes, never fixed numbers.)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from transformers import BertTokenizerFast

__all__ = [
    "DEFAULT_MAX_TEXT_LENGTH",
    "SPECIAL_TOKENS",
    "load_tokenizer",
    "save_tokenizer",
    "tokenizer_overrides",
    "train_wordpiece",
]

#: Default maximum text length in tokens, [CLS] and [SEP] included (the paper's setting for captions).
DEFAULT_MAX_TEXT_LENGTH = 40

#: Special tokens of a vocabulary built by :func:`train_wordpiece`, in id order (0..4).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def _check_special_tokens(tokenizer: BertTokenizerFast, source: str) -> BertTokenizerFast:
    """Raise if the vocabulary lacks one of the special tokens vlpkit needs (they would silently map to [UNK])."""
    vocab = tokenizer.get_vocab()
    names = {
        "cls_token": tokenizer.cls_token,
        "sep_token": tokenizer.sep_token,
        "mask_token": tokenizer.mask_token,
        "pad_token": tokenizer.pad_token,
        "unk_token": tokenizer.unk_token,
    }
    missing = [f"{attr}={tok!r}" for attr, tok in names.items() if tok is None or str(tok) not in vocab]
    if missing:
        raise ValueError(
            f"tokenizer from {source} lacks special tokens vlpkit needs: {', '.join(missing)} "
            f"(vocabulary size {len(vocab)}); a BERT-style WordPiece vocabulary with [CLS]/[SEP]/[MASK]/[PAD]/[UNK] "
            "is required"
        )
    if len(vocab) <= len(SPECIAL_TOKENS):
        raise ValueError(f"tokenizer from {source} has only {len(vocab)} tokens (nothing but special tokens)")
    return tokenizer


def _looks_like_path(name: str) -> bool:
    """A hub name is ``name`` or ``org/name``; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def load_tokenizer(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> BertTokenizerFast:
    """Load a BERT-style WordPiece tokenizer without any network access.

    Args:
        name_or_path: a local folder holding ``tokenizer.json`` and/or ``vocab.txt`` (checked first), or a
            Hugging Face hub name (``"bert-base-uncased"``, ``"org/name"``) whose tokenizer files are already
            in the local cache.
        cache_dir: the Hugging Face hub cache to look in (default: the standard one, ``$HF_HUB_CACHE``).

    Returns:
        A ``BertTokenizerFast``.

    Raises:
        FileNotFoundError: the folder does not exist or has no tokenizer files, or the hub name is not cached.
        ValueError: the vocabulary lacks [CLS], [SEP], [MASK], [PAD] or [UNK].
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise FileNotFoundError(
                f"tokenizer folder {path} holds neither of {list(_TOKENIZER_FILES)}; "
                f"found: {sorted(p.name for p in path.iterdir())}"
            )
        tok = BertTokenizerFast.from_pretrained(str(path), local_files_only=True)
        return _check_special_tokens(tok, f"folder {path}")
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; load_tokenizer expects a folder holding {list(_TOKENIZER_FILES)}")

    name = str(name_or_path)
    if _looks_like_path(name):
        raise FileNotFoundError(f"tokenizer folder {path} does not exist")

    # transformers 5 returns an empty 5-token tokenizer for an unknown name under local_files_only instead of
    # raising, so the cache is checked explicitly first.
    from huggingface_hub import try_to_load_from_cache

    cached = [try_to_load_from_cache(name, f, cache_dir=cache_dir) for f in _TOKENIZER_FILES]
    if not any(isinstance(c, str) for c in cached):
        from huggingface_hub import constants

        where = cache_dir if cache_dir is not None else constants.HF_HUB_CACHE
        raise FileNotFoundError(
            f"no tokenizer at {name!r}: it is not a local folder, and the hub name is not in the Hugging Face "
            f"cache {where} (vlpkit never downloads; copy the tokenizer folder locally or pre-populate the cache)"
        )
    tok = BertTokenizerFast.from_pretrained(name, local_files_only=True, cache_dir=cache_dir)
    return _check_special_tokens(tok, f"hub cache entry {name!r}")


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int = 8000,
    lowercase: bool = True,
    min_frequency: int = 2,
) -> BertTokenizerFast:
    """Train a WordPiece vocabulary on ``texts`` with Hugging Face ``tokenizers``.

    The normaliser (BERT's: clean text, split CJK characters, lowercase and strip accents when
    ``lowercase``) and pre-tokeniser (BERT's whitespace + punctuation split) are the ones ``BertTokenizerFast``
    uses, so the trained pieces match how the returned tokenizer splits text. Every character seen in the
    corpus is in the vocabulary, so any text written with the corpus alphabet encodes without [UNK].

    Args:
        texts: the corpus, one string per text (captions, questions...).
        vocab_size: the largest vocabulary to build (the special tokens included); a small corpus gives fewer.
        lowercase: lowercase (and strip accents) before splitting, as BERT-uncased does.
        min_frequency: a pair must occur at least this often to be merged into a piece.

    Returns:
        A ``BertTokenizerFast`` with ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    texts = [t for t in texts]
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"train_wordpiece expects strings; text #{bad[0]} is {type(texts[bad[0]]).__name__}")
    if not any(t.strip() for t in texts):
        raise ValueError("train_wordpiece got an empty corpus (no non-blank text)")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")

    model = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    model.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    model.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS)
    )
    model.train_from_iterator(texts, trainer=trainer)
    vocab = model.get_vocab()

    # Building BertTokenizerFast from a vocab.txt is the one constructor that transformers 4.x and 5.x share;
    # it sets the same normaliser/pre-tokeniser as above plus the [CLS] ... [SEP] post-processor.
    with tempfile.TemporaryDirectory() as tmp:
        _write_vocab_txt(vocab, Path(tmp))
        tok = BertTokenizerFast.from_pretrained(tmp, do_lower_case=lowercase, local_files_only=True)
    tok.name_or_path = "vlpkit.train_wordpiece"
    return _check_special_tokens(tok, "train_wordpiece")


def _write_vocab_txt(vocab: dict[str, int], folder: Path) -> Path | None:
    """Write BERT's ``vocab.txt`` (line number = id); returns None when ids are not 0..N-1 (no such file exists)."""
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        return None
    out = folder / "vocab.txt"
    out.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return out


def save_tokenizer(tokenizer: BertTokenizerFast, directory: str | os.PathLike) -> Path:
    """Save ``tokenizer`` to ``directory`` (created if needed) so that :func:`load_tokenizer` reads it back.

    Writes the Hugging Face files (``tokenizer.json``, ``tokenizer_config.json``) and a plain BERT
    ``vocab.txt`` (one token per line in id order) for tools that only read that, when the ids are contiguous.

    Returns:
        The folder path.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    _write_vocab_txt(tokenizer.get_vocab(), folder)
    return folder


def tokenizer_overrides(tokenizer) -> dict[str, int]:
    """E2EVLPConfig fields a fresh model needs to agree with `tokenizer` ([CLS] starts and [SEP] ends a text)."""
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
                sep_token_id=tokenizer.sep_token_id, mask_token_id=tokenizer.mask_token_id,
                bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
