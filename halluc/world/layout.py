"""Sample what is in an image and where: scene type, categories (with the split's priors), sizes, styles, boxes.

All draws come from the one ``numpy`` generator passed in, so a layout is a pure function of its seed.
The distributions are documented (with numbers) in the docstring of ``halluc.world``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from halluc.world.catalog import GLYPHS, SCENES
from halluc.world.shapes import SHAPES, Box

__all__ = [
    "N_OBJECTS_P",
    "SIZE_RANGES",
    "TEXTURES",
    "Placement",
    "partner",
    "sample_categories",
    "sample_layout",
]

SCENE_NAMES = tuple(SCENES)
N_OBJECTS_P = (0.06, 0.11, 0.16, 0.18, 0.17, 0.14, 0.10, 0.08)  # train/val: P(1..8 objects), mean 4.5
IN_SCENE_P = 0.85  # train/val: a free slot is drawn from the scene's list (by weight), else from another scene's
PAIR_PULL_P = 0.6  # train/val: after an in-scene object, its typical companion fills the next slot
SHIFT_ANCHORS_P = (0.6, 0.4)  # shift: P(1 or 2 objects from the scene's own list)
SHIFT_FOREIGN_P = (0.15, 0.2, 0.2, 0.2, 0.15, 0.1)  # shift: P(1..6 objects from other scenes' lists)
SIZE_RANGES = {"s": (0.14, 0.25), "m": (0.19, 0.36), "l": (0.28, 0.47)}  # longer side, fraction of image size
DISTANT_P, DISTANT_RANGE = 0.15, (0.14, 0.19)  # an object drawn small regardless of its size class
CROWD_SCALE = (1.0, 1.0, 1.0, 0.9, 0.8, 0.75, 0.7, 0.65)  # size factor by object count: crowded, smaller glyphs
LOW_CONTRAST_P, CONTRAST_RANGE = 0.15, (0.3, 0.5)  # colour blended toward the background by this alpha
TEXTURES = {"solid": 0.4, "striped": 0.2, "dotted": 0.2, "outline": 0.2}
OCCLUSION_P = 0.3  # images with >= 2 objects: one object is placed to cover part of an earlier one
_MIN_SIDE = 0.14  # the smallest glyph side, as a fraction of the image size (9 px at 64)


@dataclass(frozen=True)
class Placement:
    """One object of an image: category, box and style; ``visible``/``occluder`` are set after rendering."""

    category: str
    box: Box  # x, y, w, h in image pixels (the glyph's bounding box)
    texture: str
    contrast: float  # 1.0 = full colour; below 1 the colour is blended toward the background (weak evidence)
    visible: float = 1.0  # fraction of the glyph's painted pixels not hidden by later objects
    occluder: int | None = None  # index (draw order) of the object hiding most of this one

    @property
    def shape(self) -> str:
        return GLYPHS[self.category].shape


def partner(scene: str, category: str) -> str | None:
    """The typical companion of ``category`` in ``scene`` (e.g. fork -> knife in a kitchen), if it has one."""
    for a, b in SCENES[scene].pairs:
        if category in (a, b):
            return b if category == a else a
    return None


def _weighted(rng: np.random.Generator, options: list[str], weights: list[float]) -> str:
    p = np.asarray(weights, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _outside(scene: str) -> list[str]:
    """Categories that are not on the scene's list, in catalog order."""
    return [c for c in GLYPHS if c not in SCENES[scene].weights]


def sample_categories(split: str, scene: str, rng: np.random.Generator) -> list[str]:
    """Distinct categories for one image: the scene's priors (train/val), priors broken (shift), or none at all
    (prior_free: as many objects as train, drawn uniformly whatever the scene)."""
    weights = SCENES[scene].weights
    outside = _outside(scene)
    if split == "prior_free":
        n = 1 + int(rng.choice(len(N_OBJECTS_P), p=N_OBJECTS_P))
        every = list(GLYPHS)
        return [every[i] for i in rng.choice(len(every), size=n, replace=False)]
    if split == "shift":
        first = _weighted(rng, list(weights), list(weights.values()))
        cats = [first]
        if rng.random() < SHIFT_ANCHORS_P[1]:
            rest = [c for c in weights if c not in (first, partner(scene, first))]
            cats.append(_weighted(rng, rest, [weights[c] for c in rest]))
        n_foreign = 1 + int(rng.choice(len(SHIFT_FOREIGN_P), p=SHIFT_FOREIGN_P))
        cats += [outside[i] for i in rng.choice(len(outside), size=n_foreign, replace=False)]
        return cats
    n = 1 + int(rng.choice(len(N_OBJECTS_P), p=N_OBJECTS_P))
    cats = []
    while len(cats) < n:
        mate = partner(scene, cats[-1]) if cats and cats[-1] in weights else None
        if mate is not None and mate not in cats and rng.random() < PAIR_PULL_P:
            cats.append(mate)
            continue
        pool = [c for c in weights if c not in cats] if rng.random() < IN_SCENE_P else []
        if pool:
            cats.append(_weighted(rng, pool, [weights[c] for c in pool]))
        else:
            pool = [c for c in outside if c not in cats]
            cats.append(pool[int(rng.integers(len(pool)))])
    return cats


def _size(category: str, n: int, image_size: int, rng: np.random.Generator) -> tuple[float, float]:
    """Glyph width and height: the size class (or 'distant'), shrunk in crowded images, shaped by the aspect."""
    lo, hi = DISTANT_RANGE if rng.random() < DISTANT_P else SIZE_RANGES[GLYPHS[category].size]
    side = max(_MIN_SIDE, rng.uniform(lo, hi) * CROWD_SCALE[n - 1]) * image_size
    aspect = SHAPES[GLYPHS[category].shape].aspect * rng.uniform(0.9, 1.1)
    return (side, side / aspect) if aspect >= 1 else (side * aspect, side)


def _overlap(a: Box, b: Box) -> float:
    """Intersection area of two boxes."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _grow(box: Box, margin: float) -> Box:
    return (box[0] - margin, box[1] - margin, box[2] + 2 * margin, box[3] + 2 * margin)


def _free_box(size: tuple[float, float], placed: list[Box], image_size: int, rng: np.random.Generator) -> Box:
    """A box not touching earlier ones; shrinks the glyph when the image is full; least overlap as last resort."""
    w, h = size
    best: tuple[float, Box] | None = None
    for _ in range(6):
        for _ in range(30):
            box = (rng.uniform(0, image_size - w), rng.uniform(0, image_size - h), w, h)
            worst = max((_overlap(_grow(box, 1.0), p) / (p[2] * p[3]) for p in placed), default=0.0)
            if worst == 0.0:
                return box
            if best is None or worst < best[0]:
                best = (worst, box)
        scale = max(0.85, _MIN_SIDE * image_size / max(w, h))
        w, h = w * scale, h * scale
    assert best is not None
    return best[1]


def _covering_box(
    size: tuple[float, float], target: Box, others: list[Box], image_size: int, rng: np.random.Generator
) -> Box | None:
    """A box hiding 20-60% of ``target``'s box without touching any other placed box, or None."""
    w, h = size
    tx, ty = target[0] + target[2] / 2, target[1] + target[3] / 2
    for _ in range(30):
        angle, reach = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.8)
        cx = tx + np.cos(angle) * reach * (target[2] + w) / 2
        cy = ty + np.sin(angle) * reach * (target[3] + h) / 2
        box = (
            float(np.clip(cx - w / 2, 0, image_size - w)),
            float(np.clip(cy - h / 2, 0, image_size - h)),
            w,
            h,
        )
        hidden = _overlap(box, target) / (target[2] * target[3])
        if 0.2 <= hidden <= 0.6 and all(_overlap(_grow(box, 1.0), o) == 0.0 for o in others):
            return box
    return None


def sample_layout(split: str, image_size: int, rng: np.random.Generator) -> tuple[str, list[Placement]]:
    """Scene type and objects (in draw order: larger first, so small things lie on big ones) of one image."""
    scene = SCENE_NAMES[int(rng.integers(len(SCENE_NAMES)))]
    cats = sample_categories(split, scene, rng)
    sizes = [_size(c, len(cats), image_size, rng) for c in cats]
    order = sorted(range(len(cats)), key=lambda i: -sizes[i][0] * sizes[i][1])
    occluder, target = -1, -1
    if len(cats) >= 2 and rng.random() < OCCLUSION_P:
        occluder = int(rng.integers(1, len(cats)))
        target = int(rng.integers(0, occluder))
    boxes: list[Box] = []
    placements = []
    textures, texture_p = list(TEXTURES), list(TEXTURES.values())
    for rank, i in enumerate(order):
        box = None
        if rank == occluder:
            others = [b for k, b in enumerate(boxes) if k != target]
            box = _covering_box(sizes[i], boxes[target], others, image_size, rng)
        box = box or _free_box(sizes[i], boxes, image_size, rng)
        boxes.append(box)
        contrast = rng.uniform(*CONTRAST_RANGE) if rng.random() < LOW_CONTRAST_P else 1.0
        texture = textures[int(rng.choice(len(textures), p=texture_p))]
        placements.append(Placement(cats[i], box, texture, round(float(contrast), 3)))
    return scene, placements
