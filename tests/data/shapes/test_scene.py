"""Scene sampling: determinism, configuration checks, placement and occlusion invariants, relations, flips."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlpkit.data.shapes import Scene, SceneConfig, SceneObject, sample_scene
from vlpkit.data.shapes.render import shape_mask


def _masks(scene: Scene) -> list[np.ndarray]:
    return [shape_mask(o.shape, *o.center, o.radius, scene.width, scene.height) for o in scene.objects]


def test_same_seed_same_scene_and_different_seed_different_scene():
    a = [sample_scene(random.Random(s)) for s in range(20)]
    b = [sample_scene(random.Random(s)) for s in range(20)]
    assert a == b
    assert len({repr(s) for s in a}) == 20


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), occlusion=st.booleans(), lo=st.integers(1, 4), extra=st.integers(0, 3))
def test_sampled_scene_invariants(seed, occlusion, lo, extra):
    cfg = SceneConfig(
        image_size=(96, 160), min_objects=lo, max_objects=lo + extra, occlusion=occlusion, min_visible=0.5
    )
    scene = sample_scene(random.Random(seed), cfg)
    assert 96 <= scene.width <= 160 and 96 <= scene.height <= 160
    assert lo <= len(scene.objects) <= lo + extra
    masks = _masks(scene)
    for k, (o, mask) in enumerate(zip(scene.objects, masks)):
        assert o.shape in cfg.shapes and o.color in cfg.colors and o.size in cfg.sizes
        # bbox is the tight box of the drawn shape, inside the image
        rows, cols = np.nonzero(mask)
        assert o.bbox == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert 0 <= o.bbox[0] < o.bbox[2] <= scene.width and 0 <= o.bbox[1] < o.bbox[3] <= scene.height
        assert o.area == mask.sum()
        # visible = the share of the object's pixels that no later object covers
        later = np.zeros_like(mask)
        for m in masks[k + 1 :]:
            later |= m
        assert o.visible == pytest.approx((mask & ~later).sum() / mask.sum())
        assert o.visible >= (0.5 if occlusion else 1.0) - 1e-9


def test_sizes_differ_clearly():
    rng = random.Random(0)
    radii = {"small": [], "large": []}
    for _ in range(50):
        for o in sample_scene(rng).objects:
            radii[o.size].append(o.radius)
    assert max(radii["small"]) * 1.5 < min(radii["large"])


def _obj(shape, color, size, box):
    x0, y0, x1, y1 = box
    return SceneObject(shape, color, size, ((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0) / 2, box, 100, 1.0)


def test_relations_use_box_centres_and_margin():
    # margin = 0.1 * 100 = 10 px; centres: a (20, 50), b (29, 50), c (40, 20)
    a = _obj("circle", "red", "small", (10, 40, 30, 60))
    b = _obj("square", "blue", "small", (19, 40, 39, 60))
    c = _obj("star", "green", "small", (30, 10, 50, 30))
    scene = Scene(100, 100, "gray", (a, b, c), relation_margin=0.1)
    assert scene.horizontal(a, b) is None and scene.relation(a, b, "left") is None  # 9 px apart: undecided
    assert scene.horizontal(a, c) == "left" and scene.horizontal(c, a) == "right"  # 20 px
    assert scene.vertical(c, a) == "above" and scene.vertical(a, c) == "below"  # 30 px, y grows downwards
    assert scene.relation(a, c, "right") is False and scene.relation(c, b, "above") is True
    assert scene.region(a) == {"left"} and scene.region(c) == {"top"}
    with pytest.raises(ValueError, match="unknown relation"):
        scene.relation(a, c, "behind")


def test_hflip_mirrors_geometry_and_swaps_left_right():
    scene = sample_scene(random.Random(3), SceneConfig(min_objects=4, max_objects=6))
    flipped = scene.hflip()
    twice = flipped.hflip()
    assert [o.bbox for o in twice.objects] == [o.bbox for o in scene.objects]
    assert [o.center for o in twice.objects] == [pytest.approx(o.center) for o in scene.objects]
    for o, f in zip(scene.objects, flipped.objects):
        assert f.bbox == (scene.width - o.bbox[2], o.bbox[1], scene.width - o.bbox[0], o.bbox[3])
        assert f.center[0] == pytest.approx(scene.width - o.center[0])
    swap = {"left": "right", "right": "left", None: None}
    for i, a in enumerate(scene.objects):
        for j, b in enumerate(scene.objects):
            fa, fb = flipped.objects[i], flipped.objects[j]
            assert flipped.horizontal(fa, fb) == swap[scene.horizontal(a, b)]
            assert flipped.vertical(fa, fb) == scene.vertical(a, b)
    # the drawn pixels of the mirrored shapes are exactly the mirrored pixels
    for m, fm in zip(_masks(scene), _masks(flipped)):
        assert np.array_equal(m[:, ::-1], fm)


def test_dict_round_trip():
    scene = sample_scene(random.Random(8), SceneConfig(noise=3.0))
    d = scene.to_dict()
    assert Scene.from_dict(d) == scene
    assert Scene.from_dict({**d, "image_id": 7}).extra == {"image_id": 7}
    with pytest.raises(KeyError, match="objects"):
        Scene.from_dict({k: v for k, v in d.items() if k != "objects"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shapes": ("circle", "blob")}, "shapes"),
        ({"colors": ()}, "colors"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"max_objects": 11}, "max_objects"),
        ({"image_size": 16}, "image_size"),
        ({"image_size": (200, 100)}, "image_size"),
        ({"min_visible": 0.0}, "min_visible"),
        ({"noise": -1.0}, "noise"),
        ({"relation_margin": 0.5}, "relation_margin"),
    ],
)
def test_bad_config_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SceneConfig(**kwargs)


def test_impossible_layout_fails_with_a_clear_error():
    cfg = SceneConfig(
        image_size=32, min_objects=10, max_objects=10, sizes=("large",), occlusion=False, max_tries=5
    )
    with pytest.raises(RuntimeError, match="could not place 10 objects"):
        sample_scene(random.Random(0), cfg)


def test_config_survives_json_lists():
    assert SceneConfig(shapes=["circle", "square"], image_size=[100, 120]) == SceneConfig(
        shapes=("circle", "square"), image_size=(100, 120)
    )


def test_radius_scales_with_image():
    small = [o for o in sample_scene(random.Random(1), SceneConfig(image_size=64, sizes=("small",))).objects]
    big = [o for o in sample_scene(random.Random(1), SceneConfig(image_size=256, sizes=("small",))).objects]
    assert math.isclose(np.mean([o.radius for o in big]) / np.mean([o.radius for o in small]), 4, rel_tol=0.2)
