"""Visual contrastive decoding, VCD ("Mitigating Object Hallucinations in Large Vision-Language Models through
Visual Contrastive Decoding", Leng et al., CVPR 2024; official code DAMO-NLP-SG/VCD).

Each step contrasts the model's next-token distribution with the same model's on a noised copy of the image:
``(1 + alpha) * logits - alpha * logits_noised``, keeping only tokens whose probability given the clean image is at
least ``beta`` times the top one (the adaptive plausibility constraint). Language priors and statistical biases
show up in both branches and cancel; what only the clean image supports is amplified.

Noise: the forward diffusion process of DDPM applied to the processor's (normalised) pixel values,
``sqrt(abar_t) * x + sqrt(1 - abar_t) * eps``, with 1,000 steps of betas ``sigmoid(linspace(-6, 6)) *
(5e-3 - 1e-5) + 1e-5`` and ``t = noise_step``. Defaults are the official evaluation scripts': ``alpha`` 1,
``beta`` 0.1, ``noise_step`` 500. The official code draws ``eps`` from the global RNG; here each image's noise comes
from a generator seeded by ``seed`` and the image's own pixels, so a sample gets the same noise in any batch and
in every run. The noised branch is a ``ContrastBranch`` with its own KV cache (one extra forward per step), and
``ContrastiveGuidance`` applies the formula on log-probabilities (equal to the official raw-logit formula up to a
per-row constant, hence the same distribution). For a sample without an image both branches agree, so only the
plausibility cut-off acts (the greedy choice is unchanged).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import torch

from halluc.errors import ConfigError
from halluc.models import LVLM, GenerationHook, PreparedBatch
from interventions.base import Handle, Intervention, register
from interventions.batching import add_generation_hook
from interventions.contrastive import ContrastBranch, ContrastiveGuidance

__all__ = ["VCD", "diffusion_noise", "noised_inputs"]

DIFFUSION_STEPS = 1000


def _alpha_bars() -> torch.Tensor:
    """``[1000]`` cumulative products of ``1 - beta_t`` for VCD's sigmoid beta schedule."""
    betas = torch.sigmoid(torch.linspace(-6, 6, DIFFUSION_STEPS)) * (5e-3 - 1e-5) + 1e-5
    return torch.cumprod(1 - betas, dim=0)


def diffusion_noise(pixels: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
    """``pixels`` after ``step`` forward diffusion steps: ``sqrt(abar) * x + sqrt(1 - abar) * eps``."""
    alpha_bar = _alpha_bars()[step]
    eps = torch.randn(pixels.shape, generator=generator, dtype=torch.float32)
    noised = alpha_bar.sqrt() * pixels.float().cpu() + (1 - alpha_bar).sqrt() * eps
    return noised.to(device=pixels.device, dtype=pixels.dtype)


def _noise_each_image(images: list[torch.Tensor], step: int, seed: int) -> list[torch.Tensor]:
    """Noise per image, seeded by ``seed`` and the image's bytes; all-zero padding images stay zero."""
    noised = []
    for image in images:
        if not image.any():
            noised.append(image)
            continue
        content = zlib.crc32(image.detach().float().cpu().numpy().tobytes())
        noised.append(diffusion_noise(image, step, torch.Generator().manual_seed((seed << 32) | content)))
    return noised


def noised_inputs(lvlm: LVLM, batch: PreparedBatch, step: int, seed: int) -> dict[str, torch.Tensor]:
    """The batch's model inputs with every image's pixel values noised (one image = one noise draw)."""
    inputs = dict(batch.inputs)
    pixels = inputs["pixel_values"]
    if lvlm.family.grid == "thw":  # Qwen2-VL: patches of all images stacked, image_grid_thw says how many each
        counts = inputs["image_grid_thw"].prod(dim=-1).tolist()
        inputs["pixel_values"] = torch.cat(_noise_each_image(list(pixels.split(counts)), step, seed))
    else:  # one leading row per image (per sample and image for families with nested image lists)
        flat = pixels.flatten(0, 1) if lvlm.family.nested_images else pixels
        inputs["pixel_values"] = torch.stack(_noise_each_image(list(flat.unbind(0)), step, seed)).view_as(pixels)
    return inputs


@register("vcd")
@dataclass(frozen=True)
class VCD(Intervention):
    """Contrast each step with a noised-image branch: ``(1 + alpha) l - alpha l_noised`` on plausible tokens."""

    alpha: float = 1.0
    beta: float = 0.1
    noise_step: int = 500
    seed: int = 0

    def check(self) -> None:
        """Check every value, naming the bad one."""
        if not self.alpha >= 0:
            raise ConfigError(f"vcd: alpha must be >= 0, got {self.alpha!r}")
        if not 0 <= self.beta < 1:
            raise ConfigError(f"vcd: beta must be in [0, 1), got {self.beta!r}")
        if not 0 <= self.noise_step < DIFFUSION_STEPS:
            raise ConfigError(f"vcd: noise_step must be in [0, {DIFFUSION_STEPS}), got {self.noise_step!r}")
        if self.seed < 0:
            raise ConfigError(f"vcd: seed must be >= 0, got {self.seed!r}")

    def follows_one_row_per_sample(self) -> bool:
        """The noised-image branch steps with one sequence per prompt."""
        return True

    def install(self, lvlm: LVLM, handle: Handle) -> None:
        """Register the per-call hook that builds the noised branch and its processor."""
        handle.on_remove(add_generation_hook(lvlm, _NoisedContrast(self)))


class _NoisedContrast(GenerationHook):
    """A fresh noised-image branch and guidance processor for each generate call that has images."""

    def __init__(self, config: VCD) -> None:
        """Keep the strengths."""
        self.config = config

    def logits_processors(self, lvlm: LVLM, batch: PreparedBatch) -> list[ContrastiveGuidance]:
        """The contrast processor, or none for a batch without images (nothing to noise)."""
        if not any(batch.has_image):
            return []
        config = self.config
        branch = ContrastBranch(lvlm, noised_inputs(lvlm, batch, config.noise_step, config.seed))
        return [ContrastiveGuidance(branch, gamma=1 + config.alpha, cutoff=config.beta)]

    def report(self, lvlm: LVLM, batch: PreparedBatch) -> list[dict[str, Any]] | None:
        """Per sample: whether it had an image to noise (without one both branches agree)."""
        return [{"vcd": {"noised_image": has}} for has in batch.has_image]
