"""Benchmark the interventions: generated tokens/s vs vanilla at batch 1 and 16, and vs eager batch-1 baselines.

    python scripts/bench_interventions.py --model halluc/assets/toy-llava [--new-tokens 32] [--threads 1]

For each method at its defaults (VHR, token emphasis, PAI, PAI's attention edit alone, VCD, DoLa, VISTA) it times
``LVLM.generate_ids`` with exactly ``--new-tokens`` new tokens (EOS suppressed) at batch 1 and 16 and prints
tokens/s and the ratio to vanilla, both end to end and in steady state (``(T(N) - T(1)) / (N - 1)`` per token,
i.e. after the first step, which for VHR holds its head selection). It then times BASELINES: the straightforward
eager batch-1 implementations of the official algorithms in :mod:`benchmarks.reference_methods` (the fidelity
tests' yardstick), and prints how much faster halluc at batch 16 is, plus whether both produce the same tokens at
batch 1. Then OPERA (its own beam search, 5 beams): tokens/s vs greedy and vs plain beam search with 5 beams at
batch 1 and 16 (exactly ``--new-tokens`` each), and vs the eager batch-1 reference of the official algorithm
(``reference_opera``) at equal output (both stop by themselves; the tokens are compared). ``--only-opera`` runs
just that part.

``--isolated`` runs each system (the methods, beam search 5 and OPERA) once per batch size in a fresh process and
adds its peak resident set size (Linux ``VmHWM``, reset after a warm-up) to tokens/s and the ratio to greedy;
``--steady`` adds a 1-token run per system for the steady-state ratio; ``--systems`` picks systems by name or
intervention spec (``vista:alpha=0``). ``--llava-proportions`` does that on a random-weight model shaped like
LLaVA-1.5 (576 image tokens, 16 x 1024 Llama, 32k vocabulary), the figure users care about:

    python scripts/bench_interventions.py --llava-proportions --new-tokens 128 --batch 8 --threads 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm
from transformers import AutoProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from benchmarks.reference_methods import reference_opera, reference_pai, reference_token_emphasis, reference_vhr
from halluc.defaults import DESCRIBE_PROMPT
from halluc.errors import ConfigError
from halluc.models import LVLM, load_lvlm
from interventions import OPERA, PAI, Intervention, paper_defaults, parse_intervention

# Every greedy-decoding method at its default, and PAI's attention edit without CFG; OPERA (beam search) apart.
METHODS: dict[str, Intervention | None] = {
    "vanilla": None,
    **{name: config for name, config in paper_defaults().items() if name != "opera"},
    "pai-attention": PAI(cfg=False),
}
# What each system passes to ``LVLM.generate_ids`` in the isolated runs (one process per system and batch size).
SYSTEMS: dict[str, dict[str, object]] = {
    **{name: {"intervention": config} for name, config in METHODS.items()},
    "beam5": {"num_beams": 5},
    "opera": {"intervention": OPERA()},
}


# ----- baselines: the eager batch-1 reference implementations of the official algorithms ------------------------
def _pai(lvlm: LVLM, image: Image.Image, n: int, config: PAI) -> list[int]:
    return reference_pai(lvlm, image, DESCRIBE_PROMPT, n, config.alpha, config.cfg, config.gamma, config.cutoff).tokens


def _token_emphasis(lvlm: LVLM, image: Image.Image, n: int) -> list[int]:
    c = METHODS["token_emphasis"]
    return reference_token_emphasis(lvlm, image, DESCRIBE_PROMPT, n, c.local, c.summary, c.fraction, c.gamma).tokens


BASELINES: dict[str, Callable[[LVLM, Image.Image, int], list[int]]] = {
    "vhr": lambda lvlm, image, n: reference_vhr(lvlm, image, DESCRIBE_PROMPT, n, METHODS["vhr"].alpha).tokens,
    "token_emphasis": _token_emphasis,
    "pai": lambda lvlm, image, n: _pai(lvlm, image, n, METHODS["pai"]),
    "pai-attention": lambda lvlm, image, n: _pai(lvlm, image, n, METHODS["pai-attention"]),
}


def run_baseline(lvlm: LVLM, method: str, images: list[Image.Image], new_tokens: int) -> list[list[int]]:
    """Run a reference one sample at a time; returns the new tokens per sample."""
    return [BASELINES[method](lvlm, image, new_tokens) for image in images]


# ----- timing -----------------------------------------------------------------------------------------------------
CLOCKS = {"process": time.process_time, "wall": time.perf_counter}


def fastest(runs: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float]) -> dict[str, float]:
    """Minimum time of each run over ``repeats`` rounds, interleaved so machine load hits all alike."""
    for run in runs.values():  # warm-up
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = clock()
            run()
            best[name] = min(best[name], clock() - start)
    return best


def ours(lvlm: LVLM, config: Intervention | None, images: list[Image.Image], new_tokens: int) -> list[list[int]]:
    """halluc: one batched ``generate_ids`` call with the intervention."""
    batch = lvlm.prepare(images, [DESCRIBE_PROMPT] * len(images))
    out = lvlm.generate_ids(batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, intervention=config)
    return out.tolist()


def batch_sizes(batch: int) -> tuple[int, ...]:
    """The batch sizes timed: 1 and ``batch`` (once when ``batch`` is 1)."""
    return (1,) if batch == 1 else (1, batch)


def bench_opera(lvlm: LVLM, images: list[Image.Image], new_tokens: int, repeats: int, clock: Callable) -> None:
    """OPERA vs greedy and beam search 5 (tokens/s, fixed length), and vs its eager reference at equal output."""
    config, sizes = OPERA(), batch_sizes(len(images))
    prompts = [DESCRIBE_PROMPT] * len(images)

    def fixed(size: int, **kwargs: object) -> None:
        batch = lvlm.prepare(images[:size], prompts[:size])
        lvlm.generate_ids(batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)

    runs = {(name, size): (lambda s=size, k=kwargs: fixed(s, **k)) for size in sizes for name, kwargs in (
        ("greedy", {}), ("beam5", {"num_beams": 5}), ("opera", {"intervention": config}),
    )}  # fmt: skip
    free = [lvlm.prepare([image], [DESCRIBE_PROMPT]) for image in images]  # equal output: both stop by themselves
    runs["opera-free"] = lambda: [lvlm.generate_ids(b, max_new_tokens=new_tokens, intervention=config) for b in free]
    together = lvlm.prepare(images, prompts)
    runs["opera-free-batched"] = lambda: lvlm.generate_ids(together, max_new_tokens=new_tokens, intervention=config)
    runs["eager-free"] = lambda: [reference_opera(lvlm, image, DESCRIBE_PROMPT, new_tokens) for image in images]
    best = fastest(runs, repeats, clock)
    ours = [lvlm.generate_ids(b, max_new_tokens=new_tokens, intervention=config)[0].tolist() for b in free]
    batched = lvlm.generate_ids(together, max_new_tokens=new_tokens, intervention=config).tolist()
    eager = [reference_opera(lvlm, image, DESCRIBE_PROMPT, new_tokens).tokens for image in images]
    print(f"\nOPERA (defaults {config.to_spec()}, 5 beams) vs greedy and beam search 5, {new_tokens} new tokens")
    print(f"{'batch':>6}{'greedy tok/s':>14}{'beam5 tok/s':>13}{'opera tok/s':>13}{'vs greedy':>11}{'vs beam5':>10}")
    for size in sizes:
        greedy, beam, opera = (size * new_tokens / best[name, size] for name in ("greedy", "beam5", "opera"))
        print(f"{size:6}{greedy:14.1f}{beam:13.1f}{opera:13.1f}{opera / greedy:11.3f}{opera / beam:10.3f}")
    same = ours == eager
    print(
        f"OPERA batch 1 vs the eager reference, {len(images)} images, up to {new_tokens} tokens each: "
        f"{best['eager-free']:.2f} s vs {best['opera-free']:.2f} s, "
        f"{best['eager-free'] / best['opera-free']:.1f}x faster; same tokens: {same}"
    )
    same = all(row[: len(theirs)] == theirs for row, theirs in zip(batched, eager, strict=True))
    print(
        f"OPERA batch {len(images)} vs the eager reference: {best['opera-free-batched']:.2f} s, "
        f"{best['eager-free'] / best['opera-free-batched']:.1f}x faster; same tokens: {same}"
    )


def llava_proportions(toy: str) -> LVLM:
    """A random-weight LLaVA with LLaVA-1.5's proportions where they set the cost: 336 px images in 14 px patches
    (576 image tokens), a 16-layer Llama of width 1024 (16 heads, MLP 2816) and a 32,064-token vocabulary; a small
    CLIP tower (its cost is paid once per image, as in LLaVA). The toy model's tokenizer and template drive it."""
    processor = AutoProcessor.from_pretrained(toy)
    processor.image_processor.size = {"shortest_edge": 336}
    processor.image_processor.crop_size = {"height": 336, "width": 336}
    processor.patch_size = 14
    vision = CLIPVisionConfig(
        image_size=336, patch_size=14, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
        num_attention_heads=4,
    )  # fmt: skip
    text = LlamaConfig(
        hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, vocab_size=32064, max_position_embeddings=4096,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )  # fmt: skip
    torch.manual_seed(0)
    return LVLM.from_parts(LlavaForConditionalGeneration(config), processor, name_or_path="random LLaVA-1.5 shape")


def noise_images(count: int, size: int) -> list[Image.Image]:
    """Reproducible random RGB images (content does not change the cost: token counts are fixed)."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


# ----- isolated runs: one fresh process per system and batch size (peak memory; LLaVA-sized models) -----------
def build_model(model: str, llava: bool) -> LVLM:
    """The model under test: the given checkpoint, or a random-weight one with LLaVA-1.5's proportions."""
    return llava_proportions(model) if llava else load_lvlm(model, dtype="float32")


def resident_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MiB, from Linux's /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def system_kwargs(system: str) -> dict[str, object]:
    """What a system passes to ``generate_ids``: a name of SYSTEMS, or any intervention spec."""
    return SYSTEMS[system] if system in SYSTEMS else {"intervention": parse_intervention(system)}


def isolated_run(args: argparse.Namespace, system: str, size: int) -> dict[str, float]:
    """In a fresh process: build the model, warm up with a 2-token generation, reset the peak resident set size,
    then time one generation of exactly ``--new-tokens`` at batch ``size`` (with ``--steady`` then one of 1
    token); returns seconds and MiB (the loaded model's resident set and the peak during the long generation)."""
    torch.set_num_threads(args.threads)
    lvlm = build_model(args.model, args.llava_proportions)
    loaded = resident_mib("VmRSS")
    batch = lvlm.prepare(noise_images(size, args.image_size), [DESCRIBE_PROMPT] * size)
    clock, kwargs = CLOCKS[args.clock], system_kwargs(system)

    def timed(tokens: int) -> float:
        start = clock()
        lvlm.generate_ids(batch, max_new_tokens=tokens, min_new_tokens=tokens, **kwargs)
        return clock() - start

    with torch.inference_mode():
        timed(2)
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current resident set
        result = {"seconds": timed(args.new_tokens), "loaded_mib": loaded, "peak_mib": resident_mib("VmHWM")}
        if args.steady:
            result["first_seconds"] = timed(1)
    return result


def bench_isolated(args: argparse.Namespace) -> None:
    """Every system at batch 1 and ``--batch``, each run in its own process; prints tokens/s, the ratio to
    vanilla greedy (OPERA's also to beam search 5) and the peak resident set at the larger batch."""
    sizes, n = batch_sizes(args.batch), args.new_tokens
    systems = list(dict.fromkeys(["vanilla", *(args.systems or SYSTEMS)]))  # vanilla: the ratios' reference
    results: dict[tuple[str, int], dict[str, float]] = {}
    spawn = multiprocessing.get_context("spawn")
    jobs = [(system, size) for system in systems for size in sizes]
    for system, size in tqdm(jobs, desc="isolated runs", unit="run"):
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            results[system, size] = pool.submit(isolated_run, args, system, size).result()
    print(f"\nisolated runs, {n} new tokens, {args.threads} thread(s), {args.clock} clock; MiB at batch {args.batch}")
    steady = f"{'steady':>8}" if args.steady else ""
    print(
        f"{'system':16}" + "".join(f"{f'b{s} tok/s':>12}{'ratio':>8}{steady}" for s in sizes)
        + f"{'loaded':>9}{'peak':>9}{'peak-vanilla':>14}"
    )  # fmt: skip
    for system in systems:
        cells = ""
        for size in sizes:
            ours, base = results[system, size], results["vanilla", size]
            cells += f"{size * n / ours['seconds']:12.2f}{base['seconds'] / ours['seconds']:8.3f}"
            if args.steady:  # per-token cost after the first step: (T(N) - T(1)) / (N - 1)
                ratio = (base["seconds"] - base["first_seconds"]) / (ours["seconds"] - ours["first_seconds"])
                cells += f"{ratio:8.3f}"
        big, vanilla = results[system, args.batch], results["vanilla", args.batch]
        extra = big["peak_mib"] - vanilla["peak_mib"]
        print(f"{system:16}{cells}{big['loaded_mib']:9.0f}{big['peak_mib']:9.0f}{extra:+14.0f}")
    for size in sizes if {"beam5", "opera"} <= set(systems) else ():
        ratio = results["beam5", size]["seconds"] / results["opera", size]["seconds"]
        print(f"opera vs beam search 5 at batch {size}: {ratio:.3f}")


def main() -> None:
    """Time every method and baseline, then print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="halluc/assets/toy-llava")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--llava-proportions",
        action="store_true",
        help="time a random-weight model with LLaVA-1.5's proportions (576 image tokens, 16 x 1024 Llama) instead",
    )
    parser.add_argument("--only-opera", action="store_true", help="time only OPERA against its baselines")
    parser.add_argument(
        "--isolated",
        action="store_true",
        help="run each system once in a fresh process: tokens/s and peak resident memory (implied by "
        "--llava-proportions)",
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        metavar="SYSTEM",
        help=f"with --isolated: systems to time (vanilla always): {', '.join(SYSTEMS)}, or intervention specs",
    )
    parser.add_argument(
        "--steady", action="store_true", help="with --isolated: also time 1 token per system, for steady-state ratios"
    )
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="process",
        help="process: CPU seconds of this process (robust on a shared machine when --threads 1); wall: real time",
    )
    args = parser.parse_args()
    if args.only_opera and (args.isolated or args.llava_proportions):
        parser.error("--only-opera times OPERA in one process; --isolated and --llava-proportions run every system")
    if (args.systems or args.steady) and not (args.isolated or args.llava_proportions):
        parser.error("--systems and --steady are options of the isolated runs (--isolated or --llava-proportions)")
    for system in args.systems or ():
        try:
            system_kwargs(system)
        except ConfigError as exc:  # before any model is built
            parser.error(f"--systems {system!r}: {exc}")
    if not Path(args.model).is_dir():
        parser.error(f"no model at {args.model}; train it (scripts/train_toy_lvlm.py) or pass --model PATH")
    if args.isolated or args.llava_proportions:
        bench_isolated(args)
        return
    torch.set_num_threads(args.threads)
    lvlm = load_lvlm(args.model, dtype="float32")
    images = noise_images(args.batch, args.image_size)
    n = args.new_tokens
    print(f"{lvlm}; {n} new tokens; {args.threads} thread(s); {args.clock} clock, best of {args.repeats} rounds")

    if args.only_opera:
        with torch.inference_mode():
            bench_opera(lvlm, images, n, args.repeats, CLOCKS[args.clock])
        return
    sizes = batch_sizes(args.batch)
    runs = {
        (name, size, tokens): (lambda c=config, s=size, t=tokens: ours(lvlm, c, images[:s], t))
        for name, config in METHODS.items()
        for size in sizes
        for tokens in (1, n)
    }
    runs.update({(name, "eager", n): (lambda m=name: run_baseline(lvlm, m, images, n)) for name in BASELINES})
    with torch.inference_mode():
        best = fastest(runs, args.repeats, CLOCKS[args.clock])
        few = images[:4]
        same = {
            name: run_baseline(lvlm, name, few, 8) == [ours(lvlm, METHODS[name], [image], 8)[0] for image in few]
            for name in BASELINES
        }

    def rate(name: str, size: int) -> tuple[float, float]:
        """(end-to-end, steady-state) generated tokens/s."""
        full, first = best[name, size, n], best[name, size, 1]
        return size * n / full, size * (n - 1) / (full - first)

    print(f"\n{'method':16}" + "".join(f"{f'b{s} tok/s':>12}{'ratio':>8}{'steady':>8}" for s in sizes))
    for name in METHODS:
        cells = ""
        for size in sizes:
            (tps, steady), (base, base_steady) = rate(name, size), rate("vanilla", size)
            cells += f"{tps:12.1f}{tps / base:8.3f}{steady / base_steady:8.3f}"
        print(f"{name:16}{cells}")
    header = f"{'eager b1 tok/s':>16}{f'halluc b{args.batch}':>14}{'speedup':>10}{'same tokens b1':>16}"
    print(f"\n{'method':16}{header}")
    for name in BASELINES:
        eager = len(images) * n / best[name, "eager", n]
        fast = rate(name, args.batch)[0]
        print(f"{name:16}{eager:16.1f}{fast:14.1f}{fast / eager:9.1f}x{str(same[name]):>16}")
    with torch.inference_mode():
        bench_opera(lvlm, images, n, args.repeats, CLOCKS[args.clock])


if __name__ == "__main__":
    main()
