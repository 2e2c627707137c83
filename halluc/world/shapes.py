"""Glyph shapes as unit polygons, placed into boxes; the same polygon is drawn and written as COCO segmentation."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SHAPES", "Box", "Shape", "polygon", "polygon_area"]

Box = tuple[float, float, float, float]  # x, y, w, h in image pixels
Point = tuple[float, float]


def _fit(points: list[Point]) -> tuple[Point, ...]:
    """Stretch points to span exactly [0, 1] on both axes, so a glyph's bbox is the box it is drawn in."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return tuple(((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in points)


def _regular(corners: int, start_deg: float) -> tuple[Point, ...]:
    """A regular polygon with ``corners`` corners, the first at ``start_deg`` (0 = pointing right)."""
    angles = [math.radians(start_deg) + 2 * math.pi * k / corners for k in range(corners)]
    return _fit([(math.cos(a), math.sin(a)) for a in angles])


def _star(points: int, inner: float) -> tuple[Point, ...]:
    """A star with ``points`` tips, the inner radius a fraction of the outer one, first tip pointing up."""
    corners = []
    for k in range(2 * points):
        radius = 1.0 if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / points
        corners.append((radius * math.cos(angle), radius * math.sin(angle)))
    return _fit(corners)


def _dome(segments: int) -> tuple[Point, ...]:
    """The upper half of an ellipse filling the unit square, flat side down."""
    return tuple(
        (0.5 + 0.5 * math.cos(math.pi * k / segments), 1 - math.sin(math.pi * k / segments))
        for k in range(segments + 1)
    )


@dataclass(frozen=True)
class Shape:
    """A unit polygon (y down, inside [0, 1]^2) and the width/height ratio of the box it is drawn in."""

    points: tuple[Point, ...]
    aspect: float = 1.0


SHAPES: dict[str, Shape] = {
    "disc": Shape(_regular(24, 0.0)),
    "square": Shape(((0, 0), (1, 0), (1, 1), (0, 1))),
    "tri_up": Shape(((0.5, 0), (1, 1), (0, 1))),
    "tri_down": Shape(((0, 0), (1, 0), (0.5, 1))),
    "diamond": Shape(((0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)), aspect=0.8),
    "star": Shape(_star(5, 0.48)),
    "cross": Shape(
        ((0.32, 0), (0.68, 0), (0.68, 0.32), (1, 0.32), (1, 0.68), (0.68, 0.68), (0.68, 1), (0.32, 1))
        + ((0.32, 0.68), (0, 0.68), (0, 0.32), (0.32, 0.32))
    ),
    "hexagon": Shape(_regular(6, 0.0)),
    "octagon": Shape(_regular(8, 22.5)),
    "tall_bar": Shape(((0, 0), (1, 0), (1, 1), (0, 1)), aspect=0.45),
    "wide_bar": Shape(((0, 0), (1, 0), (1, 1), (0, 1)), aspect=2.2),
    "dome": Shape(_dome(12), aspect=2.0),
    "arrow": Shape(((0, 0.3), (0.55, 0.3), (0.55, 0), (1, 0.5), (0.55, 1), (0.55, 0.7), (0, 0.7)), aspect=1.4),
    "tee": Shape(((0, 0), (1, 0), (1, 0.34), (0.66, 0.34), (0.66, 1), (0.34, 1), (0.34, 0.34), (0, 0.34))),
    "trapezoid": Shape(((0.25, 0), (0.75, 0), (1, 1), (0, 1))),
    "ell": Shape(((0, 0), (0.42, 0), (0.42, 0.58), (1, 0.58), (1, 1), (0, 1))),
}


def polygon(shape: str, box: Box) -> list[Point]:
    """The shape's polygon placed in ``box``, in image pixels, rounded to 0.01 px (as written to COCO)."""
    x, y, w, h = box
    return [(round(x + u * w, 2), round(y + v * h, 2)) for u, v in SHAPES[shape].points]


def polygon_area(points: list[Point]) -> float:
    """Shoelace area of a simple polygon."""
    total = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True):
        total += x0 * y1 - x1 * y0
    return abs(total) / 2
