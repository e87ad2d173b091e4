"""The shapes-world grammar: captions, VQA questions with answers, and NLVR2 statements over image pairs.

Every sentence is built from facts of a ``Scene`` (counts, attributes of a specific object, spatial relations
between objects), so answers and labels are correct by construction and every task has a ceiling of 100%.
Variety comes from several templates and synonyms per fact, varying referring expressions ("the square",
"the small blue shape", "the blue square") and random choice and order of facts.

Rules that keep the text unambiguous:
- A definite description ("the red circle") is only used when exactly one object matches it.
- A spatial relation is only asked or stated when it is decided (outside ``Scene.relation_margin``); an
  existential claim ("a circle is left of a square") is only made when it is decidedly true or decidedly false
  for every matching pair.
- "left"/"right" always mean image x (mirror-symmetric), so a horizontal flip only swaps those two words.

All randomness comes from the ``random.Random`` passed in; nothing iterates over Python sets, so outputs do
not depend on PYTHONHASHSEED.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from vlpkit.data.shapes.geometry import BACKGROUNDS
from vlpkit.data.shapes.scene import COLORS, SHAPES, SIZES, Scene, SceneObject

NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)

# The 65 official VQA question types (GT-Vision-Lab/VQA QuestionTypes/mscoco_question_types.txt). A question's
# type is its longest matching prefix, "none of the above" otherwise.
VQA_QUESTION_TYPES = (
    "how many",
    "is the",
    "what",
    "what color is the",
    "what is the",
    "is this",
    "is this a",
    "what is",
    "are the",
    "what kind of",
    "is there a",
    "what type of",
    "is it",
    "what are the",
    "where is the",
    "is there",
    "does the",
    "what color are the",
    "are these",
    "are there",
    "which",
    "is",
    "what is the man",
    "is the man",
    "are",
    "how",
    "does this",
    "what is on the",
    "what does the",
    "how many people are",
    "what is in the",
    "what is this",
    "do",
    "what are",
    "are they",
    "what time",
    "what sport is",
    "are there any",
    "is he",
    "what color is",
    "why",
    "where are the",
    "what color",
    "who is",
    "what animal is",
    "is the woman",
    "is this an",
    "do you",
    "how many people are in",
    "what room is",
    "has",
    "is this person",
    "what is the woman",
    "can you",
    "why is the",
    "is the person",
    "what is the color of the",
    "what is the person",
    "could",
    "was",
    "is that a",
    "what number is",
    "what is the name",
    "what brand",
    "none of the above",
)

REL_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
GENERIC_NOUNS = ("shape", "object")

# Words whose meaning only the image gives (colour, shape, size, count): what MLM with visual-word priority
# masks more often (`vlpkit.data.masking.visual_word_ids`) and what the grounding probe scores
# (`vlpkit.pretraining.probe`). Relation and position words are left out: "left of" is only decided by a pair.
VISUAL_WORDS: tuple[str, ...] = (
    *COLORS, *SHAPES, *(s + "s" for s in SHAPES), *SIZES, *NUMBER_WORDS[1:11], *BACKGROUNDS
)

# Attribute subsets a description may use; the noun is the shape name or, without "shape", a generic noun.
_REF_SUBSETS = (
    ("shape",),
    ("color", "shape"),
    ("size", "shape"),
    ("size", "color", "shape"),
    ("color",),
    ("size", "color"),
    ("size",),
)
_COUNT_SUBSETS = (
    (),
    ("shape",),
    ("color",),
    ("color", "shape"),
    ("size",),
    ("size", "shape"),
    ("size", "color", "shape"),
)


class Vocab(NamedTuple):
    """The attribute values a world uses; negative questions and statements draw from it."""

    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = COLORS
    sizes: tuple[str, ...] = SIZES


@dataclass(frozen=True)
class QA:
    """One VQA item. ``family`` is the fact it tests: color, shape, size, count, exist, spatial_yesno,
    spatial_side or spatial_query. ``answer_type`` is VQA's "yes/no", "number" or "other"."""

    question: str
    answer: str
    family: str
    answer_type: str
    question_type: str


@dataclass(frozen=True)
class Statement:
    """One NLVR2 item: a sentence about a (left, right) image pair and whether it is true."""

    sentence: str
    label: bool
    family: str


@dataclass(frozen=True)
class Proposition:
    """A sentence plus its meaning: ``holds(left, right)`` is True/False, or None when undecidable."""

    sentence: str
    family: str
    holds: Callable[[Scene, Scene], bool | None]
    synset: str


@dataclass(frozen=True)
class Desc:
    """An attribute filter with its English noun phrase: Desc(color="red", shape="circle") -> "red circle"."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return obj.matches(self.shape, self.color, self.size)

    def count(self, scene: Scene) -> int:
        return scene.count(self.shape, self.color, self.size)

    def text(self, noun: str = "shape", plural: bool = False) -> str:
        """ "small red circle(s)"; ``noun`` is used when the description names no shape."""
        head = self.shape or noun
        words = [w for w in (self.size, self.color) if w] + [head + "s" if plural else head]
        return " ".join(words)


def _desc_of(obj: SceneObject, subset: Sequence[str]) -> Desc:
    return Desc(**{a: getattr(obj, a) for a in subset})


def article(word: str) -> str:
    """Indefinite article for the word that follows it."""
    return "an" if word[0] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def counted(n: int, desc: Desc, noun: str, rng: random.Random | None = None) -> str:
    """ "two red circles", "a red circle" / "one red circle", "no red circles"."""
    if n == 0:
        return f"no {desc.text(noun, plural=True)}"
    if n == 1:
        single = desc.text(noun)
        return with_article(single) if rng is None or rng.random() < 0.7 else f"one {single}"
    return f"{NUMBER_WORDS[n]} {desc.text(noun, plural=True)}"


def join_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def sentence_case(text: str, end: str = ".") -> str:
    return text[0].upper() + text[1:] + end


_TYPES_LONGEST_FIRST = sorted(
    ((qt.split(), qt) for qt in VQA_QUESTION_TYPES if qt != "none of the above"), key=lambda t: -len(t[0])
)


def question_type(question: str) -> str:
    """Longest official VQA question-type prefix of ``question`` (whole words), else "none of the above"."""
    q = question.lower().rstrip("?").split()
    for words, qt in _TYPES_LONGEST_FIRST:
        if q[: len(words)] == words:
            return qt
    return "none of the above"


def unique_descs(scene: Scene, obj: SceneObject, without: Sequence[str] = ()) -> list[Desc]:
    """Descriptions that pick out ``obj`` and no other object, using no attribute in ``without``."""
    out = []
    for subset in _REF_SUBSETS:
        if any(a in without for a in subset):
            continue
        d = _desc_of(obj, subset)
        if d.count(scene) == 1:
            out.append(d)
    return out


def _ref(scene: Scene, obj: SceneObject, rng: random.Random, without: Sequence[str] = ()) -> str | None:
    descs = unique_descs(scene, obj, without)
    return rng.choice(descs).text(rng.choice(GENERIC_NOUNS)) if descs else None


def _decided_pairs(scene: Scene) -> list[tuple[SceneObject, SceneObject, str]]:
    """Every (a, b, rel) with a decided relation "a is rel of b", in object order."""
    out = []
    for a in scene.objects:
        for b in scene.objects:
            if a is b:
                continue
            for rel in (scene.horizontal(a, b), scene.vertical(a, b)):
                if rel is not None:
                    out.append((a, b, rel))
    return out


# ----------------------------------------------------------------------------------------------------------
# Captions


def _caption_inventory(scene: Scene, rng: random.Random) -> str:
    subset = rng.choice(
        (("shape",), ("color",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"))
    )
    noun = rng.choice(GENERIC_NOUNS)
    groups = list(Counter(_desc_of(o, subset) for o in scene.objects).items())
    rng.shuffle(groups)
    items = [counted(n, d, noun, rng) for d, n in groups]
    listing = join_list(items)
    be = "is" if groups[0][1] == 1 else "are"
    bg = scene.background
    frame = rng.choice(
        (
            "{L}",
            "{L} on a {bg} background",
            "an image of {L}",
            "a picture of {L}",
            "an image showing {L}",
            "a picture with {L}",
            "there {be} {L}",
            "there {be} {L} in the image",
            "{L} against a {bg} background",
        )
    )
    return frame.format(L=listing, bg=bg, be=be)


def _caption_total(scene: Scene, rng: random.Random) -> str:
    n = len(scene.objects)
    noun = rng.choice(GENERIC_NOUNS)
    things = counted(n, Desc(), noun) if n == 1 else f"{NUMBER_WORDS[n]} {noun}s"
    be = "is" if n == 1 else "are"
    frame = rng.choice(
        (
            "there {be} {T} in the image",
            "{T} on a {bg} background",
            "an image with {T}",
            "a {bg} background with {T}",
            "a picture containing {T}",
        )
    )
    return frame.format(T=things, bg=scene.background, be=be)


def _caption_relation(scene: Scene, rng: random.Random) -> str | None:
    pairs = _decided_pairs(scene)
    if not pairs:
        return None
    a, b, rel = rng.choice(pairs)
    words = rng.choice(REL_WORDS[rel])
    if rng.random() < 0.5:  # definite: both objects unique
        ra, rb = _ref(scene, a, rng), _ref(scene, b, rng)
        if ra is None or rb is None:
            return None
        return f"the {ra} is {words} the {rb}"
    noun = rng.choice(GENERIC_NOUNS)
    da = _desc_of(a, rng.choice(_REF_SUBSETS)).text(noun)
    db = _desc_of(b, rng.choice(_REF_SUBSETS)).text(noun)
    frame = rng.choice(
        ("{A} is {R} {B}", "there is {A} {R} {B}", "{A} {R} {B}", "{A} {R} {B} on a {bg} background")
    )
    return frame.format(A=with_article(da), B=with_article(db), R=words, bg=scene.background)


def _caption_attribute(scene: Scene, rng: random.Random) -> str | None:
    obj = rng.choice(scene.objects)
    kind = rng.choice(("color", "size", "shape"))
    if kind == "shape":
        ref = _ref(scene, obj, rng, without=("shape",))
        return None if ref is None else f"the {ref} is {with_article(obj.shape)}"
    if scene.count(shape=obj.shape) == 1 and rng.random() < 0.4:
        return f"the only {obj.shape} is {getattr(obj, kind)}"
    ref = _ref(scene, obj, rng, without=(kind,))
    return None if ref is None else f"the {ref} is {getattr(obj, kind)}"


_POSITION_WORDS = {
    ("left",): ("on the left side of the image", "on the left"),
    ("right",): ("on the right side of the image", "on the right"),
    ("top",): ("near the top of the image", "at the top"),
    ("bottom",): ("near the bottom of the image", "at the bottom"),
    ("left", "top"): ("in the top left corner", "in the upper left corner"),
    ("right", "top"): ("in the top right corner", "in the upper right corner"),
    ("bottom", "left"): ("in the bottom left corner", "in the lower left corner"),
    ("bottom", "right"): ("in the bottom right corner", "in the lower right corner"),
}


def _caption_position(scene: Scene, rng: random.Random) -> str | None:
    placed = [o for o in scene.objects if scene.region(o)]
    if not placed:
        return None
    obj = rng.choice(placed)
    region = sorted(scene.region(obj))
    if len(region) == 2 and rng.random() < 0.4:
        region = [rng.choice(region)]  # a corner object is also on that side
    pos = rng.choice(_POSITION_WORDS[tuple(region)])
    desc = _desc_of(obj, rng.choice(_REF_SUBSETS)).text(rng.choice(GENERIC_NOUNS))
    return rng.choice(("{A} {P}", "there is {A} {P}")).format(A=with_article(desc), P=pos)


CAPTION_FAMILIES: dict[str, Callable[[Scene, random.Random], str | None]] = {
    "inventory": _caption_inventory,
    "total": _caption_total,
    "relation": _caption_relation,
    "attribute": _caption_attribute,
    "position": _caption_position,
}


def describe_with_families(scene: Scene, rng: random.Random, n: int = 5) -> list[tuple[str, str]]:
    """``n`` distinct true captions with the family that produced each, in random order.

    One caption is an "inventory" (a complete listing of the objects); the others come from random families,
    at most ``max(2, ceil(n / number of families))`` from each.
    """
    cap = max(2, -(-n // len(CAPTION_FAMILIES)))  # at most this many captions per family
    used: Counter = Counter()
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for _ in range(50 * n):
        if len(out) == n:
            break
        options = [f for f in CAPTION_FAMILIES if used[f] < cap] or list(CAPTION_FAMILIES)
        family = "inventory" if not out else rng.choice(options)
        text = CAPTION_FAMILIES[family](scene, rng)
        if text is None:
            continue
        text = sentence_case(text)
        if text not in seen:
            seen.add(text)
            used[family] += 1
            out.append((text, family))
    if len(out) < n:
        raise RuntimeError(
            f"could only make {len(out)} distinct captions of {n} for a scene with "
            f"{len(scene.objects)} objects"
        )
    order = list(range(n))
    rng.shuffle(order)
    return [out[i] for i in order]


def describe(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """``n`` distinct true captions of ``scene`` (one of them lists every object)."""
    return [text for text, _ in describe_with_families(scene, rng, n)]


# ----------------------------------------------------------------------------------------------------------
# Questions


def _qa(question: str, answer: str, family: str, answer_type: str) -> QA:
    question = sentence_case(question, "?")
    return QA(question, answer, family, answer_type, question_type(question))


def _q_color(scene: Scene, rng: random.Random, vocab: Vocab) -> QA | None:
    obj = rng.choice(scene.objects)
    ref = _ref(scene, obj, rng, without=("color",))
    if ref is None:
        return None
    frame = rng.choice(
        (
            "what color is the {r}",
            "what is the color of the {r}",
            "which color is the {r}",
            "what color does the {r} have",
        )
    )
    return _qa(frame.format(r=ref), obj.color, "color", "other")


def _q_shape(scene: Scene, rng: random.Random, vocab: Vocab) -> QA | None:
    obj = rng.choice(scene.objects)
    ref = _ref(scene, obj, rng, without=("shape",))
    if ref is None:
        return None
    frame = rng.choice(
        (
            "what shape is the {r}",
            "what is the shape of the {r}",
            "what kind of shape is the {r}",
            "what type of shape is the {r}",
            "which shape is the {r}",
        )
    )
    return _qa(frame.format(r=ref), obj.shape, "shape", "other")


def _q_size(scene: Scene, rng: random.Random, vocab: Vocab) -> QA | None:
    obj = rng.choice(scene.objects)
    ref = _ref(scene, obj, rng, without=("size",))
    if ref is None:
        return None
    frame = rng.choice(
        (
            "is the {r} small or large",
            "is the {r} large or small",
            "what size is the {r}",
            "how big is the {r}",
        )
    )
    return _qa(frame.format(r=ref), obj.size, "size", "other")


def _random_desc(rng: random.Random, subset: Sequence[str], vocab: Vocab) -> Desc:
    pools = {"shape": vocab.shapes, "color": vocab.colors, "size": vocab.sizes}
    return Desc(**{a: rng.choice(pools[a]) for a in subset})


def _q_count(scene: Scene, rng: random.Random, vocab: Vocab) -> QA | None:
    # Choose the answer first, uniformly among the counts this scene offers, then a description with that
    # count; otherwise most descriptions match exactly one object and "1" becomes a strong prior.
    by_count: dict[int, list[Desc]] = {}
    for obj in scene.objects:
        for subset in _COUNT_SUBSETS:
            desc = _desc_of(obj, subset)
            if desc not in by_count.get(desc.count(scene), []):
                by_count.setdefault(desc.count(scene), []).append(desc)
    absent = _random_desc(rng, rng.choice(_COUNT_SUBSETS[1:]), vocab)
    if absent.count(scene) == 0:
        by_count[0] = [absent]
    desc = rng.choice(by_count[rng.choice(sorted(by_count))])
    np_ = desc.text(rng.choice(GENERIC_NOUNS), plural=True)
    frame = rng.choice(
        (
            "how many {p} are there",
            "how many {p} are in the image",
            "how many {p} can you see",
            "how many {p} are shown",
            "how many {p} are in the picture",
        )
    )
    return _qa(frame.format(p=np_), str(desc.count(scene)), "count", "number")


_EXIST_SUBSETS = (
    ("shape",),
    ("color", "shape"),
    ("size", "shape"),
    ("size", "color", "shape"),
    ("color",),
    ("size", "color"),
)


def _q_exist(scene: Scene, rng: random.Random, vocab: Vocab) -> QA | None:
    subset = rng.choice(_EXIST_SUBSETS)
    want = rng.random() < 0.5
    if want:
        desc = _desc_of(rng.choice(scene.objects), subset)
    else:
        absent = [d for d in (_random_desc(rng, subset, vocab) for _ in range(10)) if d.count(scene) == 0]
        if not absent:
            return None
        desc = absent[0]
    noun = rng.choice(GENERIC_NOUNS)
    single, plural = desc.text(noun), desc.text(noun, plural=True)
    frame = rng.choice(
        (
            "is there {a}",
            "are there any {p}",
            "does the image contain {a}",
            "is there {a} in the image",
            "can you see {a}",
        )
    )
    return _qa(frame.format(a=with_article(single), p=plural), "yes" if want else "no", "exist", "yes/no")


def _unique_pair(scene: Scene, rng: random.Random) -> tuple[SceneObject, SceneObject, str, str, str] | None:
    """A random decided (a, b, rel) where both objects have a unique description, with those descriptions."""
    pairs = _decided_pairs(scene)
    rng.shuffle(pairs)
    for a, b, rel in pairs:
        ra = _ref(scene, a, rng)
        rb = _ref(scene, b, rng) if ra is not None else None
        if rb is not None:
            return a, b, rel, ra, rb
    return None


def _q_spatial_yesno(scene: Scene, rng: random.Random, vocab: Vocab) -> QA | None:
    pair = _unique_pair(scene, rng)
    if pair is None:
        return None
    _, _, rel, ra, rb = pair
    want = rng.random() < 0.5
    asked = rel if want else OPPOSITE[rel]
    frame = rng.choice(
        ("is the {a} {r} the {b}", "is the {a} located {r} the {b}", "is the {a} positioned {r} the {b}")
    )
    return _qa(
        frame.format(a=ra, b=rb, r=rng.choice(REL_WORDS[asked])),
        "yes" if want else "no",
        "spatial_yesno",
        "yes/no",
    )


def _q_spatial_side(scene: Scene, rng: random.Random, vocab: Vocab) -> QA | None:
    pair = _unique_pair(scene, rng)
    if pair is None:
        return None
    _, _, rel, ra, rb = pair
    if rel in ("left", "right"):
        first, second = rng.sample(("left", "right"), 2)
        frame = rng.choice(
            (
                f"is the {{a}} to the {first} or to the {second} of the {{b}}",
                f"is the {{a}} {first} or {second} of the {{b}}",
                "which side of the {b} is the {a} on",
            )
        )
    else:
        first, second = rng.sample(("above", "below"), 2)
        frame = f"is the {{a}} {first} or {second} the {{b}}"
    return _qa(frame.format(a=ra, b=rb), rel, "spatial_side", "other")


def _q_spatial_query(scene: Scene, rng: random.Random, vocab: Vocab) -> QA | None:
    options = [(anchor, rel) for anchor in scene.objects for rel in REL_WORDS]
    rng.shuffle(options)
    for anchor, rel in options:  # the first (anchor, direction) that singles out exactly one object
        others = [o for o in scene.objects if o is not anchor]
        decided = [scene.relation(o, anchor, rel) for o in others]
        hits = [o for o, r in zip(others, decided) if r]
        if len(hits) == 1 and all(r is not None for r in decided):
            rb = _ref(scene, anchor, rng)
            if rb is not None:
                break
    else:
        return None
    target, words = hits[0], rng.choice(REL_WORDS[rel])
    noun = rng.choice(GENERIC_NOUNS)
    if rng.random() < 0.5:
        frame = rng.choice(("what color is the {n} {r} the {b}", "what is the color of the {n} {r} the {b}"))
        return _qa(frame.format(n=noun, r=words, b=rb), target.color, "spatial_query", "other")
    frame = rng.choice(("what shape is {r} the {b}", "what is the shape of the {n} {r} the {b}"))
    return _qa(frame.format(n=noun, r=words, b=rb), target.shape, "spatial_query", "other")


QUESTION_FAMILIES: dict[str, Callable[[Scene, random.Random, Vocab], QA | None]] = {
    "color": _q_color,
    "shape": _q_shape,
    "size": _q_size,
    "count": _q_count,
    "exist": _q_exist,
    "spatial_yesno": _q_spatial_yesno,
    "spatial_side": _q_spatial_side,
    "spatial_query": _q_spatial_query,
}


def ask(scene: Scene, rng: random.Random, n: int = 6, vocab: Vocab | None = None) -> list[QA]:
    """Up to ``n`` distinct questions about ``scene`` with their correct answers.

    Families are visited in a random order, cycling, so an image gets a mix; a family that has nothing
    unambiguous to ask about this scene is skipped. Fewer than ``n`` come back only when the scene is too
    symmetric to ask more (for example two identical objects side by side).
    """
    vocab = vocab or Vocab()
    names = list(QUESTION_FAMILIES)
    rng.shuffle(names)
    out: list[QA] = []
    seen: set[str] = set()
    for attempt in range(8 * n):
        if len(out) == n:
            break
        qa = QUESTION_FAMILIES[names[attempt % len(names)]](scene, rng, vocab)
        if qa is not None and qa.question not in seen:
            seen.add(qa.question)
            out.append(qa)
    return out


# ----------------------------------------------------------------------------------------------------------
# Statements over image pairs (NLVR2)


def _exists_relation(scene: Scene, da: Desc, db: Desc, rel: str) -> bool | None:
    """Is some object matching ``da`` decidedly ``rel`` of another matching ``db``? None if undecided."""
    outcomes = [
        scene.relation(a, b, rel)
        for a in scene.objects
        if da.matches(a)
        for b in scene.objects
        if b is not a and db.matches(b)
    ]
    if any(o is True for o in outcomes):
        return True
    return None if any(o is None for o in outcomes) else False


def _pick_desc(
    rng: random.Random, scenes: Sequence[Scene], subsets: Sequence[Sequence[str]], vocab: Vocab
) -> Desc:
    subset = rng.choice(subsets)
    scene = rng.choice([s for s in scenes if s.objects])
    return (
        _desc_of(rng.choice(scene.objects), subset)
        if rng.random() < 0.8
        else _random_desc(rng, subset, vocab)
    )


def _count_text(n: int, desc: Desc, noun: str) -> str:
    return f"{NUMBER_WORDS[n]} {desc.text(noun, plural=n != 1)}"


def _s_compare(rng: random.Random, scenes: Sequence[Scene], vocab: Vocab) -> Proposition:
    desc = _pick_desc(rng, scenes, _COUNT_SUBSETS, vocab)
    p = desc.text(rng.choice(GENERIC_NOUNS), plural=True)
    kind = rng.choice(("more", "fewer", "same"))
    if kind == "same":
        text = rng.choice(
            ("both images have the same number of {p}", "the two images contain the same number of {p}")
        )

        def holds(left: Scene, right: Scene) -> bool:
            return desc.count(left) == desc.count(right)

        return Proposition(text.format(p=p), "compare", holds, desc.shape or "shape")
    side, other = rng.sample(("left", "right"), 2)
    text = rng.choice(
        (
            "the {s} image has {k} {p} than the {o} image",
            "the {s} image contains {k} {p} than the {o} one",
            "there are {k} {p} in the {s} image than in the {o} image",
        )
    ).format(s=side, o=other, k=kind, p=p)

    def holds(left: Scene, right: Scene) -> bool:
        mine, theirs = (
            (desc.count(left), desc.count(right)) if side == "left" else (desc.count(right), desc.count(left))
        )
        return mine > theirs if kind == "more" else mine < theirs

    return Proposition(text, "compare", holds, desc.shape or "shape")


def _s_quantifier(rng: random.Random, scenes: Sequence[Scene], vocab: Vocab) -> Proposition:
    desc = _pick_desc(rng, scenes, _EXIST_SUBSETS, vocab)
    a = with_article(desc.text(rng.choice(GENERIC_NOUNS)))
    kind = rng.choice(("both", "neither", "one"))
    frames = {
        "both": ("both images contain {a}", "each image has at least one {s}", "there is {a} in each image"),
        "neither": ("neither image contains {a}", "neither image has {a}"),
        "one": ("exactly one image contains {a}", "only one of the images has {a}"),
    }
    text = rng.choice(frames[kind]).format(a=a, s=a.split(" ", 1)[1])
    wanted = {"both": 2, "neither": 0, "one": 1}[kind]

    def holds(left: Scene, right: Scene) -> bool:
        return (desc.count(left) > 0) + (desc.count(right) > 0) == wanted

    return Proposition(text, "quantifier", holds, desc.shape or "shape")


def _s_total(rng: random.Random, scenes: Sequence[Scene], vocab: Vocab) -> Proposition:
    desc = _pick_desc(rng, scenes, _COUNT_SUBSETS, vocab)
    noun = rng.choice(GENERIC_NOUNS)
    pair = rng.randrange(max(1, len(scenes) // 2)) * 2
    actual = sum(desc.count(s) for s in scenes[pair : pair + 2])
    n = min(max(1, actual + rng.choice((-1, 0, 0, 1))), len(NUMBER_WORDS) - 1)
    exact = rng.random() < 0.6
    things = _count_text(n, desc, noun)
    be = "is" if n == 1 else "are"
    if exact:
        text = rng.choice(
            (
                "there {be} exactly {t} in total",
                "in total, there {be} exactly {t}",
                "the two images contain exactly {t} in total",
            )
        )
    else:
        text = rng.choice(("there {be} at least {t} in total", "the images contain at least {t} altogether"))

    def holds(left: Scene, right: Scene) -> bool:
        total = desc.count(left) + desc.count(right)
        return total == n if exact else total >= n

    return Proposition(text.format(be=be, t=things), "total", holds, desc.shape or "shape")


def _s_single_count(rng: random.Random, scenes: Sequence[Scene], vocab: Vocab) -> Proposition:
    desc = _pick_desc(rng, scenes, _COUNT_SUBSETS, vocab)
    noun = rng.choice(GENERIC_NOUNS)
    side = rng.choice(("left", "right"))
    n = max(0, desc.count(rng.choice(scenes)) + rng.choice((-1, 0, 1)))
    if n == 0:
        text = rng.choice(("the {s} image contains no {p}", "there are no {p} in the {s} image"))
    else:
        be = "is" if n == 1 else "are"
        text = rng.choice(
            (
                "the {s} image contains exactly {t}",
                f"there {be} exactly {{t}} in the {{s}} image",
                "the {s} image has exactly {t}",
            )
        )
    text = text.format(s=side, p=desc.text(noun, plural=True), t=_count_text(n, desc, noun))

    def holds(left: Scene, right: Scene) -> bool:
        return desc.count(left if side == "left" else right) == n

    return Proposition(text, "single_count", holds, desc.shape or "shape")


def _s_relation(rng: random.Random, scenes: Sequence[Scene], vocab: Vocab) -> Proposition:
    da = _pick_desc(rng, scenes, _REF_SUBSETS, vocab)
    db = _pick_desc(rng, scenes, _REF_SUBSETS, vocab)
    rel = rng.choice(tuple(REL_WORDS))
    noun = rng.choice(GENERIC_NOUNS)
    clause = f"{with_article(da.text(noun))} is {rng.choice(REL_WORDS[rel])} {with_article(db.text(noun))}"
    where = rng.choice(("left", "right", "both", "any"))
    text = {
        "left": "in the left image, {c}",
        "right": "in the right image, {c}",
        "both": "in both images, {c}",
        "any": "in at least one image, {c}",
    }[where].format(c=clause)

    def holds(left: Scene, right: Scene) -> bool | None:
        lo, ro = _exists_relation(left, da, db, rel), _exists_relation(right, da, db, rel)
        if where in ("left", "right"):
            return lo if where == "left" else ro
        if where == "both":
            return False if False in (lo, ro) else (None if None in (lo, ro) else True)
        return True if True in (lo, ro) else (None if None in (lo, ro) else False)

    return Proposition(text, "relation", holds, da.shape or db.shape or "shape")


STATEMENT_FAMILIES: dict[str, Callable[[random.Random, Sequence[Scene], Vocab], Proposition]] = {
    "compare": _s_compare,
    "quantifier": _s_quantifier,
    "total": _s_total,
    "single_count": _s_single_count,
    "relation": _s_relation,
}

# Relation statements are often undecidable on some pair of a set and then skipped; drawing them twice as
# often keeps spatial reasoning well represented in NLVR2.
STATEMENT_WEIGHTS = {"compare": 1.0, "quantifier": 1.0, "total": 1.0, "single_count": 1.0, "relation": 2.0}


def propose(rng: random.Random, scenes: Sequence[Scene], vocab: Vocab | None = None) -> Proposition:
    """A random statement whose nouns and numbers are drawn from ``scenes`` (flattened left/right pairs).

    The sentence is not guaranteed true or false; evaluate it with ``Proposition.holds(left, right)``.
    """
    family = rng.choices(
        tuple(STATEMENT_FAMILIES), weights=[STATEMENT_WEIGHTS[f] for f in STATEMENT_FAMILIES]
    )[0]
    prop = STATEMENT_FAMILIES[family](rng, scenes, vocab or Vocab())
    return Proposition(sentence_case(prop.sentence), prop.family, prop.holds, prop.synset)


def state(
    left: Scene, right: Scene, rng: random.Random, n: int = 4, vocab: Vocab | None = None
) -> list[Statement]:
    """``n`` distinct statements about the pair (left, right); half are true, half false (one more true if n
    is odd)."""
    wanted = [i % 2 == 0 for i in range(n)]
    rng.shuffle(wanted)
    out: list[Statement] = []
    seen: set[str] = set()
    for label in wanted:
        for _ in range(500):
            prop = propose(rng, (left, right), vocab)
            if prop.sentence not in seen and prop.holds(left, right) is label:
                seen.add(prop.sentence)
                out.append(Statement(prop.sentence, label, prop.family))
                break
        else:
            raise RuntimeError(f"found no {label} statement for this pair in 500 tries")
    return out


# ----------------------------------------------------------------------------------------------------------
# Region descriptions (Visual Genome)


def region_phrases(
    scene: Scene, rng: random.Random, max_relations: int = 3
) -> list[tuple[str, tuple[int, ...]]]:
    """Phrases for VG regions: one per object plus up to ``max_relations`` relation phrases.

    Returns (phrase, indices of the objects the region covers). Phrases are indefinite and true.
    """
    out: list[tuple[str, tuple[int, ...]]] = []
    for i, obj in enumerate(scene.objects):
        desc = _desc_of(obj, rng.choice((("color", "shape"), ("size", "color", "shape"), ("size", "shape"))))
        phrase = desc.text()
        out.append((with_article(phrase) if rng.random() < 0.5 else phrase, (i,)))
    index = {id(o): i for i, o in enumerate(scene.objects)}
    pairs = _decided_pairs(scene)
    for a, b, rel in rng.sample(pairs, min(max_relations, len(pairs))):
        da, db = _desc_of(a, ("color", "shape")), _desc_of(b, ("color", "shape"))
        phrase = f"{da.text()} {rng.choice(REL_WORDS[rel])} {db.text()}"
        out.append((phrase, (index[id(a)], index[id(b)])))
    return out
