"""Image loading: one function, one error policy (InputDataError naming the path)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from halluc.errors import InputDataError
from halluc.imagesets import load_image


def test_load_image_gives_rgb_and_names_bad_paths(tmp_path: Path) -> None:
    Image.new("L", (5, 3), color=7).save(tmp_path / "grey.png")
    image = load_image(tmp_path / "grey.png")
    assert (image.mode, image.size) == ("RGB", (5, 3))
    with pytest.raises(InputDataError, match=r"image not found: .*missing\.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputDataError, match=r"cannot read image .*bad\.png"):
        load_image(str(tmp_path / "bad.png"))
