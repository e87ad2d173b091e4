"""COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) through pycocoevalcap's own scorers.

The pipeline is the one of ``pycocoevalcap.eval.COCOEvalCap``: tokenise references and candidates with the
Stanford PTBTokenizer (lowercase, PTB tokens, punctuation tokens removed), then feed the same token strings to
every scorer. Differences from ``COCOEvalCap``: SPICE is never run (it downloads Stanford CoreNLP at first use),
METEOR (Java, ~10 s start-up) only on request, and a pure-python tokenizer is used when Java is absent.

Dict conventions: ``gts = {image_id: [reference, ...]}`` and ``res = {image_id: candidate}`` (one candidate per
image). Scores are fractions (CIDEr-D is on its usual 0-10 scale, ×10 built in), keyed as COCOEvalCap names them:
``Bleu_1``..``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, PTBTokenizer

METRICS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr")
DEFAULT_METRICS = ("Bleu", "ROUGE_L", "CIDEr")
TOKENIZERS = ("auto", "ptb", "simple", "none")


def java_available() -> bool:
    """True when a ``java`` executable is on PATH (needed by PTBTokenizer and METEOR)."""
    return shutil.which("java") is not None


# ---------------------------------------------------------------------------------------------------------
# Pure-python stand-in for PTBTokenizer. No maintained pip package reproduces Stanford's PTBTokenizer output
# (nltk's TreebankWordTokenizer differs on quotes/brackets and is not a dependency), so the subset of its rules
# that matter for captions is written here. Checked against the real tokenizer in tests/metrics.
# ---------------------------------------------------------------------------------------------------------
# Abbreviations whose final period PTBTokenizer keeps inside the token (a small subset of its list).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof vs etc inc ltd co corp mt ave jan feb mar apr aug sept sep oct nov dec".split()
)
# PTB3 escaping of brackets; after -lowerCase they are no longer in PUNCTUATIONS, so the real pipeline keeps them.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SPLIT_WORDS = {
    "cannot": "can not",
    "gonna": "gon na",
    "gotta": "got ta",
    "wanna": "wan na",
    "gimme": "gim me",
    "lemme": "lem me",
}
_TOKEN = re.compile(
    r"""
    \.\.\.+ | -{2,} | [?!]+                          # ellipsis, dashes, ?!-runs (one token each)
    | [()\[\]{}"`;*+=%$#&\\]                         # always-separate symbols
    | \d+(?:[.,:/]\d+)+                              # numbers: 3.5, 1,000, 10:30, 9/11
    | [^\s()\[\]{}"`;*+=%$#&\\,:?!]+                 # any other run (split further below)
    | [,:]
    """,
    re.VERBOSE,
)
_CLITIC = re.compile(r"^(.+?)(n't|'s|'m|'re|'ve|'ll|'d)$")


def _split_word(word: str) -> list[str]:
    """Split one whitespace/punctuation-free run into PTB tokens (punctuation tokens already dropped)."""
    if word in _SPLIT_WORDS:
        return _SPLIT_WORDS[word].split()
    if word.endswith(".."):  # trailing ellipsis: a separate (removed) token
        return _split_word(word.rstrip("."))
    if word.endswith(".") and len(word) > 1:
        stem = word[:-1]
        if stem in _ABBREVIATIONS or "." in stem:  # "st.", "u.s.", "p.m." keep their period
            return [word]
        return _split_word(stem)
    core = word.strip("'")
    m = _CLITIC.match(core)
    if m:
        return _split_word(m.group(1)) + [m.group(2)]
    if word.startswith("'") and core[:1].isdigit():  # "'90s"
        core = "'" + core
    return [core] if core else []  # quotes and possessive apostrophes ("cats'") are dropped


def simple_ptb_tokenize(text: str) -> str:
    """Pure-python approximation of pycocoevalcap's ``PTBTokenizer`` on one caption.

    Lowercases, splits punctuation, clitics (``man's`` -> ``man 's``, ``isn't`` -> ``is n't``) and a few fused
    words (``cannot``), then drops the tokens pycocoevalcap removes (``PUNCTUATIONS``: ``. , ? ! : ; - -- ...``
    and quotes). Brackets come out as ``-lrb-``/``-rrb-`` like the real pipeline. Matches the real tokenizer on
    ordinary captions; rare constructs (URLs, emoticons, unlisted abbreviations) may differ.
    """
    text = text.replace("\n", " ").lower()
    tokens: list[str] = []
    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        tokens.extend(_split_word(tok) if tok[0].isalnum() or tok[0] in "'._-@/" else [tok])
    tokens = [_BRACKETS.get(t, t) for t in tokens]
    tokens = ["``" if t == '"' else t for t in tokens]  # PTB writes " as `` (a removed token)
    return " ".join(t for t in tokens if t not in PUNCTUATIONS and t.strip("-") != "")


def tokenize_captions(captions: Mapping[Hashable, Sequence[str]], tokenizer: str = "auto") -> dict:
    """Tokenise ``{image_id: [caption, ...]}`` -> ``{image_id: [tokenized, ...]}`` (same order).

    ``tokenizer``: ``"ptb"`` (pycocoevalcap's Java PTBTokenizer), ``"simple"`` (`simple_ptb_tokenize`),
    ``"auto"`` (PTB when Java is on PATH, else simple with a warning) or ``"none"`` (input already tokenized).
    """
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    if tokenizer == "auto":
        tokenizer = "ptb" if java_available() else "simple"
        if tokenizer == "simple":
            warnings.warn("java not found: using the pure-python PTB tokenizer approximation", stacklevel=2)
    if tokenizer == "none":
        return {k: list(v) for k, v in captions.items()}
    if tokenizer == "simple":
        return {k: [simple_ptb_tokenize(c) for c in v] for k, v in captions.items()}
    if not java_available():
        raise RuntimeError("tokenizer='ptb' needs Java (pycocoevalcap runs stanford-corenlp); use 'simple'")
    nonempty = {k: [{"caption": c} for c in v] for k, v in captions.items() if len(v)}
    out = PTBTokenizer().tokenize(nonempty) if nonempty else {}
    for k, v in nonempty.items():  # the Java output is matched to captions by line: catch any shift
        if len(out.get(k, [])) != len(v):
            raise RuntimeError(
                f"PTBTokenizer returned {len(out.get(k, []))} captions for image {k!r}, expected {len(v)}"
            )
    return {k: out.get(k, []) for k in captions}


class CaptionScores(NamedTuple):
    """corpus: ``{metric: score}``; per_image: ``{image_id: {metric: score}}`` (BLEU per image is sentence-level)."""

    corpus: dict[str, float]
    per_image: dict[Hashable, dict[str, float]]


def _check_pairs(gts: Mapping, res: Mapping) -> None:
    if not isinstance(gts, Mapping) or not isinstance(res, Mapping):
        raise TypeError(
            f"gts and res must be dicts keyed by image id, got {type(gts).__name__}, {type(res).__name__}"
        )
    missing, unknown = set(gts) - set(res), set(res) - set(gts)
    if unknown:
        raise ValueError(
            f"res has {len(unknown)} image id(s) without references in gts: {sorted(unknown, key=str)[:5]}"
        )
    if missing:
        raise ValueError(
            f"res has no candidate for {len(missing)} image id(s) of gts: {sorted(missing, key=str)[:5]}"
        )
    if not gts:
        raise ValueError("no images to evaluate (gts and res are empty)")
    for k, refs in gts.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence) or len(refs) == 0:
            raise ValueError(f"gts[{k!r}] must be a non-empty list of reference strings, got {refs!r}")
        if not all(isinstance(r, str) for r in refs):
            raise TypeError(f"gts[{k!r}] must hold strings, got {refs!r}")
    for k, cand in res.items():
        if not isinstance(cand, str):
            raise TypeError(f"res[{k!r}] must be one candidate string, got {cand!r} ({type(cand).__name__})")


def _check_metrics(metrics: Sequence[str]) -> None:
    if isinstance(metrics, str) or not metrics:
        raise ValueError(f"metrics must be a non-empty list of names from {METRICS}, got {metrics!r}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        hint = " (SPICE is not offered: it downloads Stanford CoreNLP)" if "SPICE" in unknown else ""
        raise ValueError(f"unknown caption metric(s) {unknown}; choose from {METRICS}{hint}")
    if "METEOR" in metrics and not java_available():
        raise RuntimeError("METEOR needs Java (pycocoevalcap runs meteor-1.5.jar); drop it from metrics")


def compute_caption_metrics(
    gts_tokenized: Mapping[Hashable, Sequence[str]],
    res_tokenized: Mapping[Hashable, str],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> CaptionScores:
    """Run pycocoevalcap's scorers on already-tokenized captions (space-separated tokens).

    Corpus BLEU uses the closest reference length (COCOEvalCap's choice); CIDEr is CIDEr-D (n=4, sigma=6) with
    IDF computed over the evaluated references, so it depends on the whole evaluated set; ROUGE_L and METEOR are
    means over images.
    """
    _check_pairs(gts_tokenized, res_tokenized)
    _check_metrics(metrics)
    keys = list(gts_tokenized)
    gts = {k: list(gts_tokenized[k]) for k in keys}
    res = {k: [res_tokenized[k]] for k in keys}
    corpus: dict[str, float] = {}
    per_image: dict[Hashable, dict[str, float]] = {k: {} for k in keys}
    for name in metrics:
        if name == "Bleu":
            score, scores = Bleu(4).compute_score(gts, res, verbose=0)
            for n in range(4):
                corpus[f"Bleu_{n + 1}"] = float(score[n])
                for k, s in zip(keys, scores[n]):
                    per_image[k][f"Bleu_{n + 1}"] = float(s)
            continue
        if name == "METEOR":
            # The jar reads one line per segment: a newline inside a caption would desynchronise it (hang).
            bad = [k for k in keys if "\n" in res[k][0] or any("\n" in r for r in gts[k])]
            if bad:
                raise ValueError(
                    f"METEOR: captions of image(s) {bad[:5]} contain a newline; tokenize them first"
                )
            scorer = Meteor()
            score, scores = scorer.compute_score(gts, res)
            del scorer  # stops the Java process
        elif name == "ROUGE_L":
            score, scores = Rouge().compute_score(gts, res)
        else:
            score, scores = Cider().compute_score(gts, res)
        corpus[name] = float(score)
        for k, s in zip(keys, scores):
            per_image[k][name] = float(s)
    return CaptionScores(corpus, per_image)


def evaluate_captions(
    gts: Mapping[Hashable, Sequence[str]],
    res: Mapping[Hashable, str],
    tokenizer: str = "auto",
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[str, float]:
    """Corpus caption scores of ``res = {image_id: caption}`` against ``gts = {image_id: [references]}``.

    Both must cover the same image ids. ``tokenizer`` as in `tokenize_captions` (``"none"`` for input that
    is already PTB-tokenized). ``metrics`` from ``("Bleu", "METEOR", "ROUGE_L", "CIDEr")``; METEOR needs Java.
    Returns ``{"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}`` (those requested).
    """
    _check_pairs(gts, res)
    _check_metrics(metrics)
    gts_tok = tokenize_captions(gts, tokenizer)
    res_tok = {k: v[0] for k, v in tokenize_captions({k: [c] for k, c in res.items()}, tokenizer).items()}
    return compute_caption_metrics(gts_tok, res_tok, metrics).corpus


# ---------------------------------------------------------------------------------------------------------
# COCO files
# ---------------------------------------------------------------------------------------------------------
def best_constant_caption(references: Mapping[Hashable, Sequence[str]], train_captions: Iterable[str],
                          candidates: int = 20, metric: str = "CIDEr",
                          tokenizer: str = "auto") -> tuple[str, dict[str, float]]:
    """Captioning's trivial baseline: of the `candidates` most frequent training captions, the one that, given
    unchanged to every image, scores best by `metric` against `references` ({image id: reference captions}).

    Choose it on one split and score it on another with `evaluate_captions` (docs/tasks/captioning.md does: chosen
    on val, scored on test). Returns (the caption, its corpus scores: "Bleu_1".."Bleu_4", "CIDEr").
    """
    pool = [caption for caption, _ in Counter(train_captions).most_common(candidates)]
    if not pool or not references:
        raise ValueError(f"best_constant_caption needs training captions and references, got {len(pool)} "
                         f"candidate(s) and {len(references)} image(s)")
    gts = tokenize_captions(references, tokenizer)
    tokenized = tokenize_captions({k: [c] for k, c in enumerate(pool)}, tokenizer)
    best: tuple[str, dict[str, float]] | None = None
    for k, caption in enumerate(pool):
        scores = compute_caption_metrics(gts, {i: tokenized[k][0] for i in gts}, ("Bleu", "CIDEr")).corpus
        if best is None or scores[metric] > best[1][metric]:
            best = (caption, scores)
    return best


def _read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    with open(path) as f:
        return json.load(f)


def load_caption_results(path_or_list: str | Path | list) -> dict[Hashable, str]:
    """Read COCO caption results ``[{"image_id", "caption"}]`` into ``{image_id: caption}`` (one per image)."""
    data = (
        _read_json(path_or_list, "caption results") if isinstance(path_or_list, (str, Path)) else path_or_list
    )
    if not isinstance(data, list):
        raise TypeError(
            f"caption results must be a list of {{'image_id', 'caption'}}, got {type(data).__name__}"
        )
    out: dict[Hashable, str] = {}
    for i, r in enumerate(data):
        if not isinstance(r, Mapping) or "image_id" not in r or "caption" not in r:
            raise KeyError(f"caption result {i} must have 'image_id' and 'caption': {r!r}")
        if r["image_id"] in out:
            raise ValueError(
                f"caption results hold image {r['image_id']} more than once (one caption per image)"
            )
        if not isinstance(r["caption"], str):
            raise TypeError(f"caption result for image {r['image_id']} is not a string: {r['caption']!r}")
        out[r["image_id"]] = r["caption"]
    return out


def write_caption_results(
    path: str | Path, res: Mapping[Hashable, str] | Iterable[tuple[Hashable, str]]
) -> None:
    """Write ``{image_id: caption}`` (or ``(image_id, caption)`` pairs) as ``[{"image_id", "caption"}]``."""
    items = list(res.items()) if isinstance(res, Mapping) else list(res)
    ids = [k for k, _ in items]
    if len(set(ids)) != len(ids):
        raise ValueError("caption results hold an image id more than once (one caption per image)")
    for k, c in items:
        if not isinstance(c, str):
            raise TypeError(f"caption for image {k!r} must be a string, got {c!r}")
    with open(path, "w") as f:
        json.dump([{"image_id": k, "caption": c} for k, c in items], f)


def load_coco_captions(path_or_dict: str | Path | Mapping) -> dict[Hashable, list[str]]:
    """Read an official ``captions_*.json`` into ``{image_id: [captions]}`` (annotation order)."""
    data = (
        _read_json(path_or_dict, "COCO captions") if isinstance(path_or_dict, (str, Path)) else path_or_dict
    )
    if not isinstance(data, Mapping) or "annotations" not in data:
        raise KeyError("COCO captions data must be a dict with an 'annotations' list")
    out: dict[Hashable, list[str]] = {}
    for i, a in enumerate(data["annotations"]):
        if "image_id" not in a or "caption" not in a:
            raise KeyError(f"COCO caption annotation {i} must have 'image_id' and 'caption': {a!r}")
        out.setdefault(a["image_id"], []).append(a["caption"])
    return out


def evaluate_caption_files(
    annotation_file: str | Path | Mapping,
    results_file: str | Path | list,
    tokenizer: str = "auto",
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> dict[str, float]:
    """COCOEvalCap on files: scores the images of the results file against their captions in the GT file.

    As in ``COCOEvalCap`` (``params['image_id'] = cocoRes.getImgIds()``), only the images present in the
    results are evaluated; a result for an image without GT captions is an error.
    """
    gts_all = load_coco_captions(annotation_file)
    res = load_caption_results(results_file)
    unknown = [k for k in res if k not in gts_all]
    if unknown:
        raise ValueError(f"results hold {len(unknown)} image id(s) with no GT caption: {unknown[:5]}")
    return evaluate_captions({k: gts_all[k] for k in res}, res, tokenizer=tokenizer, metrics=metrics)
