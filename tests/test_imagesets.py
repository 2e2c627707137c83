"""Image loading: one function, one error policy (InputDataError naming the path)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from halluc.errors import InputDataError
from halluc.imagesets import load_image, resolve_images
from halluc.world import WORLD_VERSION


def test_load_image_gives_rgb_and_names_bad_paths(tmp_path: Path) -> None:
    Image.new("L", (5, 3), color=7).save(tmp_path / "grey.png")
    image = load_image(tmp_path / "grey.png")
    assert (image.mode, image.size) == ("RGB", (5, 3))
    with pytest.raises(InputDataError, match=r"image not found: .*missing\.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputDataError, match=r"cannot read image .*bad\.png"):
        load_image(str(tmp_path / "bad.png"))


def test_toy_splits_are_cached_per_world_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("halluc.imagesets.TOY_SPLITS", {"val": (3, 0)})
    monkeypatch.setenv("HALLUC_CACHE", str(tmp_path))
    stale = tmp_path / "world" / "instances_val.json"  # where splits of the unversioned world 1.0 were cached
    stale.parent.mkdir()
    stale.write_text("{}")
    images = resolve_images("toy:val")
    assert images.instances == tmp_path / f"world-{WORLD_VERSION}" / "instances_val.json"
    assert len(images.image_ids) == 3 and stale.read_text() == "{}"
