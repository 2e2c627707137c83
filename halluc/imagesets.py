"""Image sets: an explicit, ordered list of image ids with their files and (optional) COCO annotations.

Subsets are always explicit id lists (a file of ids, one per line), never directory order. ``toy:<split>`` names
a split of the embedded synthetic world, built deterministically into the cache on first use.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from halluc.errors import ConfigError, InputDataError

__all__ = ["TOY_SPLITS", "ImageSet", "cache_dir", "load_image", "read_id_list", "resolve_images", "toy_world_root"]

# Size and seed of each embedded-world split that commands evaluate on (the train split is built by the trainer).
TOY_SPLITS: dict[str, tuple[int, int]] = {"val": (1000, 0), "shift": (1000, 0)}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def cache_dir() -> Path:
    """Where halluc caches built data: ``$HALLUC_CACHE`` or ``~/.cache/halluc``."""
    return Path(os.environ.get("HALLUC_CACHE", Path.home() / ".cache" / "halluc"))


@dataclass(frozen=True)
class ImageSet:
    """Ordered image ids, where their files are, and the COCO files that describe them (when known)."""

    name: str
    image_dir: Path
    image_ids: tuple[int | str, ...]
    file_names: dict[int | str, str]
    instances: Path | None = None
    captions: Path | None = None

    def path(self, image_id: int | str) -> Path:
        return self.image_dir / self.file_names[image_id]

    def describe(self) -> dict[str, object]:
        """Manifest entry: where the images and annotations came from and which ids were used."""
        return {
            "name": self.name,
            "image_dir": str(self.image_dir),
            "instances": str(self.instances) if self.instances else None,
            "captions": str(self.captions) if self.captions else None,
            "n_images": len(self.image_ids),
        }


def read_id_list(path: Path) -> list[str]:
    """Read an id-list file (one id per line; ``#`` comments allowed), in file order."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputDataError(f"cannot read image-id list {str(path)!r}: {exc.strerror}") from None
    return [tok for tok in (line.split("#", 1)[0].strip() for line in lines) if tok]


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB; a missing or unreadable file is an InputDataError naming the path."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise InputDataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputDataError(f"cannot read image {path}: {exc}") from None


def toy_world_root() -> Path:
    """Where the embedded world's splits are built, one folder per world version (a newer generator never reads
    splits an older one cached)."""
    from halluc.world import WORLD_VERSION

    return cache_dir() / f"world-{WORLD_VERSION}"


def _toy_split(split: str) -> tuple[Path, Path, Path]:
    """Build (once) and return (image_dir, instances, captions) of an embedded-world split."""
    from halluc.world import build_split, image_dir

    if split not in TOY_SPLITS:
        raise ConfigError(f"unknown toy split {split!r}; valid: {', '.join(f'toy:{s}' for s in TOY_SPLITS)}")
    n, seed = TOY_SPLITS[split]
    root = toy_world_root()
    instances, captions = root / f"instances_{split}.json", root / f"captions_{split}.json"
    if not (instances.exists() and captions.exists()):
        build_split(split, n, root, seed=seed)
    return image_dir(root, split), instances, captions


def _coco_file_names(instances: Path) -> dict[int | str, str]:
    try:
        data = json.loads(Path(instances).read_text(encoding="utf-8"))
        return {img["id"]: img["file_name"] for img in data["images"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputDataError(f"cannot read COCO annotations {str(instances)!r}: {exc}") from None


def resolve_images(
    spec: str,
    *,
    instances: Path | None = None,
    captions: Path | None = None,
    ids_file: Path | None = None,
    limit: int | None = None,
) -> ImageSet:
    """Resolve ``--images`` (``toy:val``, ``toy:shift`` or an image directory) into an ordered ``ImageSet``."""
    if spec.startswith("toy:"):
        ignored = [flag for flag, value in (("--annotations", instances), ("--captions", captions)) if value]
        if ignored:
            raise ConfigError(
                f"{' and '.join(ignored)} cannot be used with --images {spec}: the toy world brings its own "
                "annotations; leave them out, or pass an image directory with --images"
            )
        image_dir, instances, captions = _toy_split(spec.split(":", 1)[1])
    else:
        image_dir = Path(spec)
        if not image_dir.is_dir():
            raise InputDataError(f"image directory {spec!r} does not exist (or use toy:val / toy:shift)")
    if instances is not None:
        file_names = _coco_file_names(instances)
    else:
        files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        file_names = {p.stem: p.name for p in files}
    if ids_file:
        by_text = {str(k): k for k in file_names}
        unknown = [i for i in read_id_list(ids_file) if i not in by_text]
        if unknown:
            raise InputDataError(f"{len(unknown)} ids of {str(ids_file)!r} are not in {spec!r}, e.g. {unknown[:3]}")
        ids = [by_text[i] for i in read_id_list(ids_file)]
    else:
        ids = sorted(file_names, key=lambda k: (isinstance(k, str), k))
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {limit}")
        ids = ids[:limit]
    return ImageSet(spec, image_dir, tuple(ids), file_names, instances, captions)
