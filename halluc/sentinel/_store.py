"""The SENTINEL output files: pairs.jsonl and images.jsonl, appended per finished image, resumable.

An image's pairs are appended first and its images.jsonl record last, so that record marks the image as done.
Opening a directory to resume rewrites both files (atomically) with only the complete records of done images:
pairs of an image that was cut off, and a record torn by a kill, disappear, and the image is generated again.
So a resumed run never holds duplicate pairs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from halluc.runs import read_jsonl

__all__ = ["IMAGES", "PAIRS", "PairWriter"]

PAIRS = "pairs.jsonl"
IMAGES = "images.jsonl"


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=str) + "\n"


def _rewrite(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` by ``records`` via a temp file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.writelines(_line(rec) for rec in records)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _append(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records, flushed and fsynced so a kill loses at most the record being written."""
    with path.open("a", encoding="utf-8") as fh:
        fh.writelines(_line(rec) for rec in records)
        fh.flush()
        os.fsync(fh.fileno())


class PairWriter:
    """Appends each finished image (its pairs, then its record); on open keeps only complete, done images."""

    def __init__(self, root: Path) -> None:
        self.pairs_path = Path(root) / PAIRS
        self.images_path = Path(root) / IMAGES
        images = list(read_jsonl(self.images_path))
        self.done: set[str] = {str(rec["image_id"]) for rec in images}
        pairs = [p for p in read_jsonl(self.pairs_path) if str(p["image_id"]) in self.done]
        _rewrite(self.images_path, images)
        _rewrite(self.pairs_path, pairs)

    def write(self, pairs: list[dict[str, Any]], image_record: dict[str, Any]) -> None:
        """Record one finished image: its pairs, then the record that marks it done."""
        _append(self.pairs_path, pairs)
        _append(self.images_path, [image_record])
        self.done.add(str(image_record["image_id"]))
