"""The world's vocabulary as data: COCO categories, their glyphs, scene types, priors and caption words.

Every choice that shapes the language prior lives here, so the sampler, the renderer and the captioner only
read tables. Glyph identity is shape + colour (unique per category); texture varies per instance.
"""

from __future__ import annotations

from dataclasses import dataclass

from halluc.objects.coco import category_by_name

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "GLYPHS",
    "NOUNS",
    "SCENES",
    "Glyph",
    "Scene",
    "category_ids",
]

# Glyph colours (RGB) with the English word captions use. No orange: "orange" is a COCO category.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (222, 30, 36),
    "blue": (36, 78, 228),
    "yellow": (250, 218, 36),
    "purple": (128, 40, 182),
    "black": (18, 18, 22),
    "white": (248, 248, 248),
    "cyan": (30, 214, 226),
    "pink": (255, 108, 204),
}


@dataclass(frozen=True)
class Glyph:
    """How a category is drawn: a shape from ``render.SHAPES``, a colour from ``COLOURS``, a size class."""

    shape: str
    colour: str
    size: str  # "s", "m" or "l": the range of the glyph's longer side (see sampling.SIZE_RANGES)


# Shapes repeat across categories only with clearly different colours; within a scene every shape is distinct.
GLYPHS: dict[str, Glyph] = {
    # kitchen (light beige tiles)
    "dining table": Glyph("wide_bar", "purple", "l"),
    "cup": Glyph("disc", "black", "s"),
    "fork": Glyph("tall_bar", "black", "s"),
    "knife": Glyph("arrow", "blue", "s"),
    "spoon": Glyph("tee", "pink", "s"),
    "bowl": Glyph("dome", "cyan", "m"),
    "bottle": Glyph("trapezoid", "red", "m"),
    # street (grey asphalt, pale sidewalk)
    "car": Glyph("square", "cyan", "m"),
    "bus": Glyph("wide_bar", "yellow", "l"),
    "truck": Glyph("ell", "white", "l"),
    "person": Glyph("diamond", "pink", "m"),
    "bicycle": Glyph("cross", "yellow", "m"),
    "traffic light": Glyph("tall_bar", "red", "s"),
    "stop sign": Glyph("octagon", "red", "s"),
    # park (grass, sky band)
    "dog": Glyph("hexagon", "yellow", "m"),
    "frisbee": Glyph("disc", "white", "s"),
    "bench": Glyph("wide_bar", "red", "l"),
    "bird": Glyph("tri_down", "black", "s"),
    "kite": Glyph("tri_up", "blue", "m"),
    "sports ball": Glyph("star", "purple", "s"),
    # living room (striped wallpaper, wooden floor)
    "couch": Glyph("dome", "yellow", "l"),
    "tv": Glyph("square", "black", "l"),
    "remote": Glyph("tall_bar", "white", "s"),
    "cat": Glyph("star", "white", "m"),
    "chair": Glyph("ell", "cyan", "m"),
    "book": Glyph("trapezoid", "blue", "s"),
    "potted plant": Glyph("tri_up", "yellow", "m"),
}


@dataclass(frozen=True)
class Scene:
    """A scene type: its object list with sampling weights, its typical pairs, names and background sentences."""

    weights: dict[str, float]  # category -> relative frequency of being drawn for an in-scene slot
    pairs: tuple[tuple[str, str], ...]  # typical companions: drawing one pulls in the other
    names: tuple[str, ...]  # how a caption names the scene (first entry = canonical)
    remarks: tuple[str, ...]  # object-free sentences that describe the (always present) background


SCENES: dict[str, Scene] = {
    "kitchen": Scene(
        weights={
            "dining table": 3.0,
            "cup": 3.0,
            "fork": 2.5,
            "knife": 2.0,
            "bowl": 2.0,
            "bottle": 1.5,
            "spoon": 1.5,
        },
        pairs=(("fork", "knife"), ("spoon", "bowl"), ("cup", "bottle")),
        names=("kitchen", "small kitchen", "bright kitchen"),
        remarks=(
            "The floor is covered in checkered tiles.",
            "The tiles are a warm beige colour.",
            "It looks like a meal is about to be served.",
        ),
    ),
    "street": Scene(
        weights={
            "car": 3.5,
            "person": 3.0,
            "traffic light": 2.0,
            "bus": 1.5,
            "truck": 1.5,
            "bicycle": 1.5,
            "stop sign": 1.0,
        },
        pairs=(("person", "bicycle"), ("car", "traffic light"), ("bus", "truck")),
        names=("street", "city street", "busy street"),
        remarks=(
            "The road is grey with a dashed white line.",
            "A pale sidewalk runs along the road.",
            "It looks like a busy part of town.",
        ),
    ),
    "park": Scene(
        weights={
            "person": 3.0,
            "dog": 3.0,
            "bench": 2.0,
            "bird": 2.0,
            "frisbee": 1.5,
            "kite": 1.5,
            "sports ball": 1.0,
        },
        pairs=(("dog", "frisbee"), ("person", "kite"), ("bench", "bird")),
        names=("park", "grassy park", "sunny park"),
        remarks=(
            "The grass is a bright green.",
            "A pale blue sky is visible at the top.",
            "It seems like a nice day to be outside.",
        ),
    ),
    "living room": Scene(
        weights={
            "couch": 3.0,
            "tv": 3.0,
            "chair": 2.0,
            "potted plant": 1.5,
            "remote": 1.5,
            "cat": 1.5,
            "book": 1.5,
        },
        pairs=(("tv", "remote"), ("couch", "cat"), ("chair", "book")),
        names=("living room", "cozy living room", "quiet living room"),
        remarks=(
            "The wall has striped wallpaper.",
            "The floor is made of wood.",
            "It looks like a cozy place to relax.",
        ),
    ),
}

# Caption nouns per category, all taken from the official CHAIR synonym list (first entry = canonical).
NOUNS: dict[str, tuple[str, ...]] = {
    "person": ("person", "man", "woman", "child", "lady", "guy", "kid"),
    "bicycle": ("bicycle", "bike"),
    "car": ("car", "automobile", "sedan", "van", "taxi"),
    "bus": ("bus", "minibus"),
    "truck": ("truck", "pickup", "lorry"),
    "traffic light": ("traffic light", "stoplight", "traffic signal"),
    "stop sign": ("stop sign",),
    "bench": ("bench",),
    "bird": ("bird", "pigeon", "sparrow"),
    "cat": ("cat", "kitten", "tabby"),
    "dog": ("dog", "puppy", "pup", "doggy"),
    "frisbee": ("frisbee",),
    "sports ball": ("ball", "sports ball"),
    "kite": ("kite",),
    "bottle": ("bottle",),
    "cup": ("cup",),
    "fork": ("fork",),
    "knife": ("knife",),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "chair": ("chair", "stool"),
    "couch": ("couch", "sofa", "loveseat", "settee"),
    "potted plant": ("houseplant",),  # reference CHAIR often lemmatises "potted" to "pot" and misses the phrase
    "dining table": ("table", "dining table"),
    "tv": ("tv", "television", "monitor"),
    "remote": ("remote",),
    "book": ("book",),
}


# Real COCO ids, names and supercategories of the categories the world draws, in id order.
CATEGORIES: tuple[dict[str, int | str], ...] = tuple(
    {"id": c.id, "name": c.name, "supercategory": c.supercategory}
    for c in sorted((category_by_name(name) for name in GLYPHS), key=lambda c: c.id)
)


def category_ids() -> dict[str, int]:
    """Map category name -> real COCO id, for the categories the world uses."""
    return {str(c["name"]): int(c["id"]) for c in CATEGORIES}
