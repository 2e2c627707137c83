"""Measure detector validation, detector-based CHAIR and CrossCheck against annotations on the toy world.

    python scripts/measure_crosscheck.py --out runs/measure-crosscheck [--limit 60] [--samples 3]

Systems: the baseline and each intervention at two strengths (``--systems`` overrides). Reports, in
``<out>/report.json`` and on stdout:

* the two-detector validator vs the annotations per (image, object), over every world category of each image:
  accuracy on the decided objects, Cohen's kappa and the share marked uncertain;
* detector-based CHAIR vs annotation CHAIR: per-mention accuracy and kappa (all systems' captions pooled), and the
  Spearman / Pearson correlation of the two CHAIR_i across systems;
* CrossCheck explicit and implicit: Spearman / Pearson with annotation CHAIR_i across systems (target >= 0.8 for
  at least one of the two).

Everything is resumable: rerun the same command to continue an interrupted measurement.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.chair import REPETITION_LEGEND
from benchmarks.crosscheck import CrossCheckSettings, parse_system, run_crosscheck
from benchmarks.detector_chair import check_validator, correlations, load_validator, mention_agreement, score_run
from halluc.defaults import default_model
from halluc.imagesets import resolve_images
from halluc.models import load_lvlm
from halluc.world import world_categories

SYSTEMS = (
    "baseline",
    "vhr:alpha=2",
    "vhr:alpha=4",
    "pai:alpha=0.5",
    "pai:alpha=1",
    "token_emphasis",
    "token_emphasis:local=1.4,summary=0.6",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/measure-crosscheck"))
    parser.add_argument("--model", default=None)
    parser.add_argument("--images", default="toy:val")
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--weight-temperature", type=float, default=0.1)
    parser.add_argument("--detectors", nargs=2, default=["toy-yolov8", "toy-yolo11"])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS))
    args = parser.parse_args()

    started = time.perf_counter()
    images = resolve_images(args.images, limit=args.limit)
    lvlm = load_lvlm(args.model or default_model())
    settings = CrossCheckSettings(
        n_samples=args.samples,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        weight_temperature=args.weight_temperature,
    )
    systems = [parse_system(spec) for spec in args.systems]
    cc_dir = args.out / "crosscheck"
    result = run_crosscheck(systems, images, cc_dir, lambda _: lvlm, settings=settings, resume=True)
    generated = time.perf_counter() - started

    validator = load_validator(args.detectors, cache_path=args.out / "validator.jsonl")
    validator_report = check_validator(validator, images, [c["name"] for c in world_categories()])

    detector_chair: dict[str, dict] = {}
    pooled_det: list[dict] = []
    pooled_ann: list[dict] = []
    for row in result["systems"]:
        target = cc_dir / row["target_run"]
        metrics, details = score_run(target, validator)
        annotation = json.loads((target / "chair_details.json").read_text(encoding="utf-8"))
        detector_chair[row["system"]] = {**metrics, "agreement": mention_agreement(details, annotation)}
        pooled_det += details
        pooled_ann += annotation
    annotation_chair = {row["system"]: row["CHAIR_i"] for row in result["systems"]}
    report = {
        "images": images.describe(),
        "n_systems": len(systems),
        "settings": result["settings"],
        "validator_vs_annotations": validator_report,
        "detector_chair": {
            "per_system": detector_chair,
            "mention_agreement": mention_agreement(pooled_det, pooled_ann),
            "CHAIR_i_across_systems": correlations(
                {name: m["CHAIR_i"] for name, m in detector_chair.items()}, annotation_chair
            ),
        },
        "crosscheck": {kind: result[kind]["correlation"] for kind in ("explicit", "implicit")},
        "systems": result["systems"],
        "seconds": {"generation_and_crosscheck": generated, "total": time.perf_counter() - started},
    }
    best = max((report["crosscheck"][k] or {}).get("spearman") or -1.0 for k in ("explicit", "implicit"))
    report["checks"] = {"crosscheck spearman >= 0.8 (explicit or implicit)": best >= 0.8}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")

    print(f"{'system':40s} {'CHAIR_i':>8s} {'CHi-d':>6s} {'degen%':>6s} {'det CHAIR_i':>12s} {'uncertain':>10s} "
          f"{'explicit':>9s} {'implicit':>9s}")  # fmt: skip
    for row in result["systems"]:
        det = detector_chair[row["system"]]
        print(f"{row['system']:40s} {row['CHAIR_i']:8.3f} {row['CHAIR_i_distinct']:6.3f} "
              f"{100 * row['degenerate_share']:6.0f} {det['CHAIR_i']:12.3f} {det['uncertain_rate']:10.3f} "
              f"{row['explicit']:9.3f} {row['implicit']:9.3f}")  # fmt: skip
    print(REPETITION_LEGEND)
    summary = {
        "validator": {k: validator_report[k] for k in ("accuracy", "kappa", "uncertain_share", "n")},
        "detector CHAIR mentions": {
            k: report["detector_chair"]["mention_agreement"][k] for k in ("accuracy", "kappa", "uncertain_share")
        },
        "detector vs annotation CHAIR_i": report["detector_chair"]["CHAIR_i_across_systems"],
        "crosscheck": report["crosscheck"],
        "checks": report["checks"],
        "seconds": report["seconds"],
    }
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
