"""Measure the behaviour the embedded toy LVLM must show (recorded in the README).

    python scripts/measure_toy_lvlm.py --out runs/toy-behaviour

Checks: object recall on val >= 0.7; CHAIR_i >= 0.10 and CHAIR_s >= 0.25 on shift; POPE accuracy
random > popular > adversarial with adversarial >= 5 points below random; hallucinated mentions more frequent in
later sentences than in the first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.mechanisms import later_sentences_hallucinate_more, rate_by_sentence
from benchmarks.suite import run_suite
from halluc.defaults import default_model
from halluc.models import load_lvlm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/toy-behaviour"))
    parser.add_argument("--chair-images", type=int, default=300)
    parser.add_argument("--pope-images", type=int, default=200)
    args = parser.parse_args()
    lvlm = load_lvlm(args.model or default_model())
    rows = run_suite(
        lvlm,
        {"baseline": None},
        ["toy:val", "toy:shift"],
        args.out,
        chair_images=args.chair_images,
        pope_images=args.pope_images,
    )
    report = {}
    for row in rows:
        details = json.loads(
            (args.out / f"baseline__{row.images.replace(':', '-')}" / "chair" / "chair_details.json").read_text()
        )
        report[row.images] = {**row.flat(), "hallucination_rate_by_sentence": rate_by_sentence(details)}
    val, shift = report["toy:val"], report["toy:shift"]
    checks = {
        "val recall >= 0.7": val["recall"] >= 0.7,
        "shift CHAIR_i >= 0.10": shift["CHAIR_i"] >= 0.10,
        "shift CHAIR_s >= 0.25": shift["CHAIR_s"] >= 0.25,
        "POPE random > popular > adversarial (val)": val["pope_random_acc"]
        > val["pope_popular_acc"]
        > val["pope_adversarial_acc"],
        "POPE adversarial >= 5 points below random (val)": val["pope_random_acc"] - val["pope_adversarial_acc"] >= 0.05,
        "later sentences hallucinate more than the first (shift)": later_sentences_hallucinate_more(
            shift["hallucination_rate_by_sentence"]
        ),
    }
    report["checks"] = checks
    (args.out / "behaviour.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print("ALL CHECKS PASS" if all(checks.values()) else "SOME CHECKS FAIL")


if __name__ == "__main__":
    main()
