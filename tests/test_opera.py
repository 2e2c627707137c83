"""OPERA against the eager batch-1 reference of the official ``opera_beam_search``
(``benchmarks.reference_methods.reference_opera``), on every tiny family: the same tokens and the same processed
scores of every beam at every loop iteration (to 1e-4), alone and in a batch of prompts of different lengths, with
and without rollbacks; plus the decoding extension point, detaching, refusals and the spec form."""

from __future__ import annotations

import pytest
import torch
from scores import LastScores
from test_fidelity import IMAGES, PROMPTS
from tiny_models import TINY_FAMILIES, build_tiny

from benchmarks.reference_methods import OperaReference, reference_opera
from halluc.errors import ConfigError
from halluc.models import LVLM, GenerationHook, PreparedBatch
from interventions import (
    OPERA,
    PAI,
    VCD,
    VHR,
    VISTA,
    Composite,
    DoLa,
    add_generation_hook,
    apply,
    check_decoding,
    parse_intervention,
)

torch.set_num_threads(1)

SMALL = OPERA(num_beams=3, num_attn_candidates=3)  # official rules, fewer forwards: keeps each test in seconds
ROLLING = OPERA(num_beams=3, num_attn_candidates=3, scale_factor=30.0, threshold=0)  # rolls back on tiny llava
STEPS = 12  # past the 10 positions of image reward, into the column penalty


def run(lvlm: LVLM, images: list, prompts: list[str], config: OPERA, steps: int, *more: object):
    """New tokens ``[samples, new]``, processed scores ``[iterations, rows, vocab]`` and the per-sample reports."""
    recorder, firing = LastScores(), []
    with apply(lvlm, config, *more):
        undo = add_generation_hook(lvlm, recorder)  # after OPERA's hook: it sees the final scores
        try:
            new = lvlm.generate_ids(lvlm.prepare(images, prompts), max_new_tokens=steps, firing=firing)
        finally:
            undo()
    return new, torch.stack(recorder.steps), firing


def reference(lvlm: LVLM, image, prompt: str, config: OPERA, steps: int) -> OperaReference:
    """The reference run of ``config`` on one sample."""
    return reference_opera(
        lvlm, image, prompt, steps, config.num_beams, config.scale_factor, config.threshold,
        config.num_attn_candidates, config.penalty_weights, config.window_size,
    )  # fmt: skip


def assert_matches(lvlm: LVLM, images: list, prompts: list[str], config: OPERA, steps: int) -> list[OperaReference]:
    """Batched OPERA vs the reference one sample at a time: tokens, every iteration's scores, rollbacks."""
    new, scores, firing = run(lvlm, images, prompts, config, steps)
    beams = config.num_beams
    expected = [reference(lvlm, image, prompt, config, steps) for image, prompt in zip(images, prompts, strict=True)]
    for i, theirs in enumerate(expected):
        ours = new[i].tolist()[: len(theirs.tokens)]
        assert ours == theirs.tokens, f"sample {i}"
        assert firing[i]["opera"]["rollbacks"] == theirs.rollbacks, f"sample {i}"
        assert firing[i]["opera"]["steps"] == len(theirs.scores)
        for step, step_scores in enumerate(theirs.scores):
            torch.testing.assert_close(scores[step, i * beams : (i + 1) * beams], step_scores, atol=1e-4, rtol=0)
    return expected


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_matches_the_official_algorithm_alone_and_batched(family: str) -> None:
    lvlm = build_tiny(family)
    assert_matches(lvlm, IMAGES[:1], PROMPTS[:1], SMALL, STEPS)
    assert_matches(lvlm, IMAGES, PROMPTS, SMALL, STEPS)  # three prompt lengths, one of them text-only


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_candidates_in_one_forward_match_one_forward_each(family: str) -> None:
    lvlm = build_tiny(family)
    forwards: list[int] = []
    counter = lvlm.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        together = run(lvlm, IMAGES, PROMPTS, SMALL, STEPS)  # alone: the candidates share one forward
        n_together = len(forwards)
        undo = add_generation_hook(lvlm, GenerationHook())  # says it may edit forwards: one forward per candidate
        try:
            apart = run(lvlm, IMAGES, PROMPTS, SMALL, STEPS)
        finally:
            undo()
        n_apart = len(forwards) - n_together
    finally:
        counter.remove()
    assert torch.equal(together[0], apart[0]) and together[2] == apart[2]
    torch.testing.assert_close(together[1], apart[1], atol=1e-4, rtol=0)
    assert n_apart > 1.5 * n_together  # 1 + 3 forwards per step against 1 + 1


def test_defaults_match_the_official_algorithm() -> None:
    assert_matches(build_tiny("llava"), IMAGES[:1], PROMPTS[:1], OPERA(), 11)


def test_rollbacks_happen_and_match_alone_and_batched() -> None:
    lvlm = build_tiny("llava")
    (alone,) = assert_matches(lvlm, IMAGES[:1], PROMPTS[:1], ROLLING, 16)
    assert len(alone.rollbacks) >= 3 and len(set(alone.rollbacks)) >= 2  # repeated, and the shift rule too
    batched = assert_matches(lvlm, IMAGES[::-1], PROMPTS[::-1], ROLLING, 16)  # samples roll back at different steps
    assert any(run.rollbacks for run in batched)


def test_with_forward_edits_every_token_after_the_prompt_gets_its_own_forward() -> None:
    """PAI's edit acts on the last query row, so under it the candidates and the tokens a rollback recomputes go
    one per forward, as when they were first decoded; alone, OPERA batches them."""
    lvlm = build_tiny("llava")
    prompt = lvlm.prepare(IMAGES[:1], PROMPTS[:1]).prompt_length
    widths: list[int] = []

    def record(_module, args, kwargs) -> None:  # the new tokens' forwards, not the prompt's (edited and unedited)
        tokens = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
        if tokens.shape[1] != prompt:
            widths.append(tokens.shape[1])

    hook = lvlm.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _, _, edited = run(lvlm, IMAGES[:1], PROMPTS[:1], ROLLING, 16, PAI(alpha=3.0, cfg=False))
        edited_widths, widths[:] = list(widths), []
        _, _, alone = run(lvlm, IMAGES[:1], PROMPTS[:1], ROLLING, 16)
    finally:
        hook.remove()
    assert edited[0]["opera"]["rollbacks"] and alone[0]["opera"]["rollbacks"]
    assert set(edited_widths) == {1} and max(widths) > 1


def test_reports_what_it_did() -> None:
    _, _, firing = run(build_tiny("llava"), IMAGES, PROMPTS, SMALL, STEPS)
    for sample in firing:
        report = sample["opera"]
        assert report["image_reward_steps"] == 10 and report["pattern_penalty_steps"] == report["steps"] - 10
        assert sample["top1_changed"] in (True, False) and sample["first_step_change"] > 0


def test_detach_restores_the_model_exactly() -> None:
    lvlm = build_tiny("qwen2_vl")
    batch = lvlm.prepare(IMAGES, PROMPTS)
    before = lvlm.generate_ids(batch, max_new_tokens=4, num_beams=3)
    hooks, implementation = list(lvlm.generation_hooks), lvlm.attn_implementation
    with apply(lvlm, SMALL):
        during = lvlm.generate_ids(batch, max_new_tokens=4)
    assert lvlm.generation_hooks == hooks and lvlm.attn_implementation == implementation
    assert torch.equal(lvlm.generate_ids(batch, max_new_tokens=4, num_beams=3), before)
    assert not torch.equal(during, before)


def test_composes_with_attention_edits_and_refuses_contrast_branches() -> None:
    lvlm = build_tiny("llava")
    _, plain, _ = run(lvlm, IMAGES, PROMPTS, SMALL, 4)
    _, edited, _ = run(lvlm, IMAGES, PROMPTS, SMALL, 4, PAI(alpha=3.0, cfg=False))
    assert not torch.allclose(plain[0], edited[0])  # PAI's edit reaches OPERA's forwards
    assert lvlm.attn_implementation == "sdpa"
    with pytest.raises(ConfigError, match="contrast-branch"):
        run(lvlm, IMAGES, PROMPTS, SMALL, 2, VCD())
    batch = lvlm.prepare(IMAGES, PROMPTS)
    same = lvlm.generate_ids(batch, max_new_tokens=3, num_beams=3, intervention=SMALL)  # --num-beams 3: agrees
    assert torch.equal(same, lvlm.generate_ids(batch, max_new_tokens=3, intervention=SMALL))
    with pytest.raises(ConfigError, match="opera sets its own beam count"):
        lvlm.generate_ids(lvlm.prepare(IMAGES, PROMPTS), max_new_tokens=2, num_beams=2, intervention=SMALL)
    with pytest.raises(ConfigError, match="replace the decoding loop"):
        lvlm.generate_ids(lvlm.prepare(IMAGES, PROMPTS), max_new_tokens=2, intervention=[SMALL, OPERA()])
    for other in (DoLa(), VISTA()):  # their processors read the step's forward; OPERA's candidates come after it
        with pytest.raises(ConfigError, match="processor reads the step's forward"):
            run(lvlm, IMAGES, PROMPTS, SMALL, 2, other)
    run(lvlm, IMAGES, PROMPTS, SMALL, 2, VISTA(alpha=0.0))  # the steering vector alone composes
    assert lvlm.generation_hooks == [] and lvlm.attn_implementation == "sdpa"


@pytest.mark.parametrize(
    ("config", "num_beams", "message"),
    [
        (
            Composite((OPERA(), OPERA(num_beams=3))),
            1,
            r"several methods run their own decoding loop \(opera, opera:num",
        ),
        (OPERA(), 3, r"opera runs its own beam search with 5 beams; got --num-beams 3"),
        (Composite((OPERA(), VCD())), 1, r"opera cannot run with vcd: its beams roll back"),
        (Composite((DoLa(), OPERA())), 5, r"opera cannot run with dola"),
        (Composite((OPERA(), VISTA(), PAI())), 1, r"opera cannot run with vista, pai"),
    ],
)
def test_the_cli_refuses_what_opera_cannot_run_before_any_model_loads(config, num_beams: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_decoding(config, num_beams)


def test_opera_passes_the_decoding_check_with_what_it_can_run() -> None:
    for num_beams in (1, 5):
        check_decoding(Composite((OPERA(), VHR(), PAI(cfg=False), VISTA(alpha=0.0))), num_beams)


class Repeat(GenerationHook):
    """A decoding loop that appends each prompt's last token ``max_new_tokens`` times."""

    def decoding(self, lvlm: LVLM, batch: PreparedBatch):
        def generate(model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs):
            new = generation_config.max_length - input_ids.shape[1]
            return torch.cat([input_ids, input_ids[:, -1:].expand(-1, new)], dim=1)

        return generate


def test_a_generation_hook_can_replace_the_decoding_loop() -> None:
    lvlm = build_tiny("idefics3")
    batch = lvlm.prepare(IMAGES, PROMPTS)
    undo = add_generation_hook(lvlm, Repeat())
    try:
        new = lvlm.generate_ids(batch, max_new_tokens=3)
    finally:
        undo()
    assert torch.equal(new, batch.inputs["input_ids"][:, -1:].expand(-1, 3))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("opera:num_beams=1", r"opera: num_beams must be >= 2"),
        ("opera:num_attn_candidates=0", r"opera: num_attn_candidates must be >= 1, got 0"),
        ("opera:scale_factor=0", r"opera: scale_factor must be > 0, got 0.0"),
        ("opera:threshold=-1", r"opera: threshold must be >= 0, got -1"),
        ("opera:penalty_weights=-1", r"opera: penalty_weights must be >= 0, got -1.0"),
        ("opera:scale_factor=inf", r"opera: scale_factor=inf is not a finite number"),
    ],
)
def test_rejects_bad_values(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_intervention(spec)


def test_spec_round_trip() -> None:
    assert parse_intervention("opera") == OPERA()
    config = OPERA(num_beams=3, threshold=25, num_attn_candidates=1, scale_factor=40.0)
    assert config.to_spec() == "opera:num_beams=3,scale_factor=40.0,threshold=25,num_attn_candidates=1"
    assert parse_intervention(config.to_spec()) == config
