"""Measure the interventions' effect on hallucination: baseline vs each method over seeded image subsets, and a
strength sweep per method with its Pareto front of CHAIR_i against recall.

    python scripts/measure_interventions.py --out runs/measure-interventions      # toy model, ~15 min on 2 cores

1. For each seed, a random subset of ``--chair-images`` images of each image set (ids written to
   ``<out>/ids-<set>-seed<k>.txt``) gets CHAIR, and ``--pope-images`` seeded POPE images get POPE, for the baseline
   and every method at its paper default. Reported: mean and std over seeds of CHAIR_s, CHAIR_i, distinct CHAIR_i
   (each object once per caption), recall, POPE F1, mentions per caption and the share of degenerate (repetitive)
   captions; a system marked ``!`` has >= 5% degenerate captions, so its CHAIR_i reflects repetition. Then each
   method minus the baseline on the same images (all seeds' subsets pooled) for CHAIR_i, distinct CHAIR_i and
   recall, with 95% bootstrap CIs over images (:mod:`benchmarks.compare`).
2. On ``--sweep-images`` (seed 0's subset), CHAIR for each method at several strengths (:mod:`benchmarks.sweep`);
   the non-degenerate points not dominated in (lower CHAIR_i, higher recall) form the Pareto front; degenerate
   settings are marked ``!`` and left out of it (see :func:`benchmarks.chair.degenerate_setting`).

Every cell is a run directory; rerunning the command reuses finished cells (resume after interruption).
Results: ``<out>/report.json`` and tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Any

from benchmarks.chair import REPETITION_LEGEND, degenerate_setting
from benchmarks.compare import RATIOS, paired_difference
from benchmarks.runner import GenerationSettings
from benchmarks.suite import cell_dir, run_suite
from benchmarks.sweep import SWEEP_METRICS, run_sweep
from halluc.defaults import default_model
from halluc.imagesets import resolve_images
from halluc.models import load_lvlm
from interventions import PAI, VCD, VHR, Intervention, TokenEmphasis, paper_defaults

METRICS = ("CHAIR_s", "CHAIR_i", "CHAIR_i_distinct", "recall", "pope_f1", "mentions_per_caption", "degenerate_share")
HEADERS = ("CHs", "CHi", "CHi-d", "recall", "POPE F1", "men/cap", "degen%")
# Every method at its paper default (OPERA runs beam search 5 inside; the others decode greedily), plus PAI's
# attention edit without its CFG term as an ablation.
DEFAULTS: dict[str, Intervention | None] = {"baseline": None, **paper_defaults(), "pai-attention": PAI(cfg=False)}
SWEEP: dict[str, list[Intervention]] = {
    "vhr": [VHR(alpha=a) for a in (1.5, 2.0, 3.0, 4.0)],
    "token_emphasis": [TokenEmphasis(local=s, summary=s * 3 / 7) for s in (0.35, 0.7, 1.4, 2.8)],
    "pai": [PAI(alpha=a) for a in (0.1, 0.2, 0.5, 1.0)],
    "vcd": [VCD(alpha=a) for a in (0.5, 1.0, 2.0, 4.0)],
}


def subset_ids(spec: str, n: int, seed: int, out: Path) -> Path:
    """Write a seeded random subset of ``n`` image ids of ``spec`` and return the file."""
    ids = [str(i) for i in resolve_images(spec).image_ids]
    chosen = sorted(random.Random(seed).sample(ids, min(n, len(ids))), key=ids.index)
    path = out / f"ids-{spec.replace(':', '-')}-seed{seed}.txt"
    path.write_text("".join(f"{i}\n" for i in chosen))
    return path


def cell(metric: str, value: float) -> str:
    """One table cell: mentions per caption as is, the fractions in percent."""
    return f"{value:.1f}" if metric == "mentions_per_caption" else f"{100 * value:.1f}"


def interval(value: dict[str, float]) -> str:
    """'+1.2 [-0.3,+2.8]' in points."""
    return f"{100 * value['estimate']:+.1f} [{100 * value['low']:+.1f},{100 * value['high']:+.1f}]"


def chair_details(out: Path, seeds: list[int], system: str, spec: str) -> list[dict]:
    """Per-caption CHAIR records of one system on one image set, every seed's subset in turn."""
    runs = [cell_dir(out / f"seed{seed}", system, spec) / "chair" for seed in seeds]
    return [record for run in runs for record in json.loads((run / "chair_details.json").read_text())]


def paired_differences(out: Path, seeds: list[int], systems: list[str], images: list[str]) -> list[dict[str, Any]]:
    """Each system minus the baseline on the same images (every seed's subset pooled), with bootstrap CIs."""
    differences = []
    for spec in images:
        baseline = chair_details(out, seeds, "baseline", spec)
        for system in dict.fromkeys(s for s in systems if s != "baseline"):
            other = chair_details(out, seeds, system, spec)
            entry: dict[str, Any] = {"system": system, "images": spec}
            differences.append(entry | {m: paired_difference(baseline, other, m).to_dict() for m in RATIOS})
    return differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/measure-interventions"))
    parser.add_argument("--images", nargs="+", default=["toy:val", "toy:shift"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--chair-images", type=int, default=100)
    parser.add_argument("--pope-images", type=int, default=40)
    parser.add_argument("--sweep-images", default="toy:shift", help="image set of the strength sweep; '' skips it")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lvlm = load_lvlm(args.model or default_model())

    cells: dict[tuple[str, str], list[dict[str, float]]] = {}
    for seed in args.seeds:
        ids = {spec: subset_ids(spec, args.chair_images, seed, args.out) for spec in args.images}
        rows = run_suite(
            lvlm, DEFAULTS, args.images, args.out / f"seed{seed}", chair_images=args.chair_images,
            pope_images=args.pope_images, batch_size=args.batch_size, seed=seed, ids_files=ids,
        )  # fmt: skip
        for row in rows:
            cells.setdefault((row.system, row.images), []).append(row.flat())
    summary = []
    for (system, images), flats in cells.items():
        entry: dict[str, Any] = {"system": system, "images": images, "n_seeds": len(flats)}
        for metric in METRICS:
            values = [f[metric] for f in flats]
            entry[metric] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
        summary.append(entry)

    sweep: dict[str, Any] = {"images": None, "points": [], "pareto": [], "degenerate": []}
    if args.sweep_images:
        sweep_ids = subset_ids(args.sweep_images, args.chair_images, args.seeds[0], args.out)
        sweep_set = resolve_images(args.sweep_images, ids_file=sweep_ids)
        settings = GenerationSettings(max_new_tokens=128, batch_size=args.batch_size)
        swept = run_sweep(lvlm, sweep_set, args.out / "sweep", SWEEP, settings=settings, seed=args.seeds[0])
        sweep = {"images": args.sweep_images, **swept}
    points = sweep["points"]
    differences = paired_differences(args.out, args.seeds, [e["system"] for e in summary], args.images)
    report = {"summary": summary, "differences": differences, "sweep": sweep}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))

    print(f"\nmean ± std over seeds {args.seeds} ({args.chair_images} CHAIR images, {args.pope_images} POPE images)")
    print(f"{'system':16} {'images':9} " + " ".join(f"{h:>9}" for h in HEADERS))
    for e in summary:
        flag = "!" if degenerate_setting({m: e[m]["mean"] for m in METRICS}) else " "
        cells = " ".join(f"{cell(m, e[m]['mean']):>5}±{cell(m, e[m]['std']):>3}" for m in METRICS)
        print(f"{e['system']:15}{flag} {e['images']:9} {cells}")
    print("\nsystem - baseline on the same images, all seeds pooled, 95% bootstrap CI over images (points)")
    print(f"{'system':16} {'images':9} " + " ".join(f"{m:>22}" for m in RATIOS))
    for d in differences:
        cells = " ".join(f"{interval(d[m]):>22}" for m in RATIOS)
        print(f"{d['system']:16} {d['images']:9} {cells}")
    if points:
        print(f"\nstrength sweep on {args.sweep_images} (* = Pareto front of CHi against recall)")
        print(f"  {'setting':28} " + " ".join(f"{h:>7}" for h in HEADERS if h != "POPE F1"))
        for p in points:
            flag = "*" if p["label"] in sweep["pareto"] else "!" if p["label"] in sweep["degenerate"] else " "
            print(f"{flag} {p['label']:28} " + " ".join(f"{cell(m, p[m]):>7}" for m in SWEEP_METRICS))
        print(REPETITION_LEGEND + " (left out of the Pareto front)")


if __name__ == "__main__":
    main()
