"""DoLa against an eager batch-1 implementation of the official algorithm, on every tiny family.

The reference below is written from the algorithm (voidism/DoLa ``dola_greedy_decode`` and transformers 4.46's
``_dola_decoding``), not from ``interventions/dola.py``: each step runs the full model on the whole sequence with
``output_hidden_states=True`` and no cache, sends ``hidden_states[l][:, -1]`` of every candidate through
``lm_head``, picks the candidate with the largest Jensen-Shannon divergence from the final layer, contrasts the
log-probabilities on the relative-top plausible set and applies the repetition penalty token by token.

The shared tiny models have near-uniform next-token distributions (every token is plausible, the JS divergences
of the two layers differ in the fifth digit), which would leave the filter and the selection untested. The models
here are fresh copies with the input embeddings and ``lm_head`` scaled by 16: the plausible sets shrink to a few
tokens and the two candidate layers both get chosen.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
import torch
from PIL import Image
from scores import LastScores
from tiny_models import TINY_FAMILIES, tiny_parts
from transformers import LogitsProcessor

from halluc.errors import ConfigError
from halluc.models import LVLM, GenerationHook, PreparedBatch
from interventions import PAI, DoLa, add_generation_hook, apply, owned_forward, parse_intervention
from interventions.dola import dola_contrast, premature_candidates

torch.set_num_threads(1)

IMAGES = [
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)),  # landscape
    None,  # text-only sample: DoLa applies to it too
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (56, 24, 3), dtype=np.uint8)),  # portrait
]
PROMPTS = ["Describe this image in detail.", "Is there a dog?", "What objects can you see in this picture?"]
STEPS = 4
BOTH = DoLa(layers="0+1")  # two candidates on the 2-layer tiny models, so the JS selection runs
SHARPEN = 16.0


@cache
def sharp(family: str) -> LVLM:
    """A fresh tiny LVLM of ``family`` with input embeddings and ``lm_head`` scaled by SHARPEN (see the docstring)."""
    model, processor = tiny_parts(family)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(SHARPEN)
        model.get_output_embeddings().weight.mul_(SHARPEN)
    return LVLM.from_parts(model, processor, name_or_path=f"sharp-{family}")


def run(lvlm: LVLM, batch: PreparedBatch, *methods: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
    """New tokens ``[rows, new]`` and processed scores ``[steps, rows, vocab]`` of a greedy run under ``methods``."""
    hook = LastScores()  # added after the methods, so it records the scores they produced
    with apply(lvlm, *methods):
        undo = add_generation_hook(lvlm, hook)
        try:
            new = lvlm.generate_ids(batch, max_new_tokens=STEPS, **kwargs)
        finally:
            undo()
    return new, torch.stack(hook.steps)


def reference(
    lvlm: LVLM, image: Image.Image | None, prompt: str, layers: list[int], relative_top: float, penalty: float
):
    """Tokens, scores and chosen layers of the official DoLa, batch 1, eager: a full forward per step, no cache."""
    inputs = dict(lvlm.prepare([image], [prompt]).inputs)
    ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
    tokens, scores, chosen = [], [], []
    for _ in range(STEPS):
        with torch.no_grad():
            out = lvlm.model(input_ids=ids, attention_mask=mask, **inputs, output_hidden_states=True, use_cache=False)
            final = out.logits[0, -1].float()
            early = {layer: lvlm.lm_head(out.hidden_states[layer][0, -1]).float() for layer in layers}
        p = torch.softmax(final, -1)
        best, best_js = layers[0], -math.inf
        for layer in layers:  # the most distant candidate; the first one on ties
            q = torch.softmax(early[layer], -1)
            m = (p + q) / 2
            js = 0.5 * ((m * (m.log() - p.log())).mean() + (m * (m.log() - q.log())).mean())
            if len(layers) > 1 and js > best_js:
                best, best_js = layer, js.item()
        log_final, log_base = torch.log_softmax(final, -1), torch.log_softmax(early[best], -1)
        plausible = log_final >= log_final.max() + math.log(relative_top)
        step = torch.where(plausible, log_final - log_base, torch.full_like(final, -math.inf))
        for token in set(ids[0].tolist()):
            step[token] = step[token] * penalty if step[token] < 0 else step[token] / penalty
        token = int(step.argmax())
        chosen.append(best)
        tokens.append(token)
        scores.append(step)
        for name, value in inputs.items():  # per-token inputs (Qwen's mm_token_type_ids): 0 = text
            if value.shape == ids.shape:
                inputs[name] = torch.cat([value, torch.zeros_like(value[:, :1])], dim=1)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return tokens, torch.stack(scores), chosen


def assert_scores_equal(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Same -inf pattern, finite values equal to 1e-4."""
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    finite = torch.isfinite(ours)
    torch.testing.assert_close(ours[finite], theirs[finite], atol=1e-4, rtol=0)


@pytest.fixture(params=TINY_FAMILIES)
def lvlm(request: pytest.FixtureRequest) -> LVLM:
    """The sharpened tiny LVLM of one model type."""
    return sharp(request.param)


@pytest.mark.parametrize("config", [BOTH, DoLa(), DoLa(layers="low", relative_top=0.3, repetition_penalty=1.0)])
def test_matches_the_official_algorithm(lvlm: LVLM, config: DoLa) -> None:
    image, prompt = IMAGES[0], PROMPTS[0]
    new, scores = run(lvlm, lvlm.prepare([image], [prompt]), config)
    layers = list(config.candidates(lvlm))
    tokens, expected, _ = reference(lvlm, image, prompt, layers, config.relative_top, config.repetition_penalty)
    steps = new.shape[1]  # fewer than STEPS only if the model chose EOS, which the reference must then choose too
    assert steps == STEPS or tokens[steps - 1] == lvlm.model.generation_config.eos_token_id
    assert new[0].tolist() == tokens[:steps]
    assert_scores_equal(scores[:, 0], expected[:steps])


def test_the_fixture_exercises_filter_and_selection() -> None:
    tokens, scores, chosen = reference(sharp("llava_next"), IMAGES[0], PROMPTS[0], [0, 1], 0.1, 1.2)
    assert set(chosen) == {0, 1}
    assert 1 < torch.isfinite(scores).sum(dim=-1).min() < scores.shape[-1] / 10


def test_each_row_picks_its_own_layer() -> None:
    generator = torch.Generator().manual_seed(0)
    final = torch.randn(5, 50, generator=generator) * 3  # [rows, vocab]
    premature = torch.randn(4, 5, 50, generator=generator) * 3  # [candidates, rows, vocab]
    contrast, chosen = dola_contrast(final, premature, 0.1)
    assert len(set(chosen.tolist())) > 1  # the rows disagree, so a batch mean would change some of them
    for row in range(5):
        alone, pick = dola_contrast(final[row : row + 1], premature[:, row : row + 1], 0.1)
        assert pick.item() == chosen[row].item()
        assert torch.equal(alone[0], contrast[row])


def test_candidate_layers_follow_the_official_rule() -> None:
    assert premature_candidates("low", 32, tied=False) == (0, 2, 4, 6, 8, 10, 12, 14)  # README llama-7b
    assert premature_candidates("high", 32, tied=False) == (16, 18, 20, 22, 24, 26, 28, 30)
    assert premature_candidates("low", 60, tied=False) == tuple(range(0, 20, 2))  # README llama-30b
    assert premature_candidates("high", 60, tied=False) == tuple(range(40, 60, 2))
    assert premature_candidates("low", 28, tied=True) == (2, 4, 6, 8, 10, 12)  # the embedding exit is skipped
    assert premature_candidates("low", 2, tied=True) == (1,)
    assert premature_candidates("low", 2, tied=False) == (0,)
    assert premature_candidates("high", 2, tied=False) == (1,)
    with pytest.raises(ConfigError, match="3-layer"):
        premature_candidates("low", 3, tied=True)


def test_batched_equals_one_by_one(lvlm: LVLM) -> None:
    new, scores = run(lvlm, lvlm.prepare(IMAGES, PROMPTS), BOTH, min_new_tokens=STEPS)
    for row, (image, prompt) in enumerate(zip(IMAGES, PROMPTS, strict=True)):
        alone, alone_scores = run(lvlm, lvlm.prepare([image], [prompt]), BOTH, min_new_tokens=STEPS)
        assert new[row].tolist() == alone[0].tolist()
        assert_scores_equal(scores[:, row], alone_scores[:, 0])


def test_beams_batched_equal_one_by_one() -> None:
    lvlm = sharp("llava")
    both = lvlm.generate_ids(lvlm.prepare(IMAGES[:2], PROMPTS[:2]), max_new_tokens=3, num_beams=2, intervention=BOTH)
    for row in range(2):
        batch = lvlm.prepare(IMAGES[row : row + 1], PROMPTS[row : row + 1])
        alone = lvlm.generate_ids(batch, max_new_tokens=3, num_beams=2, intervention=BOTH)
        assert both[row].tolist() == alone[0].tolist()


def test_detach_restores_the_model_exactly(lvlm: LVLM) -> None:
    batch = lvlm.prepare(IMAGES, PROMPTS)
    before, before_scores = run(lvlm, batch, min_new_tokens=STEPS)
    hooks = [len(layer._forward_pre_hooks) for layer in lvlm.decoder_layers], list(lvlm.generation_hooks)
    with apply(lvlm, BOTH):
        during, during_scores = run(lvlm, batch, min_new_tokens=STEPS)
    after, after_scores = run(lvlm, batch, min_new_tokens=STEPS)
    assert not torch.equal(during_scores, before_scores)
    assert torch.equal(after, before) and torch.equal(after_scores, before_scores)
    assert ([len(layer._forward_pre_hooks) for layer in lvlm.decoder_layers], lvlm.generation_hooks) == hooks


@pytest.mark.parametrize(
    ("spec", "bad"),
    [
        ({"relative_top": 1.0}, "1.0"),
        ({"relative_top": -0.1}, "-0.1"),
        ({"repetition_penalty": 0.0}, "0.0"),
        ({"layers": "middle"}, "'middle'"),
        ({"layers": "2-1"}, "'2-1'"),
    ],
)
def test_bad_values_are_named(spec: dict, bad: str) -> None:
    with pytest.raises(ConfigError, match=bad):
        DoLa(**spec)


def test_spec_round_trip_and_depth_check() -> None:
    config = DoLa(layers="low", relative_top=0.2)
    assert parse_intervention(config.to_spec()) == config
    with pytest.raises(ConfigError, match="'middle'"):
        parse_intervention("dola:layers=middle")
    with pytest.raises(ConfigError, match="out of range"), apply(sharp("llava"), DoLa(layers="5")):
        pass


def test_composes_with_pai(lvlm: LVLM) -> None:
    batch = lvlm.prepare(IMAGES, PROMPTS)
    _, dola = run(lvlm, batch, BOTH, min_new_tokens=STEPS)
    _, pai = run(lvlm, batch, PAI(alpha=3.0), min_new_tokens=STEPS)
    _, both = run(lvlm, batch, BOTH, PAI(alpha=3.0), min_new_tokens=STEPS)
    assert not torch.equal(both, dola) and not torch.equal(both, pai)
    assert torch.isfinite(both).any(dim=-1).all()
    _, again = run(lvlm, batch, BOTH, min_new_tokens=STEPS)
    assert torch.equal(again, dola)


class Interferer(GenerationHook):
    """Runs an auxiliary text-only forward (owned by itself) between the step's forward and DoLa's processor."""

    def logits_processors(self, lvlm: LVLM, batch: PreparedBatch) -> list[LogitsProcessor]:
        text = lvlm.text_only(batch).inputs

        def aux(input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            with owned_forward(self), torch.no_grad():
                lvlm.model(**text)
            return scores

        return [aux]


def test_other_methods_auxiliary_forwards_are_not_captured() -> None:
    lvlm = sharp("llava")
    batch = lvlm.prepare(IMAGES, PROMPTS)
    _, alone = run(lvlm, batch, BOTH, min_new_tokens=STEPS)
    undo = add_generation_hook(lvlm, Interferer())
    try:
        _, interfered = run(lvlm, batch, BOTH, min_new_tokens=STEPS)
    finally:
        undo()
    assert torch.equal(interfered, alone)
