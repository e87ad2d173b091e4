"""Rendering: the pixels show the scene (colours at object centres, occlusion, background, noise, flips)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ImageOps

from vlpkit.data.shapes import SceneConfig, render_scene, sample_scene
from vlpkit.data.shapes.render import BACKGROUNDS, PALETTE, shape_mask

# Reference colours written out here (not imported) so that a palette change is noticed.
RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}


def test_palette_matches_reference_and_is_well_separated():
    assert PALETTE == RGB
    colours = np.array(list(RGB.values()) + list(BACKGROUNDS.values()), dtype=float)
    dist = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    assert dist[~np.eye(len(colours), dtype=bool)].min() > 60


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), noise=st.sampled_from([0.0, 10.0]))
def test_centre_pixel_has_object_colour(seed, noise):
    scene = sample_scene(random.Random(seed), SceneConfig(image_size=(100, 150), noise=noise))
    pixels = np.asarray(render_scene(scene))
    assert pixels.shape == (scene.height, scene.width, 3)
    for o in scene.objects:
        if o.visible < 1:
            continue
        x, y = int(o.center[0]), int(o.center[1])
        assert tuple(pixels[y, x]) == RGB[o.color], (o, tuple(pixels[y, x]))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_visible_pixels_show_each_object(seed):
    """An object whose colour no other object has shows exactly visible * area pixels of that colour."""
    scene = sample_scene(random.Random(seed), SceneConfig(min_objects=4, max_objects=6, min_visible=0.5))
    pixels = np.asarray(render_scene(scene))
    colours = [o.color for o in scene.objects]
    for o in scene.objects:
        if colours.count(o.color) != 1:
            continue
        shown = np.all(pixels == RGB[o.color], axis=-1)
        assert shown.sum() == round(o.visible * o.area)
        mask = shape_mask(o.shape, *o.center, o.radius, scene.width, scene.height)
        assert not (shown & ~mask).any()


def test_background_flat_without_noise_and_noisy_with_it():
    cfg = SceneConfig(min_objects=1, max_objects=1, sizes=("small",), backgrounds=("gray",))
    scene = sample_scene(random.Random(0), cfg)
    o = scene.objects[0]
    mask = shape_mask(o.shape, *o.center, o.radius, scene.width, scene.height)
    flat = np.asarray(render_scene(scene))
    assert np.all(flat[~mask] == BACKGROUNDS["gray"])
    noisy = np.asarray(
        render_scene(sample_scene(random.Random(0), SceneConfig(**{**cfg.__dict__, "noise": 12.0})))
    )
    residual = noisy[~mask].astype(float) - BACKGROUNDS["gray"]
    assert abs(residual.mean()) < 1.0 and residual.std() == pytest.approx(12.0, rel=0.1)
    assert np.all(noisy[mask] == RGB[o.color])  # noise never touches objects


def test_rendering_is_a_pure_function_of_the_scene():
    scene = sample_scene(random.Random(4), SceneConfig(noise=8.0))
    assert render_scene(scene).tobytes() == render_scene(scene).tobytes()


def test_flipped_scene_renders_as_mirrored_image():
    scene = sample_scene(random.Random(6), SceneConfig(min_objects=5, max_objects=6))
    assert ImageOps.mirror(render_scene(scene)).tobytes() == render_scene(scene.hflip()).tobytes()


@pytest.mark.parametrize(
    ("shape", "unit_area"),
    [
        ("circle", math.pi),
        ("square", 1.7**2),
        ("triangle", 0.5 * 2 * 1.8),
        ("diamond", 0.5 * 1.6 * 2),
        ("hexagon", 1.5 * math.sqrt(3)),
    ],
)
def test_mask_area_matches_geometry(shape, unit_area):
    r = 50.0  # large, so that PIL's half-pixel border stays within the tolerance
    mask = shape_mask(shape, 64.0, 64.0, r, 128, 128)
    assert mask.sum() == pytest.approx(unit_area * r * r, rel=0.04)


def test_unknown_shape_is_an_error():
    with pytest.raises(ValueError, match="unknown shape 'blob'"):
        shape_mask("blob", 10, 10, 5, 32, 32)
