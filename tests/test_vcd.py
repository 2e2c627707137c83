"""VCD against an independent eager batch-1 implementation of the official algorithm (DAMO-NLP-SG/VCD), on every
tiny family: the same processed scores at every step and the same greedy tokens; plus batching, detaching, checks."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
from scores import generate_with_scores
from test_fidelity import IMAGES, PROMPTS
from tiny_models import TINY_FAMILIES, build_tiny

from halluc.errors import ConfigError
from halluc.models import LVLM
from interventions import PAI, VCD, apply, parse_intervention

torch.set_num_threads(1)

STEPS = 4
STRONG = VCD(alpha=3.0, beta=0.05, noise_step=900)


def generate(lvlm: LVLM, images: list, prompts: list[str], config: VCD | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy new tokens ``[batch, STEPS]`` and the final scores ``[STEPS, batch, vocab]``."""
    return generate_with_scores(lvlm, images, prompts, config, STEPS)


# ----- the reference: written from the official algorithm, one sample, full forwards without a cache -----------
def reference_noise(pixels: torch.Tensor, step: int, seed: int) -> torch.Tensor:
    """q(x_t | x_0) of VCD's vcd_add_noise.py: 1000 sigmoid-schedule betas in [1e-5, 5e-3], t = step."""
    betas = torch.sigmoid(torch.linspace(-6, 6, 1000)) * (0.5e-2 - 1e-5) + 1e-5
    alphas_bar_sqrt = torch.sqrt(torch.cumprod(1 - betas, dim=0))
    one_minus_bar_sqrt = torch.sqrt(1 - torch.cumprod(1 - betas, dim=0))
    # the official code draws eps from the global RNG; halluc's documented choice: one generator per image
    generator = torch.Generator().manual_seed((seed << 32) | zlib.crc32(pixels.float().numpy().tobytes()))
    eps = torch.randn(pixels.shape, generator=generator)
    return (alphas_bar_sqrt[step] * pixels.float() + one_minus_bar_sqrt[step] * eps).to(pixels.dtype)


def noise_one_sample(lvlm: LVLM, inputs: dict[str, torch.Tensor], config: VCD) -> dict[str, torch.Tensor]:
    """One sample's inputs with its single image noised."""
    pixels = inputs["pixel_values"]
    if lvlm.family.nested_images:  # [1, images, C, H, W]
        pixels = torch.stack([reference_noise(image, config.noise_step, config.seed) for image in pixels[0]])[None]
    elif lvlm.family.grid == "thw":  # all patches of the one image
        pixels = reference_noise(pixels, config.noise_step, config.seed)
    else:  # [1, ...]
        pixels = reference_noise(pixels[0], config.noise_step, config.seed)[None]
    return {**inputs, "pixel_values": pixels}


def last_logits(lvlm: LVLM, inputs: dict[str, torch.Tensor], new: list[int]) -> torch.Tensor:
    """Full forward (no cache) of the prompt plus ``new`` tokens; logits of the last position, ``[vocab]``."""
    extended = dict(inputs)
    tail = torch.tensor([new], dtype=torch.long)
    for name, value in inputs.items():
        if value.dim() == 2 and value.shape == inputs["input_ids"].shape:
            fill = tail if name == "input_ids" else torch.full_like(tail, 1 if name == "attention_mask" else 0)
            extended[name] = torch.cat([value, fill.to(value.dtype)], dim=1)
    with torch.no_grad():
        return lvlm.model(**extended).logits[0, -1].float()


def reference_vcd(lvlm: LVLM, image, prompt: str, config: VCD) -> tuple[list[int], list[torch.Tensor]]:
    """vcd_sample.py's step, greedy: d = (1+a) l - a l_cd, masked where l < log(beta) + max l; argmax."""
    inputs = dict(lvlm.prepare([image], [prompt]).inputs)
    noised = noise_one_sample(lvlm, inputs, config) if image is not None else inputs
    new: list[int] = []
    scores: list[torch.Tensor] = []
    for _ in range(STEPS):
        clean, cd = last_logits(lvlm, inputs, new), last_logits(lvlm, noised, new)
        clean[lvlm.model.generation_config.eos_token_id or 0] = -math.inf  # min_new_tokens keeps EOS out
        diffs = (1 + config.alpha) * clean - config.alpha * cd
        cutoff = math.log(config.beta) + clean.max() if config.beta > 0 else -math.inf
        step_scores = diffs.masked_fill(clean < cutoff, -math.inf)
        scores.append(step_scores)
        new.append(int(step_scores.argmax()))
    return new, scores


@pytest.fixture(params=TINY_FAMILIES)
def lvlm(request: pytest.FixtureRequest) -> LVLM:
    return build_tiny(request.param)


def normalised(scores: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the finite entries (the formula is defined up to a per-row constant)."""
    return torch.log_softmax(scores.float(), dim=-1)


def test_vcd_matches_the_official_algorithm_one_sample_at_a_time(lvlm: LVLM) -> None:
    ids, scores = generate(lvlm, IMAGES, PROMPTS, STRONG)
    for row, (image, prompt) in enumerate(zip(IMAGES, PROMPTS, strict=True)):
        tokens, expected = reference_vcd(lvlm, image, prompt, STRONG)
        assert ids[row].tolist() == tokens
        for step in range(STEPS):
            ours, theirs = normalised(scores[step, row]), normalised(expected[step])
            assert torch.equal(ours.isfinite(), theirs.isfinite()), "the plausibility cut-off keeps other tokens"
            finite = theirs.isfinite()
            assert torch.allclose(ours[finite], theirs[finite], atol=1e-4)


def test_vcd_changes_outputs_and_detaches_exactly(lvlm: LVLM) -> None:
    plain_ids, plain_scores = generate(lvlm, IMAGES, PROMPTS, None)
    _, strong_scores = generate(lvlm, IMAGES, PROMPTS, STRONG)
    assert not torch.allclose(normalised(strong_scores[0, [0, 2]]), normalised(plain_scores[0, [0, 2]]))
    neutral_ids, _ = generate(lvlm, IMAGES, PROMPTS, VCD(alpha=0.0, beta=0.0))
    assert torch.equal(neutral_ids, plain_ids)
    again_ids, again_scores = generate(lvlm, IMAGES, PROMPTS, None)
    assert torch.equal(again_ids, plain_ids) and torch.equal(again_scores, plain_scores)
    assert lvlm.generation_hooks == []


def test_vcd_batched_equals_one_by_one_and_composes() -> None:
    lvlm = build_tiny("llava")
    batched, _ = generate(lvlm, IMAGES, PROMPTS, STRONG)
    singles = [generate(lvlm, [image], [prompt], STRONG)[0][0] for image, prompt in zip(IMAGES, PROMPTS, strict=True)]
    assert batched.tolist() == [single.tolist() for single in singles]
    with apply(lvlm, STRONG, PAI(alpha=2.0)) as handles:
        assert [h.name for h in handles] == ["vcd", "pai"]
        assert lvlm.generate(IMAGES, PROMPTS, max_new_tokens=2)
    assert lvlm.generation_hooks == [] and lvlm.attn_implementation == "sdpa"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("vcd:alpha=-1", r"vcd: alpha must be >= 0, got -1.0"),
        ("vcd:beta=1", r"vcd: beta must be in \[0, 1\), got 1.0"),
        ("vcd:noise_step=1000", r"vcd: noise_step must be in \[0, 1000\), got 1000"),
        ("vcd:alpha=nan", r"vcd: alpha=nan is not a finite number"),
    ],
)
def test_vcd_rejects_bad_values(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_intervention(spec)
