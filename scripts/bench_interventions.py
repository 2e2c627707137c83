"""Benchmark the interventions: generated tokens/s vs vanilla at batch 1 and 16, and vs eager batch-1 baselines.

    python scripts/bench_interventions.py --model halluc/assets/toy-llava [--new-tokens 32] [--threads 1]

For each method (VHR, token emphasis, PAI, PAI + CFG) it times ``LVLM.generate_ids`` with exactly ``--new-tokens``
new tokens (EOS suppressed) at batch 1 and 16 and prints tokens/s and the ratio to vanilla, both end to end and
in steady state (``(T(N) - T(1)) / (N - 1)`` per token, i.e. after the first step, which for VHR holds its head
selection). It then times BASELINES: straightforward reimplementations of the same edits in the style of the
papers' public code (eager attention over every row, one sample at a time, VHR selecting layer by layer with two
forwards per layer), written below in this script, and prints how much faster halluc at batch 16 is, plus whether
both produce the same tokens at batch 1.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from halluc.defaults import DESCRIBE_PROMPT
from halluc.models import LVLM, PreparedBatch, load_lvlm
from interventions import PAI, VHR, Intervention, TokenEmphasis, select_heads, select_tokens
from interventions.modality import pai_layers
from interventions.vhr import vhr_layers

METHODS: dict[str, Intervention | None] = {
    "vanilla": None,
    "vhr": VHR(),
    "token_emphasis": TokenEmphasis(cfg=False),
    "pai": PAI(cfg=False),
    "pai+cfg": PAI(),
}

# ----- baselines: eager attention, batch 1, edits as in the public reference code --------------------------------
BASELINE_ATTENTION = "bench_eager_edit"
LAST_ROW_EDITS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}  # layer -> edit of [1, heads, keys] scores


def eager_edit_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """BASELINE: full eager attention; the last query row's scores go through LAST_ROW_EDITS[layer]."""
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    weights = query @ key.transpose(2, 3) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    edit = LAST_ROW_EDITS.get(module.layer_idx)
    if edit is not None:
        weights[:, :, -1] = edit(weights[:, :, -1])
    probs = weights.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    return (probs @ value).transpose(1, 2).contiguous(), probs


def baseline_generate(lvlm: LVLM, batch: PreparedBatch, new_tokens: int) -> torch.Tensor:
    """BASELINE: plain ``model.generate`` on one sample with the eager edit attention."""
    out = lvlm.model.generate(**batch.inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return out[:, batch.prompt_length :]


def baseline_pai(lvlm: LVLM, batch: PreparedBatch, new_tokens: int) -> torch.Tensor:
    """BASELINE PAI: image slice [start, end) of the last row gets ``a + alpha|a|`` on PAI's layers."""
    positions = batch.image_positions[0]
    start, end, alpha = int(positions[0]), int(positions[-1]) + 1, METHODS["pai"].alpha

    def edit(scores: torch.Tensor) -> torch.Tensor:
        scores[..., start:end] = scores[..., start:end] + alpha * scores[..., start:end].abs()
        return scores

    LAST_ROW_EDITS.update({layer: edit for layer in pai_layers(lvlm.num_layers)})
    return baseline_generate(lvlm, batch, new_tokens)


def baseline_token_emphasis(lvlm: LVLM, batch: PreparedBatch, new_tokens: int) -> torch.Tensor:
    """BASELINE token emphasis: eager vision pass for the first and feature layers' CLS attention, then edit."""
    config = METHODS["token_emphasis"]
    positions = batch.image_positions[0]
    vision_config = lvlm.model.config.vision_config
    vision_config._attn_implementation = "eager"
    try:
        vision = lvlm.vision_tower(batch.inputs["pixel_values"], output_attentions=True)
    finally:
        vision_config._attn_implementation = "sdpa"
    first, feature = (vision.attentions[k].mean(dim=1)[0, 0, 1:] for k in (0, lvlm.model.config.vision_feature_layer))
    local, summary = select_tokens(first, feature, config.fraction)
    strength = local.float() * config.local + summary.float() * config.summary  # [image tokens], all heads alike

    def edit(scores: torch.Tensor) -> torch.Tensor:
        scores[..., positions] = scores[..., positions] + strength * scores[..., positions].abs()
        return scores

    LAST_ROW_EDITS.update({layer: edit for layer in pai_layers(lvlm.num_layers)})
    return baseline_generate(lvlm, batch, new_tokens)


def baseline_vhr(lvlm: LVLM, batch: PreparedBatch, new_tokens: int) -> torch.Tensor:
    """BASELINE VHR: per VHR layer in order, one image and one text-only forward; then generate with the scales."""
    alpha, text = VHR().alpha, lvlm.text_only(batch)
    scales: dict[int, torch.Tensor] = {}
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(module, args):
            heads = args[0].reshape(*args[0].shape[:-1], lvlm.num_heads, lvlm.head_dim).clone()
            captured[layer] = heads[0, -1]  # [heads, head_dim] at the last position
            if layer in scales:
                heads[:, -1] = heads[:, -1] * scales[layer][:, None]
            return (heads.reshape(args[0].shape),)

        return hook

    layers = vhr_layers(lvlm.num_layers)
    hooks = [lvlm.o_proj(layer).register_forward_pre_hook(make_hook(layer)) for layer in layers]
    try:
        for layer in layers:
            lvlm.model(**batch.inputs)
            with_image = captured[layer]
            lvlm.model(**text.inputs)
            text_only = captured[layer]
            vhd = (with_image - text_only).norm(dim=-1)[None]
            chosen = select_heads(vhd, text_only.pow(2).sum(dim=-1)[None])[0]
            scales[layer] = torch.where(chosen, alpha, 1.0)
        return baseline_generate(lvlm, batch, new_tokens)
    finally:
        for hook in hooks:
            hook.remove()


BASELINES = {"vhr": baseline_vhr, "token_emphasis": baseline_token_emphasis, "pai": baseline_pai}


def run_baseline(lvlm: LVLM, method: str, images: list[Image.Image], new_tokens: int) -> list[list[int]]:
    """Run a baseline one sample at a time with the eager edit attention; returns the new tokens per sample."""
    if BASELINE_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(BASELINE_ATTENTION, eager_edit_attention)
        AttentionMaskInterface.register(BASELINE_ATTENTION, eager_mask)
    lvlm.set_attn_implementation(BASELINE_ATTENTION)
    try:
        replies = []
        for image in images:
            LAST_ROW_EDITS.clear()
            replies.append(BASELINES[method](lvlm, lvlm.prepare([image], [DESCRIBE_PROMPT]), new_tokens)[0].tolist())
        return replies
    finally:
        LAST_ROW_EDITS.clear()
        lvlm.set_attn_implementation("sdpa")


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


def noise_images(count: int, size: int) -> list[Image.Image]:
    """Reproducible random RGB images (content does not change the cost: token counts are fixed)."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


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
        "--clock",
        choices=tuple(CLOCKS),
        default="process",
        help="process: CPU seconds of this process (robust on a shared machine when --threads 1); wall: real time",
    )
    args = parser.parse_args()
    if not Path(args.model).is_dir():
        parser.error(f"no model at {args.model}; train it (scripts/train_toy_lvlm.py) or pass --model PATH")
    torch.set_num_threads(args.threads)
    lvlm = load_lvlm(args.model, dtype="float32")
    images = noise_images(args.batch, args.image_size)
    n = args.new_tokens
    print(f"{lvlm}; {n} new tokens; {args.threads} thread(s); {args.clock} clock, best of {args.repeats} rounds")

    sizes = (1, args.batch)
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


if __name__ == "__main__":
    main()
