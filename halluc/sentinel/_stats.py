"""Statistics of a SENTINEL run: pair counts and the hallucination rate of sentences by position."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from halluc.records import read_records
from halluc.sentinel._store import IMAGES, PAIRS

__all__ = ["pair_stats"]

_JUDGED = ("hallucinated", "coherent", "exploratory", "uncertain")  # sentence kinds that mention an object


def pair_stats(run_dir: Path) -> dict[str, Any]:
    """Counts over a run directory; ``by_position[k]`` is over the distinct sentences sampled at sentence k.

    ``hallucination_rate`` there is hallucinated / sentences that mention at least one object.
    """
    images = read_records(Path(run_dir) / IMAGES)
    pairs = read_records(Path(run_dir) / PAIRS)
    done = [rec for rec in images if "error" not in rec]
    positions: dict[int, Counter[str]] = {}
    for rec in done:
        for step in rec["steps"]:
            counts = positions.setdefault(step["step"], Counter())
            counts.update({key: step[key] for key in (*_JUDGED, "n_pairs")})
            counts["images"] += 1
    by_position = []
    for step, counts in sorted(positions.items()):
        judged = sum(counts[k] for k in _JUDGED)
        by_position.append(
            {
                "step": step,
                "images": counts["images"],
                "sentences_with_objects": judged,
                "hallucinated": counts["hallucinated"],
                "hallucination_rate": counts["hallucinated"] / judged if judged else None,
                "pairs": counts["n_pairs"],
            }
        )
    return {
        "n_images": len(done),
        "n_errors": len(images) - len(done),
        "n_pairs": len(pairs),
        "pairs_by_type": dict(Counter(p["type"] for p in pairs)),
        "pairs_per_image": len(pairs) / len(done) if done else 0.0,
        "mean_sentences": sum(rec["n_sentences"] for rec in done) / len(done) if done else 0.0,
        "stop_reasons": dict(Counter(rec["stop_reason"] for rec in done)),
        "by_position": by_position,
    }
