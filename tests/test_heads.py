"""The heads job (benchmarks.heads): the image-weighted mean of batch reports and the run it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.heads import HEATMAP, REPORT, mean_report, run_heads
from halluc.errors import ConfigError
from halluc.imagesets import resolve_images
from halluc.models import load_lvlm, model_fingerprint
from interventions import HeadReport, analyse_heads


def _report(images: int, value: float) -> HeadReport:
    return HeadReport("m", "p", images, vhd=[[value, 2 * value]], image_attention=[[value / 10, 0.5]])


def test_mean_report_weights_each_batch_by_its_images() -> None:
    mean = mean_report([(1, _report(1, 1.0)), (3, _report(3, 5.0))])
    assert mean.images == 4 and (mean.model, mean.prompt) == ("m", "p")
    assert np.allclose(mean.vhd, [[4.0, 8.0]])  # (1 * 1 + 3 * 5) / 4, not the unweighted 3
    assert np.allclose(mean.image_attention, [[0.4, 0.5]])
    with pytest.raises(ConfigError, match="at least one"):
        mean_report([])


def test_run_heads_writes_the_mean_over_all_images(tiny_dir: Path, tmp_path: Path) -> None:
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(image_dir / f"{i}.png")
    images = resolve_images(str(image_dir))
    lvlm = load_lvlm(tiny_dir)
    result = run_heads(lvlm, images, tmp_path / "run", prompt="Describe.", batch_size=2, progress=False)
    whole = analyse_heads(lvlm, [Image.open(image_dir / f"{i}.png").convert("RGB") for i in range(3)], "Describe.")
    written = json.loads((result.store.path / REPORT).read_text())
    assert written["images"] == 3 and np.allclose(written["vhd"], whole.vhd, rtol=1e-4)
    assert np.allclose(written["image_attention"], whole.image_attention, rtol=1e-4)
    assert (result.store.path / HEATMAP).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((result.store.path / "manifest.json").read_text())
    assert manifest["job"] == "heads" and manifest["status"] == "finished"
    assert manifest["weights_sha256"] == model_fingerprint(lvlm)["weights_sha256"] is not None
