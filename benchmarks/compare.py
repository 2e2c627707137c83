"""System-vs-baseline differences of CHAIR metrics on the same images, with bootstrap CIs over images.

Mean ± std over a few seeded subsets says how much a metric moves between subsets, not whether a method beats the
baseline. Here every image is scored by both systems, so the difference of each ratio metric (sums over captions,
as CHAIR aggregates) is taken on the same images and its 95% percentile CI comes from resampling images
(:func:`benchmarks.mechanisms.bootstrap_by_image`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from benchmarks.mechanisms import Interval, bootstrap_by_image
from halluc.errors import InputDataError

__all__ = ["RATIOS", "caption_counts", "paired_difference"]

# metric -> (numerator, denominator) of the per-caption counts it sums
RATIOS: dict[str, tuple[str, str]] = {
    "CHAIR_i": ("hallucinated", "mentions"),
    "CHAIR_i_distinct": ("distinct_hallucinated", "distinct"),
    "recall": ("covered", "gt"),
}


def caption_counts(detail: Mapping) -> dict[str, int]:
    """The counts CHAIR_i, distinct CHAIR_i and recall sum, from one ``chair_details.json`` record."""
    mentions = detail["mentions"]
    generated = {m["category"] for m in mentions}
    return {
        "mentions": len(mentions),
        "hallucinated": sum(bool(m["hallucinated"]) for m in mentions),
        "distinct": len(generated),
        "distinct_hallucinated": len({m["category"] for m in mentions if m["hallucinated"]}),
        "gt": len(detail["gt_objects"]),
        "covered": len(generated & set(detail["gt_objects"])),
    }


def paired_difference(
    baseline: Sequence[Mapping], system: Sequence[Mapping], metric: str, *, n_resamples: int = 2000, seed: int = 0
) -> Interval:
    """``metric`` of ``system`` minus that of ``baseline`` (chair_details records of the same images, in the same
    order), with a 95% bootstrap CI resampling images."""
    if metric not in RATIOS:
        raise InputDataError(f"no paired difference for {metric!r}; available: {', '.join(RATIOS)}")
    if [d["image_id"] for d in baseline] != [d["image_id"] for d in system]:
        raise InputDataError("paired difference needs the same images in the same order for both systems")
    top, bottom = RATIOS[metric]
    counts = []
    for records in (baseline, system):
        per_caption = [caption_counts(d) for d in records]
        counts.append(np.array([[c[top], c[bottom]] for c in per_caption], dtype=float))

    def difference(images: np.ndarray) -> float:
        (b_top, b_bottom), (s_top, s_bottom) = (c[images].sum(axis=0) for c in counts)
        return s_top / s_bottom - b_top / b_bottom if b_bottom and s_bottom else float("nan")

    return bootstrap_by_image(len(baseline), difference, n_resamples=n_resamples, seed=seed)
