"""Label vocabularies: frequency ranking, lookup, aliases, and every file format Vocab.load accepts."""

from __future__ import annotations

import json

import pytest

from vlpkit.data.vocab import Vocab


def test_from_counts_ranks_by_frequency_then_alphabet():
    counts = {"b": 3, "a": 3, "c": 5, "d": 1, "e": 2}
    v = Vocab.from_counts(counts)
    assert v.tokens == ["c", "a", "b", "e", "d"] and v.counts == [5, 3, 3, 2, 1]
    assert Vocab.from_counts(counts, size=2).tokens == ["c", "a"]
    assert Vocab.from_counts(counts, min_count=3).tokens == ["c", "a", "b"]
    assert Vocab.from_counts(counts, size=4, min_count=2).tokens == ["c", "a", "b", "e"]
    assert Vocab.from_counts(dict(reversed(list(counts.items())))) == v  # input order does not matter
    with pytest.raises(ValueError, match="size=0"):
        Vocab.from_counts(counts, size=0)


def test_lookup_and_aliases():
    v = Vocab(["dog", "cat"], aliases={"puppy": "dog"})
    assert len(v) == 2 and list(v) == ["dog", "cat"] and v[1] == "cat"
    assert v.index("cat") == 1 and v.get("puppy") == 0 and "puppy" in v and v.get("cow") is None
    with pytest.raises(KeyError, match="'cow' is not in the vocabulary"):
        v.index("cow")
    with pytest.raises(ValueError, match="duplicate vocabulary entry 'dog' at ids 0 and 2"):
        Vocab(["dog", "cat", "dog"])
    with pytest.raises(ValueError, match="alias 'x' points to 'cow'"):
        Vocab(["dog"], aliases={"x": "cow"})
    with pytest.raises(ValueError, match="clashes"):
        Vocab(["dog", "cat"], aliases={"cat": "dog"})


def test_save_load_round_trip(tmp_path):
    v = Vocab(["yes", "no", "2"], aliases={"two": "2"}, counts=[9, 8, 7], name="answers")
    v.save(tmp_path / "v.json")
    w = Vocab.load(tmp_path / "v.json")
    assert w == v and w.counts == [9, 8, 7] and w.name == "answers" and w.get("two") == 2


def test_load_foreign_formats(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(["a", "b"]))
    assert Vocab.load(tmp_path / "list.json").tokens == ["a", "b"]
    (tmp_path / "ans2label.json").write_text(json.dumps({"net": 1, "yes": 0, "pizza": 2}))
    assert Vocab.load(tmp_path / "ans2label.json").tokens == ["yes", "net", "pizza"]
    # bottom-up-attention style: one class per line, comma-separated synonyms map to the first.
    (tmp_path / "objects_vocab.txt").write_text("yolk\nstop sign,stopsign\n\nkite,kites\nkites\n")
    v = Vocab.load(tmp_path / "objects_vocab.txt")
    assert v.tokens == ["yolk", "stop sign", "kite", "kites"]
    assert v.get("stopsign") == 1 and v.get("kites") == 3  # a class's own name beats another line's synonym


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vocabulary file not found: .*none\.json"):
        Vocab.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        Vocab.load(tmp_path / "bad.json")
    (tmp_path / "ids.json").write_text(json.dumps({"a": 0, "b": 2}))
    with pytest.raises(ValueError, match=r"ids 0\.\.1 exactly once"):
        Vocab.load(tmp_path / "ids.json")
    (tmp_path / "other.json").write_text(json.dumps({"a": "b"}))
    with pytest.raises(ValueError, match="unrecognised vocabulary"):
        Vocab.load(tmp_path / "other.json")
