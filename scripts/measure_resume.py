"""Kill-and-resume: SIGKILL a toy CHAIR run at random moments, resume it, and compare with an uninterrupted run.

    python scripts/measure_resume.py --images 64 --points 10 --out /tmp/resume-check

One uninterrupted reference run, then for each point a fresh run killed with SIGKILL at a random moment of its
generation: once the run has started (manifest written) and a random number of its batches have landed, after a
delay drawn uniformly from the time the reference took for the next batch (drawn again, up to 4 times, when the run
finished first); its status is read from the run directory (it must be "interrupted"), then ``--resume``; the
resumed samples.jsonl and metrics.json must equal the reference's exactly. Prints one row per point and a JSON
summary; exits 1 if any point differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from halluc.runs import RunStore, run_status

CLI = [sys.executable, "-m", "halluc.cli"]
_TRIES = 4  # draws per point before a run that always finishes first is kept as it is
_BATCH = 16


def _command(images: int, out: Path, *extra: str) -> list[str]:
    common = ["--limit", str(images), "--batch-size", str(_BATCH), "--out", str(out)]
    return [*CLI, "chair", "--images", "toy:val", *common, *extra]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "samples.jsonl").read_text(encoding="utf-8").splitlines()]


def _count(run: Path) -> int:
    file = run / "samples.jsonl"
    return file.read_bytes().count(b"\n") if file.exists() else 0


def _status(run: Path) -> str:
    if not (run / "manifest.json").exists():
        return "no run yet"
    return run_status(run, RunStore.open(run).manifest)


def main() -> int:
    """Run the reference, the killed-and-resumed runs, and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="toy:val images per run")
    parser.add_argument("--points", type=int, default=10, help="kill points")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (emptied first)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    start, opened, landed = time.monotonic(), None, []
    log = args.out / "ref.log"
    with log.open("w") as sink:
        ref = subprocess.Popen(_command(args.images, args.out / "ref"), stdout=sink, stderr=sink)
    while ref.poll() is None:  # note when generation starts (manifest written) and when each batch lands
        if opened is None and (args.out / "ref" / "manifest.json").exists():
            opened = time.monotonic() - start
        if _count(args.out / "ref") > len(landed) * _BATCH:
            landed.append(time.monotonic() - start)
        time.sleep(0.02)
    wall = time.monotonic() - start
    if ref.returncode != 0 or opened is None or not landed:
        print(log.read_text()[-2000:], file=sys.stderr)
        return 1
    first = landed[0]
    steps = [b - a for a, b in zip([opened, *landed], landed, strict=False)]  # generation time of each batch
    reference = _rows(args.out / "ref")
    ref_metrics = json.loads((args.out / "ref" / "metrics.json").read_text(encoding="utf-8"))
    print(f"reference: {len(reference)} samples in {wall:.1f} s (first sample after {first:.1f} s)")
    rng = random.Random(args.seed)
    n_batches = len(steps)
    results = []
    print(f"{'point':>5} {'kill at s':>9} {'samples at kill':>15} {'status':>12} {'resume rc':>9} {'identical':>9}")
    for point in range(args.points):
        run = args.out / f"killed-{point}"
        for _ in range(_TRIES):  # a run that finished before its kill time is no kill point: draw again
            shutil.rmtree(run, ignore_errors=True)
            # a random batch, then a random moment while it is generated (as long as the reference took for it),
            # anchored on this run's own progress so a busy machine does not skew the points
            after = rng.randrange(n_batches)
            delay = rng.uniform(0, steps[after])
            proc = subprocess.Popen(_command(args.images, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            began = time.monotonic()
            while proc.poll() is None and not (
                (run / "manifest.json").exists() and _count(run) >= after * _BATCH
            ):  # fmt: skip
                time.sleep(0.02)
            time.sleep(delay)
            at = time.monotonic() - began
            killed = proc.poll() is None
            if killed:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            if killed:
                break
        written, status = _count(run), _status(run)
        resumed = subprocess.run(_command(args.images, run, "--resume"), capture_output=True, text=True, check=False)
        same = (
            resumed.returncode == 0
            and _rows(run) == reference
            and json.loads((run / "metrics.json").read_text(encoding="utf-8")) == ref_metrics
        )
        results.append(
            {"point": point, "kill_at_s": round(at, 2), "killed": killed, "samples_at_kill": written,
             "status_after_kill": status, "resume_rc": resumed.returncode, "identical": same}
        )  # fmt: skip
        print(f"{point:>5} {at:>9.2f} {written:>15} {status:>12} {resumed.returncode:>9} {str(same):>9}")
        if resumed.returncode != 0:
            print(resumed.stderr[-1000:], file=sys.stderr)
    summary = {
        "images": args.images,
        "points": args.points,
        "killed_mid_run": sum(r["killed"] for r in results),
        "identical": sum(r["identical"] for r in results),
        "status_after_kill": {
            s: sum(r["status_after_kill"] == s for r in results)
            for s in sorted({r["status_after_kill"] for r in results})
        },
        "reference_wall_s": round(wall, 1),
    }
    print(json.dumps(summary))
    (args.out / "report.json").write_text(json.dumps({"summary": summary, "points": results}, indent=2) + "\n")
    return 0 if summary["identical"] == args.points else 1


if __name__ == "__main__":
    sys.exit(main())
