"""Yes/no questions the world's images determine, as pairs (one yes, one no): existence, count, position, colour
and contact; and the world as an AMBER-format metadata set.

The world knows every object's category, box, colour, visibility and contrast, so the answers are ground truth,
but only where the picture itself settles them:

* existence: yes for an object that is not occluded (``captions.OCCLUDED_BELOW``), no for an absent category of
  the scene's own list when there is one (the prior's pull, as AMBER's ``hallu`` words), else any absent one;
* count ("Are there three objects ...?"): only in images with no occluded object (categories never repeat within
  an image, so the total is the count the image determines); no asks one more or one fewer;
* position: the 3x3 grid of the captions (``captions.grid_cell``) on the object's box centre, for a
  non-occluded object in an outer column (left/right side) or else an outer row (top/bottom), its centre at least
  ``_MARGIN`` of the image away from the cell's inner border; no asks the opposite side;
* colour: a non-occluded, full-contrast object (a faint one's colour is blended toward the background); no asks
  another glyph colour;
* contact: yes for an occluded object and the later-drawn object overlapping its box most, no for two objects at
  least ``_APART`` of the image apart (the captions' "next to" distance).

Every draw comes from ``random.Random`` seeded with (seed, image id, kind), so a set is reproducible.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from halluc.errors import InputDataError
from halluc.prompts import existence_question
from halluc.world.build import scene_types
from halluc.world.captions import OCCLUDED_BELOW, box_gap, grid_cell
from halluc.world.catalog import COLOURS, GLYPHS, NOUNS
from halluc.world.shapes import Box

__all__ = [
    "KINDS",
    "MME_SUBSETS",
    "Question",
    "WorldImage",
    "WorldObject",
    "amber_set",
    "load_world_images",
    "mme_questions",
    "question_pair",
]

KINDS = ("existence", "count", "position", "colour", "contact")
MME_SUBSETS = ("existence", "count", "position", "colour")  # MME's hallucination subsets (colour: MME's "color")
_MARGIN = 0.03  # position: the centre keeps this fraction of the image from the cell border it is asked about
_APART = 0.1  # contact "no": the boxes are at least this fraction of the image apart
_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven")


@dataclass(frozen=True)
class WorldObject:
    """One object of a world image as its instances file records it (``box`` is the COCO bbox, in draw order)."""

    category: str
    box: Box
    visible: float
    contrast: float

    @property
    def clear(self) -> bool:
        """Not occluded: the image shows enough of it to ask about it."""
        return self.visible >= OCCLUDED_BELOW


@dataclass(frozen=True)
class WorldImage:
    id: int
    file_name: str
    size: int
    scene: str
    objects: tuple[WorldObject, ...]


@dataclass(frozen=True)
class Question:
    """One yes/no question about one image; ``kind`` is one of ``KINDS``."""

    image_id: int
    file_name: str
    kind: str
    text: str
    label: bool


def load_world_images(instances: Path, image_ids: Sequence[int] | None = None) -> list[WorldImage]:
    """The images of a world instances file (those of ``image_ids``, in that order, when given)."""
    try:
        data = json.loads(Path(instances).read_text(encoding="utf-8"))
        names = {c["id"]: c["name"] for c in data["categories"]}
        objects: dict[int, list[tuple[int, WorldObject]]] = {}
        for ann in data["annotations"]:
            obj = WorldObject(names[ann["category_id"]], tuple(ann["bbox"]), ann["visible"], ann["contrast"])
            objects.setdefault(ann["image_id"], []).append((ann["id"], obj))
        images = {
            img["id"]: WorldImage(img["id"], img["file_name"], img["width"], img["scene"],
                                  tuple(o for _, o in sorted(objects.get(img["id"], []), key=lambda p: p[0])))
            for img in data["images"]
        }  # fmt: skip
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputDataError(f"{str(instances)!r} is no world instances file (halluc world build): {exc!r}") from None
    ids = list(images) if image_ids is None else list(image_ids)
    missing = [i for i in ids if i not in images]
    if missing:
        raise InputDataError(f"{len(missing)} image ids are not in {str(instances)!r}, e.g. {missing[:3]}")
    return [images[i] for i in ids]


def _absent(image: WorldImage, rng: random.Random) -> str:
    """An absent category: one of the scene's typical ones when any is absent (the prior's pull), else any."""
    present = {o.category for o in image.objects}
    typical = [c for c in scene_types()[image.scene] if c not in present]
    return rng.choice(typical or [c for c in GLYPHS if c not in present])


def _existence(image: WorldImage, rng: random.Random) -> tuple[str, str] | None:
    clear = [o for o in image.objects if o.clear]
    if not clear:
        return None
    return existence_question(rng.choice(clear).category), existence_question(_absent(image, rng))


def _count_text(n: int) -> str:
    return "Is there one object in the image?" if n == 1 else f"Are there {_NUMBERS[n - 1]} objects in the image?"


def _count(image: WorldImage, rng: random.Random) -> tuple[str, str] | None:
    n = len(image.objects)
    if not all(o.clear for o in image.objects) or not 0 < n < len(_NUMBERS):
        return None
    wrong = n + 1 if n == 1 or rng.random() < 0.5 else n - 1
    return _count_text(n), _count_text(wrong)


def _side(obj: WorldObject, size: int) -> tuple[str, str] | None:
    """(true side, opposite side) of an object on the captions' 3x3 grid, None when central or near a border."""
    col, row = grid_cell(obj.box, size)
    centre = (obj.box[0] + obj.box[2] / 2, obj.box[1] + obj.box[3] / 2)
    axes = ((0, col, ("on the left side", "on the right side")), (1, row, ("at the top", "at the bottom")))
    for axis, cell, sides in axes:
        if cell == 1:
            continue
        inner = size / 3 if cell == 0 else 2 * size / 3
        if abs(centre[axis] - inner) < _MARGIN * size:
            return None
        return sides if cell == 0 else sides[::-1]
    return None


def _position(image: WorldImage, rng: random.Random) -> tuple[str, str] | None:
    placed = [(o, side) for o in image.objects if o.clear and (side := _side(o, image.size)) is not None]
    if not placed:
        return None
    obj, (true, opposite) = rng.choice(placed)
    return (f"Is the {obj.category} {true} of the image?", f"Is the {obj.category} {opposite} of the image?")


def _colour(image: WorldImage, rng: random.Random) -> tuple[str, str] | None:
    vivid = [o for o in image.objects if o.clear and o.contrast >= 1.0]
    if not vivid:
        return None
    obj = rng.choice(vivid)
    true = GLYPHS[obj.category].colour
    wrong = rng.choice([c for c in COLOURS if c != true])
    return f"Is the {obj.category} {true} in the image?", f"Is the {obj.category} {wrong} in the image?"


def _overlap(a: Box, b: Box) -> float:
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def _contact_text(a: WorldObject, b: WorldObject) -> str:
    return f"Is there direct contact between the {a.category} and the {b.category} in the image?"


def _contact(image: WorldImage, rng: random.Random) -> tuple[str, str] | None:
    objs = image.objects
    touching = []
    for i, hidden in enumerate(objs):
        later = [o for o in objs[i + 1 :] if _overlap(o.box, hidden.box) > 0]
        if not hidden.clear and later:
            touching.append((max(later, key=lambda o: _overlap(o.box, hidden.box)), hidden))
    apart = [(a, b) for i, a in enumerate(objs) for b in objs[i + 1 :] if box_gap(a.box, b.box) >= _APART * image.size]
    if not touching or not apart:
        return None
    return _contact_text(*rng.choice(touching)), _contact_text(*rng.choice(apart))


_BUILDERS = {"existence": _existence, "count": _count, "position": _position, "colour": _colour, "contact": _contact}


def question_pair(image: WorldImage, kind: str, seed: int = 0) -> tuple[Question, Question] | None:
    """(yes question, no question) of ``kind`` about ``image``, or None when the image does not settle one."""
    texts = _BUILDERS[kind](image, random.Random(f"{seed}:{image.id}:{kind}"))
    if texts is None:
        return None
    yes, no = texts
    return Question(image.id, image.file_name, kind, yes, True), Question(image.id, image.file_name, kind, no, False)


def mme_questions(images: Sequence[WorldImage], seed: int = 0) -> list[Question]:
    """MME-style pairs: for each subset and image, its yes and its no question (subset by subset, image order)."""
    return [q for kind in MME_SUBSETS for image in images for q in question_pair(image, kind, seed) or ()]


# AMBER's object word for each category: its first one-word noun in the captions, else the name's last word; the
# captions' other one-word nouns are its associations (relation.json).
def _amber_word(category: str) -> str:
    single = [n for n in NOUNS[category] if " " not in n]
    return single[0] if single and " " not in category else category.split()[-1]


def _associations(category: str) -> list[str]:
    word = _amber_word(category)
    return [n for n in NOUNS[category] if " " not in n and n != word]


_AMBER_TYPES = {"existence": "discriminative-hallucination", "colour": "discriminative-attribute-state",
                "count": "discriminative-attribute-number", "contact": "discriminative-relation"}  # fmt: skip


def amber_set(
    images: Sequence[WorldImage], seed: int = 0, prompt: str = "Describe this image."
) -> tuple[list[dict[str, Any]], dict[str, list[str]], list[dict[str, Any]]]:
    """(annotations, relation, queries) of a world image set in AMBER's format: one description query per image
    (truth: its objects; hallu: the scene's typical absent ones), then the yes/no pairs of each kind."""
    annotations: list[dict[str, Any]] = []
    queries: list[dict[str, Any]] = []
    typical = scene_types()
    for image in images:
        present = [o.category for o in image.objects]
        hallu = [_amber_word(c) for c in typical[image.scene] if c not in present]
        annotations.append({"id": len(annotations) + 1, "type": "generative",
                            "truth": [_amber_word(c) for c in present], "hallu": hallu})  # fmt: skip
        queries.append({"id": len(queries) + 1, "image": image.file_name, "query": prompt})
    for kind, amber_type in _AMBER_TYPES.items():
        for image in images:
            for q in question_pair(image, kind, seed) or ():
                annotations.append(
                    {"id": len(annotations) + 1, "type": amber_type, "truth": "yes" if q.label else "no"}
                )
                queries.append({"id": len(queries) + 1, "image": image.file_name, "query": q.text})
    return annotations, {_amber_word(c): _associations(c) for c in GLYPHS}, queries
