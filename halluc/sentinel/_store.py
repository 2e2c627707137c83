"""The SENTINEL output files: pairs.jsonl and images.jsonl, appended per finished image, resumable.

An image's pairs are appended first and its images.jsonl record last, so that record marks the image as done.
Opening a directory to resume rewrites both files (atomically) with only the records of done images: pairs of an
image that was cut off, and a torn last line (see :mod:`halluc.records`), disappear, and the image is generated
again. So a resumed run never holds duplicate pairs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from halluc.records import append_records, read_records, write_records

__all__ = ["IMAGES", "PAIRS", "PairWriter"]

PAIRS = "pairs.jsonl"
IMAGES = "images.jsonl"


class PairWriter:
    """Appends each finished image (its pairs, then its record); on open keeps only complete, done images."""

    def __init__(self, root: Path) -> None:
        self.pairs_path = Path(root) / PAIRS
        self.images_path = Path(root) / IMAGES
        images = read_records(self.images_path)
        self.done: set[str] = {str(rec["image_id"]) for rec in images}
        pairs = [p for p in read_records(self.pairs_path) if str(p["image_id"]) in self.done]
        write_records(self.images_path, images)
        write_records(self.pairs_path, pairs)

    def write(self, pairs: list[dict[str, Any]], image_record: dict[str, Any]) -> None:
        """Record one finished image: its pairs, then the record that marks it done."""
        append_records(self.pairs_path, pairs)
        append_records(self.images_path, [image_record])
        self.done.add(str(image_record["image_id"]))
