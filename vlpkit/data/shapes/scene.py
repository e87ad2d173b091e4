"""Scene sampling for the shapes world: objects with shape, colour, size and position, plus spatial relations.

A ``Scene`` is the ground truth that every caption, question, statement and annotation is computed from.
Objects are listed in drawing order: later objects cover earlier ones, and ``SceneObject.visible`` is the
fraction of an object's pixels that stays uncovered.

Spatial relations use box centres (what a detector predicts) and a margin: "a is left of b" holds when
a's centre is at least ``relation_margin * width`` pixels left of b's. Within the margin the relation is
undecided (None), and the grammar never asks or states an undecided relation, so every answer is certain.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal

import numpy as np

from vlpkit.data.shapes.geometry import BACKGROUNDS, PALETTE, SHAPES, shape_mask, shape_polygon

COLORS: tuple[str, ...] = tuple(PALETTE)
SIZES: tuple[str, ...] = ("small", "large")
SIZE_RADIUS: dict[str, float] = {"small": 0.075, "large": 0.14}
"""Shape radius as a fraction of min(width, height), before a +-8% jitter."""
SIZE_JITTER = 0.08
_EXTENT = 1.1  # the largest unit-outline coordinate (the star's points), used to keep shapes inside the image

Horizontal = Literal["left", "right"]
Vertical = Literal["above", "below"]


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are sampled.

    Attributes:
        image_size: side in pixels, or (min, max) from which width and height are drawn independently.
        min_objects, max_objects: the number of objects is uniform in [min_objects, max_objects].
        shapes, colors, sizes, backgrounds: vocabularies to sample from (subsets of the renderer's).
        occlusion: allow objects to overlap; each object keeps at least ``min_visible`` of its pixels.
        min_visible: lower bound on ``SceneObject.visible`` when occlusion is allowed.
        noise: standard deviation (0-255 scale) of Gaussian noise on background pixels; 0 disables it.
        relation_margin: centre offset, as a fraction of the image side, needed for left/right/above/below.
        max_tries: placement attempts per object (and restarts per scene) before giving up with an error.
    """

    image_size: int | tuple[int, int] = 128
    min_objects: int = 2
    max_objects: int = 6
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = COLORS
    sizes: tuple[str, ...] = SIZES
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    occlusion: bool = True
    min_visible: float = 0.6
    noise: float = 0.0
    relation_margin: float = 0.08
    max_tries: int = 100

    def __post_init__(self) -> None:
        # JSON round trips (the manifest) turn tuples into lists; normalise so configs compare equal.
        for name in ("shapes", "colors", "sizes", "backgrounds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.image_size, (list, tuple)):
            object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
            lo, hi = self.image_size if len(self.image_size) == 2 else (0, -1)
            if len(self.image_size) != 2 or not 32 <= lo <= hi:
                raise ValueError(
                    "image_size must be an int >= 32 or (min, max) with 32 <= min <= max, "
                    f"got {self.image_size}"
                )
        elif int(self.image_size) < 32:
            raise ValueError(f"image_size must be >= 32 pixels, got {self.image_size}")
        for name, allowed in (
            ("shapes", SHAPES),
            ("colors", COLORS),
            ("sizes", SIZES),
            ("backgrounds", tuple(BACKGROUNDS)),
        ):
            values = getattr(self, name)
            unknown = [v for v in values if v not in allowed]
            if not values or unknown or len(set(values)) != len(values):
                raise ValueError(f"{name} must be distinct values from {allowed}, got {values}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}"
            )
        if self.max_objects > 10:
            raise ValueError(
                f"max_objects must be <= 10 (the grammar's number words), got {self.max_objects}"
            )
        if not 0.0 < self.min_visible <= 1.0:
            raise ValueError(f"min_visible must be in (0, 1], got {self.min_visible}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if not 0.0 <= self.relation_margin < 0.5:
            raise ValueError(f"relation_margin must be in [0, 0.5), got {self.relation_margin}")


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape.

    Attributes:
        shape, color, size: the attributes (class name and the two attributes of the world).
        center: (cx, cy) geometric centre in pixels, used for drawing.
        radius: drawing radius in pixels.
        bbox: (x0, y0, x1, y1) tight box of the whole shape's pixels (amodal: also where covered);
            x1 and y1 are exclusive.
        area: number of pixels of the whole shape.
        visible: fraction of ``area`` not covered by objects drawn later, in (0, 1].
    """

    shape: str
    color: str
    size: str
    center: tuple[float, float]
    radius: float
    bbox: tuple[int, int, int, int]
    area: int
    visible: float

    @property
    def box_center(self) -> tuple[float, float]:
        """Centre of ``bbox``; spatial relations are defined on it."""
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2, (y0 + y1) / 2

    def matches(self, shape: str | None = None, color: str | None = None, size: str | None = None) -> bool:
        """True when every given attribute equals this object's (None matches anything)."""
        return (
            (shape is None or shape == self.shape)
            and (color is None or color == self.color)
            and (size is None or size == self.size)
        )

    def polygon(self) -> list[float]:
        """Flat [x1, y1, x2, y2, ...] outline of the whole shape (COCO polygon format).

        The radius is grown by half a pixel: PIL also fills the pixels the outline only touches, and with
        this margin pycocotools' raster of the polygon matches the drawn pixels best (IoU ~0.95).
        """
        return [round(c, 2) for xy in shape_polygon(self.shape, *self.center, self.radius + 0.5) for c in xy]


@dataclass(frozen=True)
class Scene:
    """A sampled image: size, background and objects in drawing order."""

    width: int
    height: int
    background: str
    objects: tuple[SceneObject, ...]
    noise: float = 0.0
    noise_seed: int = 0
    relation_margin: float = 0.08
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @cached_property
    def _attribute_counts(self) -> Counter:
        # (shape|None, color|None, size|None) -> number of matching objects; the grammar counts a lot
        counts: Counter = Counter()
        for o in self.objects:
            for shape in (o.shape, None):
                for color in (o.color, None):
                    for size in (o.size, None):
                        counts[shape, color, size] += 1
        return counts

    def count(self, shape: str | None = None, color: str | None = None, size: str | None = None) -> int:
        """Number of objects matching the given attributes (None matches anything)."""
        return self._attribute_counts[shape, color, size]

    def horizontal(self, a: SceneObject, b: SceneObject) -> Horizontal | None:
        """Where ``a`` is relative to ``b`` horizontally: "left", "right", or None inside the margin."""
        dx = a.box_center[0] - b.box_center[0]
        margin = self.relation_margin * self.width
        if dx <= -margin and dx < 0:
            return "left"
        if dx >= margin and dx > 0:
            return "right"
        return None

    def vertical(self, a: SceneObject, b: SceneObject) -> Vertical | None:
        """Where ``a`` is relative to ``b`` vertically: "above", "below", or None inside the margin."""
        dy = a.box_center[1] - b.box_center[1]
        margin = self.relation_margin * self.height
        if dy <= -margin and dy < 0:
            return "above"
        if dy >= margin and dy > 0:
            return "below"
        return None

    def relation(self, a: SceneObject, b: SceneObject, rel: str) -> bool | None:
        """Whether ``a`` is ``rel`` ("left", "right", "above", "below") of ``b``; None when undecided."""
        got = self.horizontal(a, b) if rel in ("left", "right") else self.vertical(a, b)
        if rel not in ("left", "right", "above", "below"):
            raise ValueError(f"unknown relation {rel!r}")
        return None if got is None else got == rel

    def region(self, obj: SceneObject) -> set[str]:
        """Absolute position words that hold for ``obj``: "left"/"right"/"top"/"bottom" third of the image."""
        cx, cy = obj.box_center
        words = set()
        if cx < self.width / 3:
            words.add("left")
        elif cx > 2 * self.width / 3:
            words.add("right")
        if cy < self.height / 3:
            words.add("top")
        elif cy > 2 * self.height / 3:
            words.add("bottom")
        return words

    def hflip(self) -> Scene:
        """The mirror image (x -> width - x). PIL rasterises the mirrored shapes pixel-exactly mirrored."""
        flipped = []
        for o in self.objects:
            x0, y0, x1, y1 = o.bbox
            flipped.append(
                replace(
                    o,
                    center=(self.width - o.center[0], o.center[1]),
                    bbox=(self.width - x1, y0, self.width - x0, y1),
                )
            )
        return replace(self, objects=tuple(flipped))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists instead of tuples); inverse of ``Scene.from_dict``."""
        objects = [
            {
                "shape": o.shape,
                "color": o.color,
                "size": o.size,
                "center": list(o.center),
                "radius": o.radius,
                "bbox": list(o.bbox),
                "area": o.area,
                "visible": o.visible,
            }
            for o in self.objects
        ]
        return {
            "width": self.width,
            "height": self.height,
            "background": self.background,
            "objects": objects,
            "noise": self.noise,
            "noise_seed": self.noise_seed,
            "relation_margin": self.relation_margin,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        """Rebuild a scene written by ``to_dict`` (extra keys such as image_id are kept in ``extra``)."""
        known = {"width", "height", "background", "objects", "noise", "noise_seed", "relation_margin"}
        missing = {"width", "height", "background", "objects"} - set(d)
        if missing:
            raise KeyError(f"scene dict lacks keys {sorted(missing)}; got {sorted(d)}")
        objects = tuple(
            SceneObject(
                shape=o["shape"],
                color=o["color"],
                size=o["size"],
                center=tuple(o["center"]),
                radius=float(o["radius"]),
                bbox=tuple(int(v) for v in o["bbox"]),
                area=int(o["area"]),
                visible=float(o["visible"]),
            )
            for o in d["objects"]
        )
        return cls(
            width=int(d["width"]),
            height=int(d["height"]),
            background=d["background"],
            objects=objects,
            noise=float(d.get("noise", 0.0)),
            noise_seed=int(d.get("noise_seed", 0)),
            relation_margin=float(d.get("relation_margin", 0.08)),
            extra={k: v for k, v in d.items() if k not in known},
        )


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def sample_scene(rng: random.Random, config: SceneConfig | None = None) -> Scene:
    """Sample a scene; a pure function of the state of ``rng`` and ``config``.

    Objects are placed one by one at uniform positions that keep them inside the image. A position is
    rejected when the new object would cover more than ``1 - min_visible`` of an earlier object (or touch
    it at all when occlusion is off). After ``max_tries`` failed positions the scene is restarted.
    """
    cfg = config or SceneConfig()
    if isinstance(cfg.image_size, tuple):
        width, height = rng.randint(*cfg.image_size), rng.randint(*cfg.image_size)
    else:
        width = height = int(cfg.image_size)
    num_objects = rng.randint(cfg.min_objects, cfg.max_objects)
    background = rng.choice(cfg.backgrounds)
    noise_seed = rng.getrandbits(32)
    side = min(width, height)
    min_visible = cfg.min_visible if cfg.occlusion else 1.0

    for _restart in range(cfg.max_tries):
        placed: list[tuple[str, str, str, float, float, float, np.ndarray]] = []
        uncovered: list[np.ndarray] = []  # pixels of each placed object not covered so far
        for _ in range(num_objects):
            shape, color, size = rng.choice(cfg.shapes), rng.choice(cfg.colors), rng.choice(cfg.sizes)
            radius = SIZE_RADIUS[size] * side * rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)
            pad = _EXTENT * radius + 1
            for _try in range(cfg.max_tries):
                cx, cy = rng.uniform(pad, width - pad), rng.uniform(pad, height - pad)
                mask = shape_mask(shape, cx, cy, radius, width, height)
                ok = all(
                    np.count_nonzero(vis & ~mask) >= min_visible * np.count_nonzero(p[6])
                    for vis, p in zip(uncovered, placed)
                )
                if ok:
                    break
            else:
                break  # this object does not fit: restart the scene
            uncovered = [vis & ~mask for vis in uncovered]
            placed.append((shape, color, size, cx, cy, radius, mask))
            uncovered.append(mask.copy())
        if len(placed) == num_objects:
            objects = tuple(
                SceneObject(
                    shape=shape,
                    color=color,
                    size=size,
                    center=(cx, cy),
                    radius=radius,
                    bbox=_mask_box(mask),
                    area=int(np.count_nonzero(mask)),
                    visible=float(np.count_nonzero(vis) / np.count_nonzero(mask)),
                )
                for (shape, color, size, cx, cy, radius, mask), vis in zip(placed, uncovered)
            )
            return Scene(
                width=width,
                height=height,
                background=background,
                objects=objects,
                noise=cfg.noise,
                noise_seed=noise_seed,
                relation_margin=cfg.relation_margin,
            )
    raise RuntimeError(
        f"could not place {num_objects} objects in a {width}x{height} image with min_visible={min_visible} "
        f"after {cfg.max_tries} restarts; lower max_objects or allow occlusion"
    )
