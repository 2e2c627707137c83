"""Measure CHAIR scoring throughput on the 1,500 real OPERA LLaVA-1.5 captions (cold and warm caches).

Usage: NLTK_DATA=../shared/nltk_data python scripts/bench_chair_scoring.py [--fixtures DIR]

"cold" = first pass in a fresh process after the NLTK models are loaded (timed separately), with empty
lemma and caption caches; "warm lemmas" = new captions with a filled lemma cache (the steady state of a
long run); "cached" = the same captions again (caption-level cache hits).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.chair import load_ground_truth_file, read_json_records, score_records
from halluc.objects import clear_caches, extract_mentions

__all__ = ["main"]

DEFAULT_FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "realdata" / "chair"
LOGS = ("greedy", "beam5", "ours")


def _rate(label: str, records: list[dict], gt: dict) -> float:
    """Score ``records`` once, print and return captions per second."""
    start = time.perf_counter()
    score_records(records, gt)
    seconds = time.perf_counter() - start
    print(f"{label:<12} {len(records):>5} captions  {seconds:6.2f} s  {len(records) / seconds:8.0f} captions/s")
    return len(records) / seconds


def main() -> None:
    """Run the three passes and print a small table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES, help="folder with the OPERA logs")
    args = parser.parse_args()
    gt = load_ground_truth_file(args.fixtures / "coco2014_gt_objects_nltk_subset.json.gz")
    records = [r for log in LOGS for r in read_json_records(args.fixtures / f"opera_llava15_{log}.jsonl.gz")]

    start = time.perf_counter()
    extract_mentions("A dog.")  # loads the tagger and WordNet
    print(f"NLTK model loading: {time.perf_counter() - start:.2f} s")
    clear_caches()
    _rate("cold", records, gt)
    clear_caches(lemmas=False)
    _rate("warm lemmas", records, gt)
    _rate("cached", records, gt)


if __name__ == "__main__":
    main()
