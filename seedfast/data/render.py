"""Drawing scenes: anti-aliased shapes on a plain background, vectorised over a batch in numpy.

Geometry is in fractions of the image side, so one layout draws the same picture at any size.
Every shape of a size has the same area (that of a circle of radius ``SIZE_RADIUS[size]``),
so area alone tells small from large whatever the shape. Squares are axis-aligned; triangles
are isosceles, apex up, as tall as their base, so each shape's bounding box is a square whose
centre is the object's position. Coverage of a pixel is ``clip(0.5 − d, 0, 1)`` with ``d``
the signed distance (in pixels) from the pixel centre to the outline: a one-pixel box filter.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from seedfast.data.scene import BACKGROUND, PALETTE, SHAPES, ObjectAttributes, Scene

SIZE_RADIUS = {"small": 0.09, "large": 0.15}
POSITION_CENTRES = {
    "middle": (0.5, 0.5),
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
}
# Half the side of each shape's bounding box, in units of its equal-area radius r:
# a square of side r·√π and a triangle of base = height = r·√(2π) have area π·r².
HALF_EXTENT = {"circle": 1.0, "square": math.sqrt(math.pi) / 2, "triangle": math.sqrt(2 * math.pi) / 2}
_SQRT5 = math.sqrt(5.0)


@dataclass(frozen=True)
class PlacedObject:
    """One object as drawn: its attributes and exact geometry.

    Attributes
    ----------
    attributes : ObjectAttributes
    x, y : float
        Centre of the bounding box, in fractions of the image side (x from the left, y from the top).
    radius : float
        Radius of the circle of equal area, in fractions of the image side.
    """

    attributes: ObjectAttributes
    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class SceneLayout:
    """A scene with the geometry to draw it; ``scene`` is its ground truth."""

    objects: tuple[PlacedObject, ...]

    @property
    def scene(self) -> Scene:
        return Scene(tuple(obj.attributes for obj in self.objects))


def shape_coverage(shape: str, x: np.ndarray, y: np.ndarray, radius: np.ndarray, canvas_size: int) -> np.ndarray:
    """How much of each pixel ``n`` shapes of one kind cover.

    Parameters
    ----------
    shape : one of ``SHAPES``
    x, y, radius : array ``[n]``
        Bounding-box centre and equal-area radius, in pixels from the canvas's top left.
    canvas_size : int
        Side of the square canvas, in pixels.

    Returns
    -------
    ndarray ``[n, canvas_size, canvas_size]``, float32 in [0, 1]

    Raises
    ------
    ValueError
        Unknown shape.
    """
    if shape not in SHAPES:
        raise ValueError(f"shape_coverage: shape must be one of {SHAPES}, got {shape!r}")
    grid = np.arange(canvas_size, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - np.asarray(x, dtype=np.float32)[:, None, None]
    dy = grid[None, :, None] - np.asarray(y, dtype=np.float32)[:, None, None]
    half = np.asarray(radius, dtype=np.float32)[:, None, None] * np.float32(HALF_EXTENT[shape])
    if shape == "circle":
        distance = np.sqrt(dx * dx + dy * dy) - half
    elif shape == "square":
        distance = np.maximum(np.abs(dx), np.abs(dy)) - half
    else:
        # Inside when below the apex lines |dx| ≤ (dy + half) / 2 and above the base dy ≤ half.
        distance = np.maximum(dy - half, (2 * np.abs(dx) - dy - half) / np.float32(_SQRT5))
    return np.clip(np.float32(0.5) - distance, 0.0, 1.0)


def render_layouts(layouts: Sequence[SceneLayout], image_size: int) -> torch.Tensor:
    """Draw scenes; later objects are painted over earlier ones.

    Parameters
    ----------
    layouts : sequence of B SceneLayout
    image_size : int
        Side of the square images, in pixels (at least 8).

    Returns
    -------
    Tensor ``[B, 3, image_size, image_size]``, uint8 (0–255)

    Raises
    ------
    ValueError
        ``image_size`` below 8.
    """
    if image_size < 8:
        raise ValueError(f"render_layouts: image_size must be at least 8, got {image_size}")
    canvas = np.empty((len(layouts), 3, image_size, image_size), dtype=np.float32)
    canvas[:] = np.asarray(BACKGROUND, dtype=np.float32)[None, :, None, None]
    slots = max((len(layout.objects) for layout in layouts), default=0)
    for slot in range(slots):
        # One slot holds at most one object per image, so the fancy-indexed update below never
        # writes one image twice.
        for shape in SHAPES:
            rows = [i for i, layout in enumerate(layouts) if slot < len(layout.objects)
                    and layout.objects[slot].attributes.shape == shape]
            if not rows:
                continue
            placed = [layouts[i].objects[slot] for i in rows]
            alpha = shape_coverage(
                shape,
                np.array([obj.x for obj in placed]) * image_size,
                np.array([obj.y for obj in placed]) * image_size,
                np.array([obj.radius for obj in placed]) * image_size,
                image_size,
            )[:, None]
            colour = np.array([PALETTE[obj.attributes.colour] for obj in placed], dtype=np.float32)[:, :, None, None]
            canvas[rows] += alpha * (colour - canvas[rows])
    pixels = np.rint(canvas * np.float32(255.0)).astype(np.uint8)
    return torch.from_numpy(pixels)
