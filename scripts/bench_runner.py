"""Benchmark the generation runner: captions/s at batch size 1 vs 16 on the same model and images, in one run.

    python scripts/bench_runner.py [--model halluc/assets/toy-llava] [--images 32] [--new-tokens 64]

Both passes go through ``run_generation`` into a fresh run store (so appending and flushing records is included),
with the same greedy settings; EOS is not suppressed, so the batched pass also pays for its longest caption.
Prints captions/s and tokens/s of each pass and the batch-16 / batch-1 ratio (target >= 4x on the toy model).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.runner import GenerationSettings, Request, run_generation
from halluc.defaults import DESCRIBE_PROMPT, default_model
from halluc.imagesets import resolve_images
from halluc.models import load_lvlm
from halluc.runs import RunStore


def timed_pass(lvlm, requests: list[Request], batch_size: int, new_tokens: int, root: Path) -> tuple[float, int]:
    """Seconds for one pass at ``batch_size`` and the number of generated characters (a sanity count)."""
    store = RunStore.create(root / f"batch{batch_size}", {"job": "bench", "batch_size": batch_size})
    settings = GenerationSettings(max_new_tokens=new_tokens, batch_size=batch_size)
    started = time.perf_counter()
    run_generation(lvlm, requests, store, settings, progress=False)
    seconds = time.perf_counter() - started
    return seconds, sum(len(s.get("response", "")) for s in store.samples())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--images", type=int, default=32, help="toy:val images to caption")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lvlm = load_lvlm(args.model or default_model())
    image_set = resolve_images("toy:val", limit=args.images)
    requests = [Request(str(i), str(image_set.path(i)), DESCRIBE_PROMPT, {"image_id": i}) for i in image_set.image_ids]
    with tempfile.TemporaryDirectory() as tmp:
        timed_pass(lvlm, requests[:2], 2, 4, Path(tmp) / "warmup")
        results = {bs: timed_pass(lvlm, requests, bs, args.new_tokens, Path(tmp)) for bs in (1, 16)}
    for bs, (seconds, chars) in results.items():
        print(f"batch {bs:2}: {len(requests) / seconds:7.2f} captions/s  ({seconds:6.1f} s, {chars} characters)")
    print(f"batch 16 / batch 1 throughput: {results[1][0] / results[16][0]:.2f}x")
    if results[1][1] != results[16][1]:
        print("note: the two passes produced captions of different total length (batched padding changes numerics)")


if __name__ == "__main__":
    main()
