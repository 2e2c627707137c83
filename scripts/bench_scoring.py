"""Measure scoring throughput on real outputs: CHAIR on the 1,500 OPERA LLaVA-1.5 captions, POPE on the 8,910
LLaVA-1.5-13B answers.

Usage: NLTK_DATA=../shared/nltk_data python scripts/bench_scoring.py [--fixtures DIR]

CHAIR scoring alone (``benchmarks.chair.score_records``): "cold" = first pass in a fresh process after the NLTK
models are loaded (timed separately), with empty lemma and caption caches; "warm lemmas" = new captions with a
filled lemma cache (the steady state of a long run); "cached" = the same captions again (caption-level cache hits).
Then what ``halluc score chair`` and ``halluc score pope`` do end to end (read the files, pair, score, write the
run directory), cold caches again: captions/s over the three caption logs, answers/s over the POPE answers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.chair import load_ground_truth_file, read_json_records, score_records
from benchmarks.pope import SPLITS
from benchmarks.score import score_chair_file, score_pope_file
from halluc.objects import clear_caches, extract_mentions

__all__ = ["main"]

DEFAULT_FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "realdata"
LOGS = ("greedy", "beam5", "ours")


def _report(label: str, count: int, unit: str, seconds: float) -> None:
    """One row of the table: what was scored, how long it took, how many per second."""
    print(f"{label:<12} {count:>5} {unit:<9} {seconds:6.2f} s  {count / seconds:8.0f} {unit}/s")


def _rate(label: str, logs: list[list[dict]], gt: dict) -> float:
    """Score each log (one caption per image) once, print and return captions per second over all."""
    start = time.perf_counter()
    for records in logs:
        score_records(records, gt)
    seconds = time.perf_counter() - start
    n = sum(len(records) for records in logs)
    _report(label, n, "captions", seconds)
    return n / seconds


def _score_files(chair_dir: Path, pope_dir: Path, out: Path) -> None:
    """``halluc score chair`` on each caption log and ``halluc score pope`` on the answers, timed end to end."""
    gt_file = chair_dir / "coco2014_gt_objects_nltk_subset.json.gz"
    clear_caches()
    start = time.perf_counter()
    captions = sum(
        score_chair_file(chair_dir / f"opera_llava15_{log}.jsonl.gz", out / log, gt_file=gt_file).metrics["n_captions"]
        for log in LOGS
    )
    seconds = time.perf_counter() - start
    _report("score chair", captions, "captions", seconds)
    start = time.perf_counter()
    result = score_pope_file(
        pope_dir / "answers/llava-v1.5-13b.jsonl.gz",
        out / "pope",
        questions=[pope_dir / "answers/llava_pope_test_questions.jsonl.gz"],
        labels=[pope_dir / f"questions_e3e3926/coco_pope_{split}.json.gz" for split in SPLITS],
    )
    seconds = time.perf_counter() - start
    answers = sum(result.metrics[split]["n"] for split in SPLITS)
    _report("score pope", answers, "answers", seconds)


def main() -> None:
    """Run the CHAIR passes and the end-to-end scoring, and print a small table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES, help="folder with chair/ and pope/ data")
    args = parser.parse_args()
    chair_dir, pope_dir = args.fixtures / "chair", args.fixtures / "pope"
    gt = load_ground_truth_file(chair_dir / "coco2014_gt_objects_nltk_subset.json.gz")
    records = [read_json_records(chair_dir / f"opera_llava15_{log}.jsonl.gz") for log in LOGS]

    start = time.perf_counter()
    extract_mentions("A dog.")  # loads the tagger and WordNet
    print(f"NLTK model loading: {time.perf_counter() - start:.2f} s")
    clear_caches()
    _rate("cold", records, gt)
    clear_caches(lemmas=False)
    _rate("warm lemmas", records, gt)
    _rate("cached", records, gt)
    with tempfile.TemporaryDirectory() as out:
        _score_files(chair_dir, pope_dir, Path(out))


if __name__ == "__main__":
    main()
