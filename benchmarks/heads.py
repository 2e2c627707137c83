"""The heads job: per-(layer, head) VHD and image-attention mass averaged over an image set, into a run directory.

``<out>/heads.json`` holds the image-weighted mean :class:`interventions.HeadReport` (read by the dashboard's heads
page) and ``<out>/heads.png`` its heatmaps. Images are analysed in batches; each batch's means are weighted by its
number of images, so the result is the mean over every image whatever the batch size.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from halluc.defaults import DESCRIBE_PROMPT
from halluc.errors import ConfigError
from halluc.imagesets import ImageSet, load_image
from halluc.models import model_fingerprint
from halluc.runs import RunStore, config_hash
from interventions import HeadReport, analyse_heads

__all__ = ["HEATMAP", "REPORT", "HeadsResult", "mean_report", "run_heads"]

REPORT = "heads.json"
HEATMAP = "heads.png"


@dataclass(frozen=True)
class HeadsResult:
    """Where the run went and its averaged report."""

    store: RunStore
    report: HeadReport


def mean_report(weighted: Sequence[tuple[int, HeadReport]]) -> HeadReport:
    """The image-weighted mean of per-batch reports ``(n_images, report)``; ``images`` becomes their total."""
    if not weighted or any(n < 1 for n, _ in weighted):
        raise ConfigError(f"mean_report needs at least one (n_images >= 1, report) pair, got {len(weighted)} pairs")
    total = sum(n for n, _ in weighted)

    def mean(name: str) -> list[list[float]]:
        return (sum(n * np.asarray(getattr(report, name), dtype=float) for n, report in weighted) / total).tolist()

    return dataclasses.replace(weighted[0][1], images=total, vhd=mean("vhd"), image_attention=mean("image_attention"))


def run_heads(
    lvlm: Any,
    images: ImageSet,
    out: Path,
    *,
    prompt: str = DESCRIBE_PROMPT,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> HeadsResult:
    """Analyse every head on every image of ``images`` in batches; write the mean report and its heatmaps."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not images.image_ids:
        raise ConfigError(f"image set {images.name!r} holds no images to analyse")
    manifest = {"job": "heads", **model_fingerprint(lvlm), "images": images.describe(), "prompt": prompt}
    manifest["config_hash"] = config_hash(manifest)
    ids = list(images.image_ids)
    with RunStore.create(Path(out), manifest) as store:
        torch.manual_seed(seed)
        reports = []
        for start in tqdm(range(0, len(ids), batch_size), desc="analysing heads", unit="batch", disable=not progress):
            batch = [load_image(images.path(i)) for i in ids[start : start + batch_size]]
            reports.append((len(batch), analyse_heads(lvlm, batch, prompt)))
        report = mean_report(reports)
        store.write_artifact(REPORT, json.loads(report.to_json()))
        report.write_heatmap(store.path / HEATMAP)
        store.finish()
    return HeadsResult(store, report)
