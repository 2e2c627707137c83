"""Measure SENTINEL on the embedded world: pairs -> statistics -> context-aware DPO -> CHAIR/POPE before vs after.

1. build a train-distribution split (its own seed, never the val/shift evaluation images);
2. generate sentence-level preference pairs from it with the base model and two cross-checking detectors;
3. print the pair count and the hallucination rate of sampled sentences by position in the description;
4. train a LoRA adapter with context-aware DPO and save the merged model;
5. CHAIR (CHAIR_s, CHAIR_i, distinct CHAIR_i, recall, mentions per caption, degenerate share) and POPE F1 on toy val
   and shift: the base model (plus any training-free interventions given with --intervention) vs the DPO model; the
   goal is CHAIR_i down >= 30% relative with recall down <= 5 points.

Every stage reuses what an earlier, interrupted invocation left in --out. Results go to <out>/summary.json.

    python scripts/measure_sentinel.py --out runs/sentinel-measure --n-images 300              # toy model, CPU
    python scripts/measure_sentinel.py --out /tmp/smoke --n-images 4 --chair-images 4 --pope-images 2 \\
        --detector oracle --detector oracle --max-steps 2                                          # smoke test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.chair import REPETITION_LEGEND
from benchmarks.detector_chair import load_validator
from benchmarks.sentinel import run_sentinel
from benchmarks.suite import SuiteRow, run_suite
from halluc.defaults import default_model
from halluc.dpo import DpoSettings, load_pairs, train_dpo
from halluc.imagesets import resolve_images
from halluc.models import load_lvlm
from halluc.runs import atomic_write_json
from halluc.sentinel import SentinelConfig
from halluc.world import build_split

EVAL_SETS = ["toy:val", "toy:shift"]


def stage_pairs(args: argparse.Namespace, model: Path) -> dict[str, Any]:
    """Build the train-distribution split and generate pairs (resumable); return the pair statistics."""
    world = args.out / "world"
    paths = build_split("train", args.n_images, world, seed=args.world_seed)
    images = resolve_images(str(paths.images), instances=paths.instances)
    lvlm = load_lvlm(model, device=args.device)
    config = SentinelConfig(n_samples=args.n_samples, batch_images=args.batch_images, seed=args.seed)
    specs = [f"oracle:{paths.instances}" if spec == "oracle" else spec for spec in args.detector]  # the split's truth
    validator = load_validator(specs, cache_path=args.out / "crosscheck_cache.jsonl")
    run = args.out / "pairs"
    result = run_sentinel(lvlm, validator, images, run, config=config, detectors=args.detector, resume=True)
    return result.stats


def stage_train(args: argparse.Namespace, model: Path) -> tuple[Path, dict[str, Any]]:
    """Train (once) with context-aware DPO; return the merged model and the training metrics."""
    out = args.out / "dpo"
    if (out / "merged" / "config.json").exists():
        return out / "merged", json.loads((out / "metrics.json").read_text())
    settings = DpoSettings(
        learning_rate=args.lr, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        seed=args.seed,
    )  # fmt: skip
    start = time.time()
    result = train_dpo(model, load_pairs([args.out / "pairs"]), out, settings=settings, device=args.device)
    return result.merged, {**result.metrics, "wall_minutes": round((time.time() - start) / 60, 2)}


def stage_eval(args: argparse.Namespace, model: Path, merged: Path) -> list[SuiteRow]:
    """CHAIR and POPE of the base model (and the given interventions) and of the DPO model."""
    from interventions import parse_intervention

    common = {"chair_images": args.chair_images, "pope_images": args.pope_images, "batch_size": args.eval_batch}
    base = load_lvlm(model, device=args.device)
    systems: dict[str, Any] = {"baseline": None}
    systems.update({spec: parse_intervention(spec) for spec in args.intervention or []})
    rows = run_suite(base, systems, EVAL_SETS, args.out / "eval", **common)
    after = load_lvlm(merged, device=args.device)
    return rows + run_suite(after, {"sentinel-dpo": None}, EVAL_SETS, args.out / "eval", **common)


def compare(rows: list[SuiteRow]) -> list[dict[str, Any]]:
    """Flat rows plus, per image set, CHAIR_i change (relative) and recall change (points) vs the baseline."""
    flat = [row.flat() for row in rows]
    base = {row["images"]: row for row in flat if row["system"] == "baseline"}
    for row in flat:
        ref = base[row["images"]]
        row["CHAIR_i_rel_change"] = (row["CHAIR_i"] - ref["CHAIR_i"]) / ref["CHAIR_i"] if ref["CHAIR_i"] else None
        row["recall_change_points"] = 100 * (row["recall"] - ref["recall"])
        rel = row["CHAIR_i_rel_change"]
        row["goal_met"] = rel is not None and rel <= -0.30 and row["recall_change_points"] >= -5
    return flat


def print_report(stats: dict[str, Any], train: dict[str, Any], table: list[dict[str, Any]]) -> None:
    print(f"\npairs: {stats['n_pairs']} from {stats['n_images']} images {stats['pairs_by_type']}")
    print("sentence  hallucination rate (sampled sentences with objects)  pairs")
    for row in stats["by_position"]:
        rate = "-" if row["hallucination_rate"] is None else f"{100 * row['hallucination_rate']:5.1f}%"
        print(f"{row['step'] + 1:>8}  {rate:>8} of {row['sentences_with_objects']:<6}{row['pairs']:>6}")
    if not train:
        return
    print(f"\nDPO: {train['global_step']} steps, {train['train_runtime'] / 60:.1f} min")
    print("\n| system | images | CHs | CHi | CHi-d | recall | men/cap | degen% | POPE F1 | CHi rel. | recall pts "
          "| goal |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        rel = "-" if r["CHAIR_i_rel_change"] is None else f"{100 * r['CHAIR_i_rel_change']:+.1f}%"
        print(f"| {r['system']} | {r['images']} | {100 * r['CHAIR_s']:.1f} | {100 * r['CHAIR_i']:.1f} | "
              f"{100 * r['CHAIR_i_distinct']:.1f} | {100 * r['recall']:.1f} | {r['mentions_per_caption']:.1f} | "
              f"{100 * r['degenerate_share']:.0f} | {100 * r['pope_f1']:.1f} | {rel} | "
              f"{r['recall_change_points']:+.1f} | {'yes' if r['goal_met'] else 'no'} |")  # fmt: skip
    print(REPETITION_LEGEND)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default=None, help="base model (default: the shipped toy LLaVA)")
    p.add_argument("--n-images", type=int, default=300, help="train-distribution images for pair generation")
    p.add_argument("--world-seed", type=int, default=7, help="seed of that split (the toy model trained on 0)")
    p.add_argument("--detector", action="append", help="two detector specs, or 'oracle' (default: toy YOLOs)")
    p.add_argument("--n-samples", type=int, default=10)
    p.add_argument("--batch-images", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chair-images", type=int, default=500)
    p.add_argument("--pope-images", type=int, default=100)
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--intervention", action="append", help="training-free intervention to compare, e.g. vhr")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.detector = args.detector or ["toy-yolov8", "toy-yolo11"]
    torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else default_model()
    stats = stage_pairs(args, model)
    if not stats["n_pairs"]:
        print_report(stats, {}, [])
        raise SystemExit("no preference pairs were generated: nothing to train on (more images, another model?)")
    merged, train = stage_train(args, model)
    table = compare(stage_eval(args, model, merged))
    atomic_write_json(args.out / "summary.json", {"pairs": stats, "train": train, "eval": table, "args": vars(args)})
    print_report(stats, train, table)


if __name__ == "__main__":
    main()
