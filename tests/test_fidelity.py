"""Each method, batched, against a straightforward eager batch-1 implementation of its official algorithm
(``benchmarks.reference_methods``): the same greedy tokens and the same final scores at every step (to 1e-4,
after log-softmax over the tokens left finite), on every tiny family the official method applies to."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scores import generate_with_scores
from tiny_models import TINY_FAMILIES, build_tiny

from benchmarks.reference_methods import (
    ReferenceRun,
    reference_pai,
    reference_token_emphasis,
    reference_vhr,
    reference_vista,
)
from halluc.models import LVLM
from interventions import PAI, VHR, VISTA, Intervention, TokenEmphasis

torch.set_num_threads(1)

IMAGES = [
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)),
    None,  # a text-only sample in the same batch
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (56, 24, 3), dtype=np.uint8)),
]
PROMPTS = ["Describe this image in detail.", "Is there a dog?", "What objects can you see in this picture?"]
STEPS = 4


def run_reference(lvlm: LVLM, config: Intervention, image, prompt: str) -> ReferenceRun:
    """The reference for ``config`` on one sample."""
    if isinstance(config, PAI):
        return reference_pai(lvlm, image, prompt, STEPS, config.alpha, config.cfg, config.gamma, config.cutoff)
    if isinstance(config, VHR):
        return reference_vhr(lvlm, image, prompt, STEPS, config.alpha)
    if isinstance(config, VISTA):
        return reference_vista(lvlm, image, prompt, STEPS, config.strength, config.alpha)
    if image is None:  # token emphasis edits nothing without an image; only its CFG acts
        return reference_pai(lvlm, None, prompt, STEPS, 0.0, True, config.gamma, config.cutoff)
    return reference_token_emphasis(
        lvlm, image, prompt, STEPS, config.local, config.summary, config.fraction, config.gamma
    )


def assert_same(lvlm: LVLM, config: Intervention) -> None:
    """Batched halluc vs the reference one sample at a time: tokens, and scores after log-softmax."""
    ids, scores = generate_with_scores(lvlm, IMAGES, PROMPTS, config, STEPS)
    for row, (image, prompt) in enumerate(zip(IMAGES, PROMPTS, strict=True)):
        expected = run_reference(lvlm, config, image, prompt)
        assert ids[row].tolist() == expected.tokens, f"sample {row}"
        for step in range(STEPS):
            ours, theirs = (torch.log_softmax(s.float(), dim=-1) for s in (scores[step, row], expected.scores[step]))
            assert torch.equal(ours.isfinite(), theirs.isfinite()), f"sample {row}, step {step}: cut-off differs"
            finite = theirs.isfinite()
            assert torch.allclose(ours[finite], theirs[finite], atol=1e-4), f"sample {row}, step {step}"


@pytest.fixture(params=TINY_FAMILIES)
def lvlm(request: pytest.FixtureRequest) -> LVLM:
    return build_tiny(request.param)


@pytest.mark.parametrize(
    "config",
    [PAI(), PAI(alpha=3.0, cfg=False), PAI(alpha=1.0, gamma=3.0, cutoff=0.05)],
    ids=["defaults", "strong-attention", "strong-cfg"],
)
def test_pai_matches_the_official_algorithm(lvlm: LVLM, config: PAI) -> None:
    assert_same(lvlm, config)


@pytest.mark.parametrize("config", [VHR(), VHR(alpha=8.0)], ids=["defaults", "strong"])
def test_vhr_matches_algorithm_1(lvlm: LVLM, config: VHR) -> None:
    assert_same(lvlm, config)


@pytest.mark.parametrize(
    "config",
    [TokenEmphasis(), TokenEmphasis(local=5.0, summary=3.0, gamma=2.0)],
    ids=["defaults", "strong"],
)
def test_token_emphasis_matches_paint_on_llava(config: TokenEmphasis) -> None:
    assert_same(build_tiny("llava"), config)  # PAINT reads CLIP's CLS attention: LLaVA-1.5 only


@pytest.mark.parametrize(
    "config",
    [VISTA(), VISTA(strength=1.0, alpha=0.6), VISTA(strength=0.0)],
    ids=["defaults", "strong", "self-logits-alone"],
)
def test_vista_matches_the_official_algorithm(lvlm: LVLM, config: VISTA) -> None:
    assert_same(lvlm, config)


def test_vista_without_steering_runs_no_paired_prefill() -> None:
    lvlm = build_tiny("llava")
    batch = lvlm.prepare(IMAGES, PROMPTS)
    forwards: list[int] = []
    hook = lvlm.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    counts = {}
    try:
        for config in (None, VISTA(), VISTA(strength=0.0)):
            before = len(forwards)
            lvlm.generate_ids(batch, max_new_tokens=2, intervention=config)
            counts[config] = len(forwards) - before
    finally:
        hook.remove()
    assert counts[VISTA()] == counts[VISTA(strength=0.0)] + 1  # the paired prefill, only when it steers
    assert counts[VISTA(strength=0.0)] == counts[None] + 1  # the firing monitor's unedited prefill
