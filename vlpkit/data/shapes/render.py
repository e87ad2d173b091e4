"""Drawing the shapes world with PIL: the palette, the shape outlines, full-shape masks and whole scenes.

Every shape is mirror-symmetric about its vertical axis (no rotations), so a horizontally flipped scene is
again a valid scene: only the words "left" and "right" swap (see ``Scene.hflip``).
Shapes are drawn without anti-aliasing, so every object pixel has exactly its palette colour.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:  # scene.py imports this module; the type is only needed for annotations
    from vlpkit.data.shapes.scene import Scene

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "hexagon")
"""Every shape the renderer can draw; the order fixes COCO category ids (1-based)."""

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
"""Object colour name -> RGB. The colours are far apart so the nearest palette entry identifies a pixel."""

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (150, 150, 150),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
"""Background name -> RGB."""

CIRCLE_VERTICES = 32
"""Vertices of the polygon standing for a circle in COCO segmentations (the circle is drawn as an ellipse)."""


def _unit_outline(shape: str) -> list[tuple[float, float]]:
    """Outline of ``shape`` centred at 0 with radius about 1 (image axes: y grows downwards)."""
    if shape == "circle":
        return [
            (math.cos(2 * math.pi * k / CIRCLE_VERTICES), math.sin(2 * math.pi * k / CIRCLE_VERTICES))
            for k in range(CIRCLE_VERTICES)
        ]
    if shape == "square":
        s = 0.85  # a square of half-side 1 looks much bigger than the other shapes of the same radius
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "triangle":
        return [(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.8, 0.0), (0.0, 1.0), (-0.8, 0.0)]
    if shape == "hexagon":
        return [(math.cos(math.pi / 3 * k), math.sin(math.pi / 3 * k)) for k in range(6)]
    if shape == "star":
        points = []
        for k in range(10):
            r = 1.1 if k % 2 == 0 else 0.45
            a = -math.pi / 2 + math.pi / 5 * k  # first point straight up
            points.append((r * math.cos(a), r * math.sin(a)))
        return points
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def shape_polygon(shape: str, cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    """Vertices (x, y) in pixels of ``shape`` centred at (cx, cy); used for COCO segmentations and drawing."""
    return [(cx + radius * x, cy + radius * y) for x, y in _unit_outline(shape)]


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, fill: int | tuple[int, ...]
) -> None:
    """Draw one filled shape; the single drawing primitive shared by masks and rendering."""
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        draw.polygon(shape_polygon(shape, cx, cy, radius), fill=fill)


def shape_mask(shape: str, cx: float, cy: float, radius: float, width: int, height: int) -> np.ndarray:
    """Boolean (height, width) mask of the pixels the shape covers when drawn alone."""
    canvas = Image.new("L", (width, height), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, cx, cy, radius, 1)
    return np.asarray(canvas, dtype=bool)


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
