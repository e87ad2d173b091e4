"""The grammar says what is true: every caption, question and statement is parsed back by an
independent oracle (regular expressions written here, not the grammar code) and checked against the Scene
objects directly.

The oracle also enforces the unambiguity rules: a definite description must match exactly one object, and a
spatial claim must be decided (centres at least the margin apart). A template the oracle cannot parse fails
the test, so new templates need an oracle rule.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlpkit.data.shapes import SceneConfig, ask, describe, generate_shapes_world, sample_scene, state
from vlpkit.data.shapes.language import describe_with_families
from vlpkit.data.shapes.scene import Scene

SHAPE_WORDS = ("circle", "square", "triangle", "diamond", "star", "hexagon")
COLOR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZE_WORDS = ("small", "large")
NUMBERS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
NUMBERS.update({"a": 1, "an": 1, "no": 0})
REL = {
    "to the left of": "left",
    "left of": "left",
    "on the left of": "left",
    "to the right of": "right",
    "right of": "right",
    "on the right of": "right",
    "above": "above",
    "over": "above",
    "below": "below",
    "under": "below",
    "beneath": "below",
}
REL_RE = "(" + "|".join(sorted(REL, key=len, reverse=True)) + ")"
_NP = re.compile(
    r"(?:(small|large) )?(?:(red|green|blue|yellow|purple|orange) )?"
    r"(circle|square|triangle|diamond|star|hexagon|shape|object)(s?)"
)


class Unparsed(AssertionError):
    pass


def np_filter(text: str, plural: bool | None = None) -> dict:
    m = _NP.fullmatch(text)
    if m is None:
        raise Unparsed(f"not a noun phrase: {text!r}")
    size, color, noun, s = m.groups()
    if plural is not None and bool(s) != plural:
        raise Unparsed(f"wrong number in {text!r}")
    return {"size": size, "color": color, "shape": None if noun in ("shape", "object") else noun}


def matching(scene: Scene, f: dict) -> list:
    return [o for o in scene.objects if all(v is None or getattr(o, k) == v for k, v in f.items())]


def the(scene: Scene, text: str):
    objs = matching(scene, np_filter(text, plural=False))
    assert len(objs) == 1, f"definite description {text!r} matches {len(objs)} objects"
    return objs[0]


def centre(o):
    x0, y0, x1, y1 = o.bbox
    return (x0 + x1) / 2, (y0 + y1) / 2


def rel_value(scene: Scene, a, b, rel: str):
    """True/False when decided (centres >= margin apart on the axis), None otherwise."""
    axis = 0 if rel in ("left", "right") else 1
    d = centre(b)[axis] - centre(a)[axis]  # > 0: a is left of / above b
    margin = scene.relation_margin * (scene.width if axis == 0 else scene.height)
    if abs(d) < max(margin, 1e-9):
        return None
    return (d > 0) == (rel in ("left", "above"))


def exists_rel(scene: Scene, fa: dict, fb: dict, rel: str):
    values = [
        rel_value(scene, a, b, rel) for a in matching(scene, fa) for b in matching(scene, fb) if a is not b
    ]
    if True in values:
        return True
    return None if None in values else False


def number(word: str) -> int:
    if word not in NUMBERS:
        raise Unparsed(f"not a number word: {word!r}")
    return NUMBERS[word]


def side_of(scene: Scene, a, b, axis_words):
    for rel in axis_words:
        if rel_value(scene, a, b, rel):
            return rel
    raise AssertionError(f"relation between {a} and {b} is undecided on {axis_words}")


def oracle_answer(scene: Scene, question: str) -> str:
    q = question.lower().rstrip("?")
    rules = [
        (
            rf"(?:what color is the|what is the color of the) (?:shape|object) {REL_RE} the (.+)",
            "query_color",
        ),
        (rf"what shape is {REL_RE} the (.+)", "query_shape"),
        (rf"what is the shape of the (?:shape|object) {REL_RE} the (.+)", "query_shape"),
        (r"(?:what color is the|what is the color of the|which color is the) (.+)", "color"),
        (r"what color does the (.+) have", "color"),
        (
            r"(?:what shape is the|what is the shape of the|what kind of shape is the"
            r"|what type of shape is the"
            r"|which shape is the) (.+)",
            "shape",
        ),
        (r"is the (.+) (?:small or large|large or small)", "size"),
        (r"(?:what size is the|how big is the) (.+)", "size"),
        (r"how many (.+) (?:are there|are in the image|can you see|are shown|are in the picture)", "count"),
        (r"(?:is there|does the image contain|can you see) (a|an) (.+?)(?: in the image)?", "exist"),
        (r"are there any (.+)", "exist_any"),
        (r"is the (.+?) (?:to the )?(left|right) or (?:to the )?(left|right) of the (.+)", "side_h"),
        (r"which side of the (.+) is the (.+) on", "side_which"),
        (r"is the (.+?) (above|below) or (above|below) the (.+)", "side_v"),
        (rf"is the (.+?) (?:located |positioned )?{REL_RE} the (.+)", "yesno"),
    ]
    for pattern, kind in rules:
        m = re.fullmatch(pattern, q)
        if m is None:
            continue
        g = m.groups()
        if kind in ("query_color", "query_shape"):
            anchor = the(scene, g[1])
            rel = REL[g[0]]
            values = [(o, rel_value(scene, o, anchor, rel)) for o in scene.objects if o is not anchor]
            hits = [o for o, v in values if v]
            assert len(hits) == 1 and all(v is not None for _, v in values), f"{question!r} is ambiguous"
            return hits[0].color if kind == "query_color" else hits[0].shape
        if kind == "color":
            assert np_filter(g[0])["color"] is None, f"{question!r} names the colour it asks for"
            return the(scene, g[0]).color
        if kind == "shape":
            assert np_filter(g[0])["shape"] is None, f"{question!r} names the shape it asks for"
            return the(scene, g[0]).shape
        if kind == "size":
            assert np_filter(g[0])["size"] is None, f"{question!r} names the size it asks for"
            return the(scene, g[0]).size
        if kind == "count":
            return str(len(matching(scene, np_filter(g[0], plural=True))))
        if kind == "exist":
            assert g[0] == ("an" if g[1][0] in "aeiou" else "a"), f"wrong article in {question!r}"
            return "yes" if matching(scene, np_filter(g[1], plural=False)) else "no"
        if kind == "exist_any":
            return "yes" if matching(scene, np_filter(g[0], plural=True)) else "no"
        if kind == "side_h":
            assert {g[1], g[2]} == {"left", "right"}
            return side_of(scene, the(scene, g[0]), the(scene, g[3]), ("left", "right"))
        if kind == "side_which":
            return side_of(scene, the(scene, g[1]), the(scene, g[0]), ("left", "right"))
        if kind == "side_v":
            assert {g[1], g[2]} == {"above", "below"}
            return side_of(scene, the(scene, g[0]), the(scene, g[3]), ("above", "below"))
        if kind == "yesno":
            value = rel_value(scene, the(scene, g[0]), the(scene, g[2]), REL[g[1]])
            assert value is not None, f"{question!r} asks an undecided relation"
            return "yes" if value else "no"
    raise Unparsed(f"oracle cannot parse question {question!r}")


def region_words(scene: Scene, o) -> set[str]:
    cx, cy = centre(o)
    out = set()
    out |= {"left"} if cx < scene.width / 3 else {"right"} if cx > 2 * scene.width / 3 else set()
    out |= {"top"} if cy < scene.height / 3 else {"bottom"} if cy > 2 * scene.height / 3 else set()
    return out


POSITIONS = {
    "on the left side of the image": {"left"},
    "on the left": {"left"},
    "on the right side of the image": {"right"},
    "on the right": {"right"},
    "near the top of the image": {"top"},
    "at the top": {"top"},
    "near the bottom of the image": {"bottom"},
    "at the bottom": {"bottom"},
    "in the top left corner": {"top", "left"},
    "in the upper left corner": {"top", "left"},
    "in the top right corner": {"top", "right"},
    "in the upper right corner": {"top", "right"},
    "in the bottom left corner": {"bottom", "left"},
    "in the lower left corner": {"bottom", "left"},
    "in the bottom right corner": {"bottom", "right"},
    "in the lower right corner": {"bottom", "right"},
}
POS_RE = "(" + "|".join(sorted(POSITIONS, key=len, reverse=True)) + ")"


def _check_listing(scene: Scene, listing: str) -> bool:
    """A listing "two red circles, a square and one blue star" is true and complete."""
    items = re.split(r", | and ", listing)
    total, keys = 0, set()
    for item in items:
        word, _, phrase = item.partition(" ")
        n = number(word)
        f = np_filter(phrase, plural=n != 1)
        keys.add(tuple(k for k, v in f.items() if v))
        got = len(matching(scene, f))
        assert got == n, f"listing item {item!r}: scene has {got}"
        total += n
    assert len(keys) == 1, f"listing {listing!r} mixes granularities"
    assert total == len(scene.objects), f"listing {listing!r} counts {total} of {len(scene.objects)} objects"
    return True


def check_caption(scene: Scene, caption: str) -> str:
    """Returns the rule that validated ``caption``; raises when it is false or unparsable."""
    assert caption[0].isupper() and caption.endswith("."), caption
    c = caption[0].lower() + caption[1:-1]
    bg = scene.background
    m = re.fullmatch(rf"(?:there is )?(a|an) (.+?) {POS_RE}", c)
    if m:
        f = np_filter(m.group(2), plural=False)
        assert any(POSITIONS[m.group(3)] <= region_words(scene, o) for o in matching(scene, f)), caption
        return "position"
    m = re.fullmatch(r"the only (\w+) is (\w+)", c)
    if m:
        objs = matching(scene, {"shape": m.group(1)})
        assert len(objs) == 1 and m.group(2) in (objs[0].color, objs[0].size), caption
        return "attribute"
    m = re.fullmatch(rf"the (.+?) is {REL_RE} the (.+)", c)
    if m:
        assert rel_value(scene, the(scene, m.group(1)), the(scene, m.group(3)), REL[m.group(2)]) is True, (
            caption
        )
        return "relation"
    m = re.fullmatch(r"the (.+) is (an?) (\w+)", c)
    if m:
        assert np_filter(m.group(1))["shape"] is None and the(scene, m.group(1)).shape == m.group(3), caption
        return "attribute"
    m = re.fullmatch(r"the (.+) is (\w+)", c)
    if m:
        o = the(scene, m.group(1))
        attr = "color" if m.group(2) in COLOR_WORDS else "size"
        assert np_filter(m.group(1))[attr] is None and getattr(o, attr) == m.group(2), caption
        return "attribute"
    m = re.fullmatch(
        rf"(?:there is )?(a|an) (.+?) (?:is )?{REL_RE} (a|an) (.+?)(?: on a (\w+) background)?", c
    )
    if m:
        assert m.group(6) in (None, bg), caption
        value = exists_rel(scene, np_filter(m.group(2)), np_filter(m.group(5)), REL[m.group(3)])
        assert value is True, caption
        return "relation"
    m = re.fullmatch(
        r"(?:an image of |a picture of |an image showing |a picture with |there (?:is|are) |an image with "
        r"|a picture containing |a (\w+) background with )?(.+?)"
        r"(?: on a (\w+) background| against a (\w+) background"
        r"| in the image)?",
        c,
    )
    if m and _check_listing(scene, m.group(2)):
        assert all(g in (None, bg) for g in (m.group(1), m.group(3), m.group(4))), caption
        return "inventory"
    raise Unparsed(f"oracle cannot parse caption {caption!r}")


def oracle_label(left: Scene, right: Scene, sentence: str) -> bool:
    assert sentence[0].isupper() and sentence.endswith("."), sentence
    s = sentence[0].lower() + sentence[1:-1]
    side = {"left": left, "right": right}

    def count(scene, phrase):
        return len(matching(scene, np_filter(phrase)))

    rules = [
        (r"the (left|right) image has (more|fewer) (.+) than the (left|right) image", (0, 1, 2, 3)),
        (r"the (left|right) image contains (more|fewer) (.+) than the (left|right) one", (0, 1, 2, 3)),
        (
            r"there are (more|fewer) (.+) in the (left|right) image than in the (left|right) image",
            (2, 0, 1, 3),
        ),
    ]
    for pattern, order in rules:
        m = re.fullmatch(pattern, s)
        if m:
            g = [m.group(i + 1) for i in order]
            assert g[0] != g[3]
            mine, theirs = count(side[g[0]], g[2]), count(side[g[3]], g[2])
            np_filter(g[2], plural=True)
            return mine > theirs if g[1] == "more" else mine < theirs
    if m := re.fullmatch(r"(?:both images have|the two images contain) the same number of (.+)", s):
        np_filter(m.group(1), plural=True)
        return count(left, m.group(1)) == count(right, m.group(1))
    quantified = [
        (r"both images contain (?:a|an) (.+)", 2),
        (r"each image has at least one (.+)", 2),
        (r"there is (?:a|an) (.+) in each image", 2),
        (r"neither image (?:contains|has) (?:a|an) (.+)", 0),
        (r"(?:exactly one image contains|only one of the images has) (?:a|an) (.+)", 1),
    ]
    for pattern, wanted in quantified:
        if m := re.fullmatch(pattern, s):
            np_filter(m.group(1), plural=False)
            return (count(left, m.group(1)) > 0) + (count(right, m.group(1)) > 0) == wanted
    if m := re.fullmatch(r"there (?:is|are) exactly (\w+) (.+) in the (left|right) image", s):
        n = number(m.group(1))
        np_filter(m.group(2), plural=n != 1)
        return count(side[m.group(3)], m.group(2)) == n
    m = re.fullmatch(
        r"(?:there (?:is|are) exactly|in total, there (?:is|are) exactly|the two images contain exactly)"
        r" (\w+) (.+?)(?: in total)?",
        s,
    )
    if m:
        n = number(m.group(1))
        np_filter(m.group(2), plural=n != 1)
        return count(left, m.group(2)) + count(right, m.group(2)) == n
    if m := re.fullmatch(
        r"(?:there (?:is|are) at least|the images contain at least) (\w+) (.+?)(?: in total| altogether)", s
    ):
        n = number(m.group(1))
        np_filter(m.group(2), plural=n != 1)
        return count(left, m.group(2)) + count(right, m.group(2)) >= n
    if m := re.fullmatch(r"the (left|right) image contains no (.+)", s):
        np_filter(m.group(2), plural=True)
        return count(side[m.group(1)], m.group(2)) == 0
    if m := re.fullmatch(r"there are no (.+) in the (left|right) image", s):
        np_filter(m.group(1), plural=True)
        return count(side[m.group(2)], m.group(1)) == 0
    if m := re.fullmatch(r"the (left|right) image (?:contains|has) exactly (\w+) (.+)", s):
        n = number(m.group(2))
        np_filter(m.group(3), plural=n != 1)
        return count(side[m.group(1)], m.group(3)) == n
    m = re.fullmatch(
        rf"in (the left image|the right image|both images|at least one image), (?:a|an) (.+?) is {REL_RE}"
        r" (?:a|an) (.+)",
        s,
    )
    if m:
        fa, fb, rel = (
            np_filter(m.group(2), plural=False),
            np_filter(m.group(4), plural=False),
            REL[m.group(3)],
        )
        lo, ro = exists_rel(left, fa, fb, rel), exists_rel(right, fa, fb, rel)
        where = m.group(1)
        values = {"the left image": [lo], "the right image": [ro]}.get(where, [lo, ro])
        if where == "at least one image" and True in values:
            return True
        if where == "both images" and False in values:
            return False
        assert None not in values, f"{sentence!r} is undecided"
        return all(values) if where != "at least one image" else any(values)
    raise Unparsed(f"oracle cannot parse statement {sentence!r}")


# ----------------------------------------------------------------------------------------------------------

CONFIGS = [
    SceneConfig(),
    SceneConfig(image_size=(112, 160), noise=6.0),
    SceneConfig(occlusion=False, max_objects=4),
    SceneConfig(min_objects=1, max_objects=8, relation_margin=0.0),
]


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, len(CONFIGS) - 1))
def test_answers_agree_with_scene(seed, which):
    rng = random.Random(seed)
    scene = sample_scene(rng, CONFIGS[which])
    qas = ask(scene, rng, n=8)
    assert qas, "no question for a scene"
    assert len({qa.question for qa in qas}) == len(qas)
    for qa in qas:
        assert oracle_answer(scene, qa.question) == qa.answer, qa
        if qa.answer_type == "yes/no":
            assert qa.answer in ("yes", "no")
        elif qa.answer_type == "number":
            assert qa.answer.isdigit()


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, len(CONFIGS) - 1))
def test_captions_are_true_and_one_lists_everything(seed, which):
    rng = random.Random(seed)
    scene = sample_scene(rng, CONFIGS[which])
    captions = describe(scene, rng, n=5)
    assert len(captions) == 5 and len(set(captions)) == 5
    rules = [check_caption(scene, c) for c in captions]
    assert "inventory" in rules


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, len(CONFIGS) - 1))
def test_statements_agree_with_pair(seed, which):
    rng = random.Random(seed)
    left, right = sample_scene(rng, CONFIGS[which]), sample_scene(rng, CONFIGS[which])
    statements = state(left, right, rng, n=6)
    assert Counter(s.label for s in statements) == {True: 3, False: 3}
    for s in statements:
        assert oracle_label(left, right, s.sentence) == s.label, s


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_questions_survive_horizontal_flip_with_left_right_swapped(seed):
    """Flipping the image and swapping the words left/right keeps every answer right (flip augmentation)."""
    swap = {"left": "right", "right": "left"}

    def swap_words(text):
        return re.sub(r"\b(left|right)\b", lambda m: swap[m.group(1)], text)

    rng = random.Random(seed)
    scene = sample_scene(rng, SceneConfig(noise=0.0))
    flipped = scene.hflip()
    for qa in ask(scene, rng, n=8):
        assert oracle_answer(flipped, swap_words(qa.question)) == swap.get(qa.answer, qa.answer), qa
    for caption in describe(scene, rng):
        check_caption(flipped, swap_words(caption))


def test_variety_grows_with_data():
    """Templates alone do not determine the text: most sentences over many scenes are distinct."""
    rng = random.Random(0)
    scenes = [sample_scene(rng) for _ in range(300)]
    captions = [c for s in scenes for c in describe(s, rng)]
    questions = [qa.question for s in scenes for qa in ask(s, rng)]
    assert len(set(captions)) > 0.8 * len(captions)
    assert len(set(questions)) > 0.5 * len(questions)
    families = Counter(qa.family for s in scenes for qa in ask(s, rng))
    assert set(families) == {
        "color",
        "shape",
        "size",
        "count",
        "exist",
        "spatial_yesno",
        "spatial_side",
        "spatial_query",
    }
    assert min(families.values()) > 0.03 * sum(families.values()), families


def test_yes_no_answers_are_balanced():
    rng = random.Random(1)
    answers = Counter(
        qa.answer for _ in range(400) for qa in ask(sample_scene(rng), rng) if qa.answer_type == "yes/no"
    )
    frac = answers["yes"] / (answers["yes"] + answers["no"])
    assert 0.4 < frac < 0.6, answers


def test_same_rng_state_gives_same_text():
    scene = sample_scene(random.Random(5))
    a = (describe(scene, random.Random(9)), ask(scene, random.Random(9)))
    b = (describe(scene, random.Random(9)), ask(scene, random.Random(9)))
    c = (describe(scene, random.Random(10)), ask(scene, random.Random(10)))
    assert a == b and a != c


def test_caption_families_reported():
    scene = sample_scene(random.Random(2))
    pairs = describe_with_families(scene, random.Random(3), n=5)
    assert {f for _, f in pairs} <= {"inventory", "total", "relation", "attribute", "position"}
    assert max(Counter(f for _, f in pairs).values()) <= 2


# ----------------------------------------------------------------------------------------------------------
# The files on disk say the same as the scenes they were made from.


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_shapes_world(
        tmp_path_factory.mktemp("lang") / "w", num_images=40, seed=11, nlvr2_sets=6, answer_noise=0.2
    )


def _scenes(world, split):
    return {d["image_id"]: Scene.from_dict(d) for d in json.loads(world.scenes(split).read_text())["images"]}


def test_vqa_files_agree_with_scenes(world):
    checked = 0
    for split in ("train", "val", "test"):
        scenes = _scenes(world, split)
        questions = json.loads(world.vqa_questions(split).read_text())["questions"]
        annotations = {
            a["question_id"]: a for a in json.loads(world.vqa_annotations(split).read_text())["annotations"]
        }
        for q in questions:
            ann = annotations[q["question_id"]]
            truth = oracle_answer(scenes[q["image_id"]], q["question"])
            assert ann["multiple_choice_answer"] == truth, q
            votes = Counter(a["answer"] for a in ann["answers"])
            assert votes[truth] >= 7 and votes.most_common(1)[0][0] == truth  # noise never outvotes the truth
            checked += 1
    assert checked > 200


def test_caption_files_agree_with_scenes(world):
    for split in ("train", "val", "test"):
        scenes = _scenes(world, split)
        captions = json.loads(world.captions(split).read_text())["annotations"]
        per_image = Counter(c["image_id"] for c in captions)
        assert set(per_image.values()) == {5}
        for c in captions:
            check_caption(scenes[c["image_id"]], c["caption"])


def test_nlvr2_files_agree_with_scenes(world):
    for split in ("train", "dev", "test1"):
        data = json.loads(world.scenes(f"nlvr2_{split}").read_text())
        scenes = {d["file_name"]: Scene.from_dict(d) for d in data["images"]}
        lines = [json.loads(line) for line in world.nlvr2(split).read_text().splitlines()]
        assert lines
        for line in lines:
            pair = line["identifier"].rsplit("-", 1)[0]
            left, right = scenes[f"{pair}-img0.png"], scenes[f"{pair}-img1.png"]
            assert oracle_label(left, right, line["sentence"]) == (line["label"] == "True"), line
