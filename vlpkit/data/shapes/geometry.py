"""The shapes of the shapes world: their names, colours and backgrounds, their outlines and pixel masks.

Every shape is mirror-symmetric about its vertical axis (no rotations), so a horizontally flipped scene is
again a valid scene: only the words "left" and "right" swap (see ``Scene.hflip``). `scene.py` samples scenes with
these and `render.py` draws them.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

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
