"""Five human-style captions per image: scene first, objects by salience, true spatial relations, CHAIR synonyms.

Only the nouns in ``catalog.NOUNS`` (all from the CHAIR synonym list) name objects, and only for objects in the
image; every other word is chosen to map to no COCO category, so a caption never mentions an absent object.
Objects hidden for more than ``1 - OCCLUDED_BELOW`` of their pixels may go unmentioned (as annotators skip
them); every other object is mentioned in at least one caption (the detailed one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from halluc.world.catalog import GLYPHS, NOUNS, SCENES
from halluc.world.layout import Placement
from halluc.world.shapes import Box

__all__ = ["CAPTIONS_PER_IMAGE", "OCCLUDED_BELOW", "OPENERS", "box_gap", "describe", "grid_cell", "salience"]

CAPTIONS_PER_IMAGE = 5
OCCLUDED_BELOW = 0.85  # an object with a smaller visible fraction counts as occluded

OPENERS = (  # the first sentence of every caption: scene, then the most salient objects
    "A {scene} scene with {objs}.",
    "A picture of {a_scene} with {objs}.",
    "An image of {a_scene} showing {objs}.",
    "This {scene} has {objs}.",
    "A view of {a_scene} that contains {objs}.",
    "{A_scene} with {objs}.",
)
_AT_PLACE = (
    "There is {a} {pos}.",
    "{A} can be seen {pos}.",
    "{Pos}, there is {a}.",
    "I can also see {a} {pos}.",
    "{Pos} is {a}.",
)
_RELATIVE = ("{A} is {rel} {the_ref}.", "{Rel} {the_ref} is {a}.", "{A} sits {rel} {the_ref}.")
_PAIRED = "{A} and {b} are {pair}."
_HIDDEN = ("{A} is partly hidden behind {ref}.", "{Ref} covers part of {a}.")
_FAINT = ("{A} is hard to make out {pos}.", "{Pos}, {a} is barely visible.")
_CLOSINGS = ("Nothing else stands out in the {scene}.", "That is all there is to see.")
_TEXTURE_WORDS = {"striped": ("striped",), "dotted": ("dotted", "spotted"), "outline": ("outlined", "hollow")}
_ROWS = (("top", "near the top"), ("middle",), ("bottom", "near the bottom"))


def salience(obj: Placement, image_size: int) -> float:
    """How noticeable an object is: its visible area, dimmed when low-contrast or drawn as an outline."""
    area = obj.box[2] * obj.box[3] * obj.visible / image_size**2
    return area * obj.contrast * (0.6 if obj.texture == "outline" else 1.0)


def _article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _centre(box: Box) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3] / 2


def grid_cell(box: Box, image_size: int) -> tuple[int, int]:
    """(column, row) of a box's centre on the 3x3 grid captions place objects by: 0 left/top .. 2 right/bottom."""
    cx, cy = (min(int(3 * c / image_size), 2) for c in _centre(box))
    return cx, cy


def _position(obj: Placement, image_size: int, scene: str, rng: np.random.Generator) -> str:
    """Where the object is, from its centre on a 3x3 grid ("in the top left corner of the kitchen", ...)."""
    cx, cy = grid_cell(obj.box, image_size)
    col = ("left", "middle", "right")[cx]
    if cy == 1 and cx == 1:
        return _pick(rng, ("in the middle", "in the center"))
    if cy == 1:
        return _pick(rng, (f"on the {col}", f"on the {col} side"))
    row = _ROWS[cy][0]
    if cx == 1:
        return _pick(rng, (f"at the {row}", _ROWS[cy][1]))
    corner = f"in the {row} {col} corner"
    return _pick(rng, (corner, f"{corner} of the {scene}", f"at the {row} {col}"))


def box_gap(a: Box, b: Box) -> float:
    """Distance between two (x, y, w, h) boxes (0 when they touch or overlap)."""
    (ax, ay, aw, ah), (bx, by, bw, bh) = a, b
    return max(bx - (ax + aw), ax - (bx + bw), by - (ay + ah), ay - (by + bh), 0.0)


def _relation(a: Placement, b: Placement, image_size: int, rng: np.random.Generator) -> str:
    """Where ``a`` is relative to ``b``: next to / to the left of / to the right of / above / below."""
    (ax, ay), (bx, by) = _centre(a.box), _centre(b.box)
    if box_gap(a.box, b.box) < 0.1 * image_size and rng.random() < 0.5:
        return _pick(rng, ("next to", "beside", "near"))
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def _pair_relation(a: Placement, b: Placement, image_size: int) -> str:
    (ax, ay), (bx, by) = _centre(a.box), _centre(b.box)
    gap = box_gap(a.box, b.box)
    if gap < 0.1 * image_size:
        return "side by side" if abs(ax - bx) >= abs(ay - by) else "one above the other"
    return "far apart" if gap > 0.35 * image_size else "not far from each other"


class _Writer:
    """One caption in progress: the scene name and nouns chosen for it, and which objects it has introduced."""

    def __init__(self, scene: str, objs: Sequence[Placement], image_size: int, rng: np.random.Generator):
        self.scene, self.objs, self.size, self.rng = scene, objs, image_size, rng
        self.scene_name = _pick(rng, SCENES[scene].names[:1] * 2 + SCENES[scene].names[1:])
        self.nouns = [_pick(rng, NOUNS[o.category][:1] * 2 + NOUNS[o.category][1:]) for o in objs]
        self.introduced: list[int] = []

    def phrase(self, i: int) -> str:
        """'a small striped cup' on first mention, 'the cup' afterwards."""
        if i in self.introduced:
            return f"the {self.nouns[i]}"
        self.introduced.append(i)
        obj, rng, words = self.objs[i], self.rng, []
        side = max(obj.box[2], obj.box[3]) / self.size
        if side >= 0.33 and rng.random() < 0.3:
            words.append(_pick(rng, ("large", "big")))
        elif side <= 0.2 and rng.random() < 0.4:
            words.append(_pick(rng, ("small", "tiny")))
        if obj.contrast < 1.0 and rng.random() < 0.5:
            words.append(_pick(rng, ("faint", "pale")))
        if obj.texture in _TEXTURE_WORDS and rng.random() < 0.35:
            words.append(_pick(rng, _TEXTURE_WORDS[obj.texture]))
        if rng.random() < 0.35:
            words.append(GLYPHS[obj.category].colour)
        return _article(" ".join([*words, self.nouns[i]]))

    def listing(self, items: Sequence[int]) -> str:
        parts = [self.phrase(i) for i in items]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    def opener(self, items: Sequence[int]) -> str:
        a_scene = _article(self.scene_name)
        template = _pick(self.rng, OPENERS)
        return template.format(scene=self.scene_name, a_scene=a_scene, A_scene=_cap(a_scene), objs=self.listing(items))

    def about(self, i: int) -> str:
        """One sentence introducing object ``i``: hidden-behind, faint, relative to a known object, or placed."""
        obj, rng = self.objs[i], self.rng
        pos = _position(obj, self.size, self.scene_name, rng)
        if obj.visible < OCCLUDED_BELOW and obj.occluder is not None and rng.random() < 0.7:
            a, ref = self.phrase(i), self.phrase(obj.occluder)
            return _pick(rng, _HIDDEN).format(A=_cap(a), a=a, ref=ref, Ref=_cap(ref))
        faint = obj.contrast < 1.0 or (obj.texture == "outline" and max(obj.box[2:]) < 0.25 * self.size)
        if faint and rng.random() < 0.5:
            a = self.phrase(i)
            return _pick(rng, _FAINT).format(A=_cap(a), a=a, pos=pos, Pos=_cap(pos))
        known = [k for k in self.introduced if k != i]
        if known and rng.random() < 0.5:
            ref = min(known, key=lambda k: box_gap(obj.box, self.objs[k].box))
            rel = _relation(obj, self.objs[ref], self.size, rng)
            a = self.phrase(i)
            return _pick(rng, _RELATIVE).format(A=_cap(a), a=a, rel=rel, Rel=_cap(rel), the_ref=self.phrase(ref))
        a = self.phrase(i)
        return _pick(rng, _AT_PLACE).format(A=_cap(a), a=a, pos=pos, Pos=_cap(pos))

    def pair(self, i: int, j: int) -> str:
        a, b = self.phrase(i), self.phrase(j)
        pair = _pair_relation(self.objs[i], self.objs[j], self.size)
        return _PAIRED.format(A=_cap(a), b=b, pair=pair)


def _compose(
    scene: str,
    objs: Sequence[Placement],
    mention: list[int],
    full: bool,
    image_size: int,
    rng: np.random.Generator,
) -> str:
    """Write one caption about ``mention`` (indices in salience order); ``full`` adds a closing sentence."""
    writer = _Writer(scene, objs, image_size, rng)
    lead = 1 if len(mention) > 3 or rng.random() < 0.5 else min(len(mention), 2)
    sentences = [writer.opener(mention[:lead])]
    rest = list(mention[lead:])
    while rest:
        i = rest.pop(0)
        if i in writer.introduced:
            continue
        if rest and rest[0] not in writer.introduced and rng.random() < 0.3:
            sentences.append(writer.pair(i, rest.pop(0)))
        else:
            sentences.append(writer.about(i))
    if len(mention) > 2 and rng.random() < 0.5:
        sentences.insert(int(rng.integers(1, len(sentences) + 1)), _pick(rng, SCENES[scene].remarks))
    if full and rng.random() < 0.4:
        sentences.append(_pick(rng, _CLOSINGS).format(scene=writer.scene_name))
    return " ".join(sentences)


def describe(
    scene: str, objs: Sequence[Placement], image_size: int, rng: np.random.Generator
) -> list[tuple[str, bool]]:
    """``CAPTIONS_PER_IMAGE`` (caption, detailed) pairs; the detailed one (at a random position) names every
    non-occluded object, the others name a salience-biased subset."""
    order = sorted(range(len(objs)), key=lambda i: -salience(objs[i], image_size))
    occluded = [o.visible < OCCLUDED_BELOW for o in objs]
    weak = [o.contrast < 1.0 or max(o.box[2], o.box[3]) < 0.2 * image_size for o in objs]
    full_at = int(rng.integers(CAPTIONS_PER_IMAGE))
    captions = []
    for k in range(CAPTIONS_PER_IMAGE):
        if k == full_at:
            mention = [i for i in order if not occluded[i] or rng.random() < 0.5]
        else:
            limit = _pick(rng, (2, 3, 3, 4, 6))
            chance = [max(0.25, 0.95 - 0.15 * rank) for rank in range(len(order))]
            keep = [
                i
                for rank, i in enumerate(order)
                if rng.random() < chance[rank] * (0.5 if weak[i] else 1.0) * (0.4 if occluded[i] else 1.0)
            ]
            mention = keep[:limit] or [next(i for i in order if not occluded[i])]
        captions.append((_compose(scene, objs, mention, k == full_at, image_size, rng), k == full_at))
    return captions
