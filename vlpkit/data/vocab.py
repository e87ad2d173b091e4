"""`Vocab`: an ordered label vocabulary (object classes, attributes, VQA answers) <-> contiguous ids.

Built from data by frequency (`Vocab.from_counts`), saved and loaded as JSON. `Vocab.load` also reads the
vocabularies other code bases publish, so a model can be trained on exactly their label set:

* a JSON list of labels (`["yes", "no", ...]`),
* a JSON dict label -> id (the `ans2label` files of bottom-up-attention-vqa / LXMERT / UNITER),
* vlpkit's own JSON (`{"format": "vlpkit.vocab", "tokens": [...], "aliases": {...}, "counts": [...]}`),
* a text file with one class per line, where a line may list comma-separated synonyms that all map to the
  class of the first one (bottom-up-attention's `objects_vocab.txt` / `attributes_vocab.txt`).

The vocabulary does not normalise strings: callers normalise before lookup (VG names: lowercase and strip;
VQA answers: the official evaluation's normalisation).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

FORMAT = "vlpkit.vocab"


class Vocab:
    """Labels `tokens[0..N-1]` with ids `0..N-1`; `aliases` map extra strings to a token's id.

    Args:
        tokens: the labels, in id order; no duplicates.
        aliases: optional extra spellings, alias -> one of `tokens`.
        counts: optional frequency of each token in the data it was built from (saved with it).
        name: free-form description (e.g. "vqa answers, mc answer >= 9 in train+val").
    """

    def __init__(self, tokens: Sequence[str], aliases: Mapping[str, str] | None = None,
                 counts: Sequence[int] | None = None, name: str = ""):
        self.tokens = [str(t) for t in tokens]
        self._index = {}
        for i, token in enumerate(self.tokens):
            if token in self._index:
                raise ValueError(f"duplicate vocabulary entry {token!r} at ids {self._index[token]} and {i}")
            self._index[token] = i
        self.aliases = dict(aliases or {})
        for alias, token in self.aliases.items():
            if token not in self._index:
                raise ValueError(f"alias {alias!r} points to {token!r}, which is not in the vocabulary")
            if alias in self.tokens and alias != token:
                raise ValueError(f"alias {alias!r} -> {token!r} clashes with the vocabulary entry {alias!r}")
        self._lookup = {**{a: self._index[t] for a, t in self.aliases.items()}, **self._index}
        if counts is not None and len(counts) != len(self.tokens):
            raise ValueError(f"{len(counts)} counts for {len(self.tokens)} tokens")
        self.counts = None if counts is None else [int(c) for c in counts]
        self.name = name

    # ---- lookup ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokens)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._lookup

    def __getitem__(self, index: int) -> str:
        return self.tokens[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens and self.aliases == other.aliases

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self.tokens[:5])
        return f"Vocab({len(self)} tokens: [{head}{', ...' if len(self) > 5 else ''}], name={self.name!r})"

    def get(self, token: str, default: int | None = None) -> int | None:
        """The id of `token` (or of the token it is an alias of), else `default`."""
        return self._lookup.get(token, default)

    def index(self, token: str) -> int:
        """The id of `token`; `KeyError` naming the token when absent."""
        try:
            return self._lookup[token]
        except KeyError:
            raise KeyError(f"{token!r} is not in the vocabulary ({len(self)} entries, {self.name!r})") from None

    # ---- building ----------------------------------------------------------------------------------------
    @classmethod
    def from_counts(cls, counts: Mapping[str, int], size: int | None = None, min_count: int = 1,
                    name: str = "") -> Vocab:
        """The labels counted at least `min_count` times, most frequent first, cut to the first `size`.

        Ties are broken alphabetically so the result does not depend on the order the data was read in.
        """
        if size is not None and size < 1:
            raise ValueError(f"size={size}; expected >= 1 or None")
        ranked = sorted(((t, c) for t, c in counts.items() if c >= min_count), key=lambda tc: (-tc[1], tc[0]))
        ranked = ranked[:size]
        return cls([t for t, _ in ranked], counts=[c for _, c in ranked], name=name)

    # ---- files -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {"format": FORMAT, "version": 1, "name": self.name, "tokens": self.tokens}
        if self.aliases:
            out["aliases"] = self.aliases
        if self.counts is not None:
            out["counts"] = self.counts
        return out

    def save(self, path: str | Path) -> None:
        """Write vlpkit's JSON format (readable back by `Vocab.load`)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a vocabulary file in any of the formats listed in the module docstring."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file not found: {path}")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".txt":
            return cls._from_lines(text.splitlines(), str(path))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); expected a vocabulary (list of labels, "
                             "dict label -> id, or a file written by Vocab.save)") from err
        if isinstance(data, list) and all(isinstance(t, str) for t in data):
            return cls(data, name=path.name)
        if isinstance(data, dict) and data.get("format") == FORMAT:
            return cls(data["tokens"], aliases=data.get("aliases"), counts=data.get("counts"), name=data.get("name", ""))
        if isinstance(data, dict) and data and all(isinstance(v, int) for v in data.values()):
            ids = sorted(data.values())
            if ids != list(range(len(data))):
                raise ValueError(f"{path}: a label -> id dict must use the ids 0..{len(data) - 1} exactly once")
            return cls(sorted(data, key=data.__getitem__), name=path.name)
        raise ValueError(f"{path}: unrecognised vocabulary; expected a JSON list of strings, a JSON dict "
                         f"label -> id, or {{'format': '{FORMAT}', 'tokens': [...]}}")

    @classmethod
    def _from_lines(cls, lines: Sequence[str], name: str) -> Vocab:
        tokens, aliases = [], {}
        for line in lines:
            names = [n.strip() for n in line.split(",") if n.strip()]
            if not names:
                continue
            tokens.append(names[0])
            for alias in names[1:]:
                if alias != names[0]:
                    aliases.setdefault(alias, names[0])  # the first class listing a synonym keeps it
        listed = set(tokens)
        aliases = {a: t for a, t in aliases.items() if a not in listed}  # a class's own name beats a synonym
        return cls(tokens, aliases=aliases, name=name)


def as_vocab(vocab: Vocab | str | Path, what: str) -> Vocab:
    """Accept a `Vocab` or a path to a vocabulary file."""
    if isinstance(vocab, Vocab):
        return vocab
    if isinstance(vocab, (str, Path)):
        return Vocab.load(vocab)
    raise TypeError(f"{what} should be a Vocab or a path to a vocabulary file, got {type(vocab).__name__}")
