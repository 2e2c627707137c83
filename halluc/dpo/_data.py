"""SENTINEL pairs -> DPO rows: prompt = chat prompt + context, chosen / rejected = the next sentence only.

Rows use trl's vision preference format (``prompt``, ``chosen``, ``rejected``, ``images``). The prompt text is
rendered exactly as generation rendered it (``halluc.sentinel.render_prompt``), so the completions scored in
training are the tokens the model sampled after that context. Images stay file paths until a batch needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import ProcessorMixin

from halluc.errors import InputDataError
from halluc.records import read_records
from halluc.sentinel import PAIRS, continuation, render_prompt

__all__ = ["PAIR_FIELDS", "load_pairs", "preference_rows"]

PAIR_FIELDS = ("image_path", "question", "context", "y_win", "y_lose")  # what training reads from a pair


def load_pairs(sources: Sequence[Path], *, pair_types: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Pairs from SENTINEL run directories or pairs.jsonl files, optionally only the given ``type`` values."""
    pairs: list[dict[str, Any]] = []
    for source in sources:
        file = Path(source) / PAIRS if Path(source).is_dir() else Path(source)
        if not file.is_file():
            raise InputDataError(f"no SENTINEL pairs at {str(source)!r}: expected a run directory holding {PAIRS}")
        for n, pair in enumerate(read_records(file), 1):
            missing = [key for key in PAIR_FIELDS if key not in pair]
            if missing:
                raise InputDataError(f"{file}: pair {n} lacks the fields {missing}")
            if pair_types is None or pair.get("type") in pair_types:
                pairs.append(pair)
    if not pairs:
        raise InputDataError(f"no pairs to train on in {[str(s) for s in sources]} (types: {pair_types or 'all'})")
    return pairs


def preference_rows(pairs: Sequence[dict[str, Any]], processor: ProcessorMixin) -> list[dict[str, Any]]:
    """One trl preference row per pair; ``images`` holds the image file path (which must exist)."""
    missing = sorted({str(p["image_path"]) for p in pairs if not Path(p["image_path"]).is_file()})
    if missing:
        raise InputDataError(f"{len(missing)} pair images do not exist, e.g. {missing[:3]}")
    rows = []
    for pair in pairs:
        prompt = render_prompt(processor, pair["question"], pair["context"])
        rows.append(
            {
                "prompt": prompt,
                "chosen": continuation(prompt, pair["y_win"]),
                "rejected": continuation(prompt, pair["y_lose"]),
                "images": [str(pair["image_path"])],
            }
        )
    return rows
