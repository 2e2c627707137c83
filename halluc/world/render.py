"""Draw a layout: a scene-specific background, then glyphs (supersampled), measuring what stays visible.

Backgrounds are drawn at the final resolution (so they stay crisp); glyphs are drawn at ``SUPERSAMPLE`` times
the size and box-filtered down, so small glyphs keep their shape. Visibility is measured on the supersampled
grid from the pixels each glyph actually painted (an outline glyph only hides what its outline covers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw

from halluc.world.catalog import COLOURS, GLYPHS
from halluc.world.layout import Placement
from halluc.world.shapes import SHAPES

__all__ = ["SUPERSAMPLE", "render"]

SUPERSAMPLE = 4
_Rgb = tuple[int, int, int]


def _jitter(rgb: _Rgb, rng: np.random.Generator, spread: int) -> np.ndarray:
    """A colour shifted by up to ``spread`` per channel, so no two backgrounds are pixel-identical."""
    return np.asarray(rgb, np.float32) + rng.integers(-spread, spread + 1, 3)


def _grain(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Add luminance noise (a photo-like grain) and convert to uint8."""
    noise = rng.normal(0.0, sigma, img.shape[:2])[..., None]
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _kitchen(size: int, rng: np.random.Generator) -> np.ndarray:
    """Beige checkered floor tiles."""
    tile = max(2, round(rng.uniform(6, 10) * size / 64))
    ox, oy = rng.integers(0, tile, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    dark = (((xx + ox) // tile + (yy + oy) // tile) % 2).astype(bool)
    img = np.where(dark[..., None], _jitter((202, 182, 144), rng, 8), _jitter((230, 214, 178), rng, 8))
    return _grain(img, rng, 3)


def _street(size: int, rng: np.random.Generator) -> np.ndarray:
    """Grey asphalt with a pale sidewalk along the top and a dashed white lane line."""
    unit = size / 64
    img = np.broadcast_to(_jitter((86, 86, 92), rng, 8), (size, size, 3)).copy()
    walk = round(rng.uniform(0.14, 0.22) * size)
    img[:walk] = _jitter((162, 160, 152), rng, 6)
    img[walk : walk + max(1, round(unit))] = (58, 58, 62)
    lane = round(walk + (size - walk) * rng.uniform(0.45, 0.6))
    thick, dash, gap = max(1, round(1.5 * unit)), max(2, round(6 * unit)), max(2, round(4 * unit))
    on = (np.arange(size) + rng.integers(0, dash + gap)) % (dash + gap) < dash
    img[lane : lane + thick, on] = (232, 232, 226)
    return _grain(img, rng, 6)


def _park(size: int, rng: np.random.Generator) -> np.ndarray:
    """Speckled green grass under a band of pale blue sky."""
    img = np.broadcast_to(_jitter((80, 148, 60), rng, 10), (size, size, 3)).copy()
    blades = rng.random((size, size)) < 0.1
    img[blades] *= 0.72
    sky = round(rng.uniform(0.15, 0.25) * size)
    ramp = np.linspace(0.0, 1.0, max(sky, 1))[:, None, None]
    img[:sky] = (1 - ramp) * np.asarray((150, 190, 232)) + ramp * np.asarray((194, 220, 242))
    return _grain(img, rng, 5)


def _living_room(size: int, rng: np.random.Generator) -> np.ndarray:
    """Mauve striped wallpaper above a wooden plank floor."""
    unit = size / 64
    stripe = max(2, round(rng.uniform(3, 5) * unit))
    cols = ((np.arange(size) + rng.integers(0, 2 * stripe)) // stripe) % 2 == 1
    wall = np.where(cols[None, :, None], _jitter((134, 86, 108), rng, 8), _jitter((154, 104, 126), rng, 8))
    img = np.broadcast_to(wall, (size, size, 3)).copy()
    floor = size - round(rng.uniform(0.25, 0.35) * size)
    img[floor:] = _jitter((126, 88, 54), rng, 8)
    plank = max(2, round(5 * unit))
    img[floor::plank] = (98, 66, 40)
    return _grain(img, rng, 4)


_BACKGROUNDS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "kitchen": _kitchen,
    "street": _street,
    "park": _park,
    "living room": _living_room,
}


def _shade(colour: np.ndarray) -> np.ndarray:
    """The second tone of a striped/dotted glyph: lighter for dark colours, darker for light ones."""
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    return colour + 0.45 * (255 - colour) if luma < 90 else colour * 0.6


def _glyph_mask(obj: Placement, origin: tuple[int, int], extent: tuple[int, int], image_size: int) -> np.ndarray:
    """Boolean mask (supersampled, cropped to ``extent`` at ``origin``) of the pixels the glyph paints."""
    ss = SUPERSAMPLE
    x, y, w, h = obj.box
    pts = [((x + u * w) * ss - origin[0], (y + v * h) * ss - origin[1]) for u, v in SHAPES[obj.shape].points]
    mask = Image.new("1", extent, 0)
    draw = ImageDraw.Draw(mask)
    if obj.texture == "outline":
        draw.polygon(pts, outline=1, width=max(2, round(1.5 * ss * image_size / 64)))
    else:
        draw.polygon(pts, fill=1)
    return np.asarray(mask, dtype=bool)


def _texture(texture: str, colour: np.ndarray, origin: tuple[int, int], extent: tuple[int, int]) -> np.ndarray:
    """Per-pixel colours (h, w, 3) of a glyph's texture; stripes and dots are anchored to image coordinates."""
    ss = SUPERSAMPLE
    yy, xx = np.ogrid[origin[1] : origin[1] + extent[1], origin[0] : origin[0] + extent[0]]
    if texture == "striped":
        second = ((xx + yy) // round(1.5 * ss)) % 2 == 1
    elif texture == "dotted":
        period = 3 * ss
        second = ((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 <= (0.8 * ss) ** 2
    else:
        return np.broadcast_to(colour, (extent[1], extent[0], 3))
    return np.where(second[..., None], _shade(colour), colour)


def render(
    scene: str, objects: Sequence[Placement], image_size: int, rng: np.random.Generator
) -> tuple[Image.Image, list[Placement]]:
    """Draw the objects (in order, later on top) on the scene's background; return the image and the objects
    with ``visible`` (fraction of painted pixels left unhidden) and ``occluder`` (who hides most) filled in."""
    ss = SUPERSAMPLE
    background = _BACKGROUNDS[scene](image_size, rng)
    canvas = background.repeat(ss, axis=0).repeat(ss, axis=1)
    owner = np.full(canvas.shape[:2], -1, dtype=np.int8)
    painted: list[tuple[slice, slice, np.ndarray]] = []
    for index, obj in enumerate(objects):
        x, y, w, h = obj.box
        x0, y0, edge = int(x * ss), int(y * ss), canvas.shape[0]
        x1, y1 = min(edge, int(np.ceil((x + w) * ss)) + 1), min(edge, int(np.ceil((y + h) * ss)) + 1)
        mask = _glyph_mask(obj, (x0, y0), (x1 - x0, y1 - y0), image_size)
        colour = np.asarray(COLOURS[GLYPHS[obj.category].colour], np.float32)
        if obj.contrast < 1.0:
            under = background[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))].reshape(-1, 3).mean(0)
            colour = under + obj.contrast * (colour - under)
        colours = _texture(obj.texture, colour, (x0, y0), (x1 - x0, y1 - y0))
        rows, cols = slice(y0, y1), slice(x0, x1)
        canvas[rows, cols][mask] = np.clip(colours[mask], 0, 255).astype(np.uint8)
        owner[rows, cols][mask] = index
        painted.append((rows, cols, mask))
    seen = []
    for index, (obj, (rows, cols, mask)) in enumerate(zip(objects, painted, strict=True)):
        owners = owner[rows, cols][mask]
        hidden = owners[owners != index]
        occluder = int(np.bincount(hidden).argmax()) if hidden.size else None
        visible = float(owners.size - hidden.size) / max(owners.size, 1)
        seen.append(replace(obj, visible=round(visible, 3), occluder=occluder))
    return Image.fromarray(canvas).reduce(ss), seen
