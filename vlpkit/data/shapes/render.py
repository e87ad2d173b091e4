"""Drawing whole scenes of the shapes world with PIL (the shapes themselves: `vlpkit.data.shapes.geometry`).

Shapes are drawn without anti-aliasing, so every object pixel has exactly its palette colour.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from vlpkit.data.shapes.geometry import (  # noqa: F401  (PALETTE, SHAPES, shape_mask, shape_polygon: public here too)
    BACKGROUNDS,
    PALETTE,
    SHAPES,
    draw_shape,
    shape_mask,
    shape_polygon,
)
from vlpkit.data.shapes.scene import Scene


def background_array(scene: Scene) -> np.ndarray:
    """(H, W, 3) uint8 background: the flat background colour plus optional Gaussian noise.

    The noise is seeded by ``scene.noise_seed`` so rendering is a pure function of the scene.
    """
    rgb = np.empty((scene.height, scene.width, 3), dtype=np.uint8)
    rgb[...] = BACKGROUNDS[scene.background]
    if scene.noise > 0:
        noise = np.random.default_rng(scene.noise_seed).normal(0.0, scene.noise, rgb.shape)
        rgb = np.clip(rgb + noise, 0, 255).astype(np.uint8)
    return rgb


def render_scene(scene: Scene) -> Image.Image:
    """Draw ``scene`` as an RGB PIL image of size (scene.width, scene.height).

    Objects are drawn in the order of ``scene.objects``; later objects cover earlier ones, which is the
    occlusion that ``SceneObject.visible`` records. Noise only touches background pixels.
    """
    image = Image.fromarray(background_array(scene))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_shape(draw, obj.shape, obj.center[0], obj.center[1], obj.radius, PALETTE[obj.color])
    return image
