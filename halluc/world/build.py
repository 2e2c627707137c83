"""Build a split of the world on disk in exact COCO format: instances, captions and PNG images.

Each image is a pure function of (seed, split, index, image_size): its generators are seeded with
``[seed, stream(split), index, k]``, so image ``i`` is the same whatever ``n`` is, and the files are
byte-identical across runs and output directories.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from halluc.errors import ConfigError, OutputLocationError
from halluc.world.captions import describe
from halluc.world.catalog import CATEGORIES, SCENES, category_ids
from halluc.world.layout import Placement, sample_layout
from halluc.world.render import render
from halluc.world.shapes import polygon, polygon_area

__all__ = [
    "MIN_VISIBLE",
    "SPLITS",
    "WORLD_VERSION",
    "SplitPaths",
    "build_split",
    "image_dir",
    "scene_types",
    "world_categories",
]

SPLITS = ("train", "val", "shift", "prior_free")
# seed stream per split (val differs from train only here) and image id base (ids never collide across splits)
_STREAM = {"train": 1, "val": 2, "shift": 3, "prior_free": 4}
_ID_BASE = {"train": 1_000_000, "val": 2_000_000, "shift": 3_000_000, "prior_free": 4_000_000}
_MAX_IMAGES = 999_999
MIN_VISIBLE = 0.25  # every object keeps at least this fraction of its pixels visible
_SIZE_RANGE = (32, 1024)
# What the generator draws; bump it with every change to the output (tests/test_world.py pins a digest per version),
# since built splits are cached under it. 2.0: up to 8 objects per image and longer descriptions (issue 15).
WORLD_VERSION = "2.0"
_LICENSE = {"id": 1, "name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"}


@dataclass(frozen=True)
class SplitPaths:
    """Where a built split lives: the two COCO JSON files and the image folder."""

    instances: Path
    captions: Path
    images: Path


def image_dir(root: Path, split: str) -> Path:
    """The folder holding a split's PNG images: ``<root>/images/<split>``."""
    return Path(root) / "images" / split


def world_categories() -> list[dict[str, Any]]:
    """The COCO category dicts (real id, name, supercategory) of every object the world draws."""
    return [dict(c) for c in CATEGORIES]


def scene_types() -> dict[str, list[str]]:
    """Scene type -> its typical categories, most frequent first (the co-occurrence prior of train/val)."""
    return {name: sorted(s.weights, key=lambda c: -s.weights[c]) for name, s in SCENES.items()}


def _check(split: str, n: int, seed: int, image_size: int) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown world split {split!r}; valid splits: {', '.join(SPLITS)}")
    if not 1 <= n <= _MAX_IMAGES:
        raise ConfigError(f"number of images must be between 1 and {_MAX_IMAGES}, got {n}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if not _SIZE_RANGE[0] <= image_size <= _SIZE_RANGE[1]:
        raise ConfigError(f"image_size must be between {_SIZE_RANGE[0]} and {_SIZE_RANGE[1]} px, got {image_size}")


def _annotation(ann_id: int, image_id: int, obj: Placement, cat_id: int) -> dict[str, Any]:
    """A COCO instance annotation; polygon, bbox and area describe the whole glyph (amodal)."""
    points = polygon(obj.shape, obj.box)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, y0 = min(xs), min(ys)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat_id,
        "bbox": [x0, y0, round(max(xs) - x0, 2), round(max(ys) - y0, 2)],
        "area": round(polygon_area(points), 2),
        "iscrowd": 0,
        "segmentation": [[v for p in points for v in p]],
        "visible": obj.visible,
        "contrast": obj.contrast,
        "texture": obj.texture,
    }


def _draw(split: str, image_size: int, seeds: list[int]) -> tuple[str, Image.Image, list[Placement]]:
    """Sample and render one image; a layout where an object keeps less than ``MIN_VISIBLE`` of its pixels
    is redrawn (from the same generators, so the image stays a pure function of ``seeds``)."""
    layout_rng, render_rng = np.random.default_rng([*seeds, 0]), np.random.default_rng([*seeds, 1])
    while True:
        scene, layout = sample_layout(split, image_size, layout_rng)
        picture, objs = render(scene, layout, image_size, render_rng)
        if min(o.visible for o in objs) >= MIN_VISIBLE:
            return scene, picture, objs


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file and an atomic rename, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputLocationError(f"cannot write {str(path)!r}: {exc.strerror}") from None


def build_split(split: str, n: int, out: Path, *, seed: int = 0, image_size: int = 64) -> SplitPaths:
    """Render ``n`` images of ``split`` into ``out`` and write their COCO instances and captions files."""
    _check(split, n, seed, image_size)
    out = Path(out)
    folder = image_dir(out, split)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputLocationError(f"cannot create output folder {str(folder)!r}: {exc.strerror}") from None
    ids = category_ids()
    images: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    captions: list[dict[str, Any]] = []
    for index in tqdm(range(n), desc=f"world {split}", unit="img", disable=None):
        image_id = _ID_BASE[split] + index + 1
        scene, picture, objs = _draw(split, image_size, [seed, _STREAM[split], index])
        file_name = f"world_{split}_{image_id:012d}.png"
        try:
            picture.save(folder / file_name, format="PNG")
        except OSError as exc:
            raise OutputLocationError(f"cannot write images to {str(folder)!r}: {exc.strerror}") from None
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": image_size,
                "height": image_size,
                "license": 1,
                "scene": scene,
            }
        )
        instances += [_annotation(image_id * 10 + k, image_id, obj, ids[obj.category]) for k, obj in enumerate(objs)]
        texts = describe(scene, objs, image_size, np.random.default_rng([seed, _STREAM[split], index, 2]))
        captions += [
            {"id": image_id * 10 + k, "image_id": image_id, "caption": text, "detailed": detailed}
            for k, (text, detailed) in enumerate(texts)
        ]
    info = {
        "description": f"halluc synthetic world, split {split}",
        "version": WORLD_VERSION,
        "split": split,
        "seed": seed,
        "image_size": image_size,
        "contributor": "halluc",
    }
    common = {"info": info, "licenses": [_LICENSE], "images": images}
    paths = SplitPaths(out / f"instances_{split}.json", out / f"captions_{split}.json", folder)
    _write_json(paths.instances, common | {"annotations": instances, "categories": world_categories()})
    _write_json(paths.captions, common | {"annotations": captions})
    return paths
