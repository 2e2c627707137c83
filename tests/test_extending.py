"""The public extension API: docs/extending.md's worked method, built from public names alone, and every form
``LVLM.generate(intervention=...)`` accepts."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny
from transformers import LogitsProcessor

import interventions
from halluc.errors import ConfigError
from halluc.models import LVLM
from interventions import PAI, REGISTRY, VHR, Intervention, parse_intervention

torch.set_num_threads(1)

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
PUBLIC_FIRST_PARTY = {"interventions", "halluc.models", "halluc.errors"}
PROMPTS = ["Describe this image in detail.", "Is there a dog?"]


def doc_example() -> str:
    """The first python block of docs/extending.md: the whole file of a new method."""
    return re.search(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL).group(1)


@pytest.fixture
def head_knockout() -> Iterator[type[Intervention]]:
    """The documented method, registered for the test and unregistered after."""
    namespace: dict[str, object] = {}
    exec(compile(doc_example(), str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    try:
        yield namespace["HeadKnockout"]
    finally:
        REGISTRY.pop("head_knockout", None)


def images(count: int) -> list:
    from PIL import Image

    return [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue", "green")[:count]]


class FirstScores(LogitsProcessor):
    """Records the scores of the first generated token and leaves them unchanged."""

    def __init__(self) -> None:
        self.scores: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.scores.append(scores.clone())
        return scores


def first_logits(lvlm: LVLM, intervention: object = None) -> torch.Tensor:
    """Scores of the first generated token, ``[batch, vocab]``, through the adapter (so generation hooks run)."""
    recorder = FirstScores()
    batch = lvlm.prepare(images(len(PROMPTS)), PROMPTS)
    lvlm.generate_ids(batch, max_new_tokens=1, logits_processor=[recorder], intervention=intervention)
    return recorder.scores[0]


def test_the_documented_method_imports_only_public_names() -> None:
    tree = ast.parse(doc_example())
    first_party = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module != "__future__"]
    modules = {node.module for node in first_party} - {"dataclasses"}
    assert modules - {"torch"} <= PUBLIC_FIRST_PARTY
    names = [alias.name for node in first_party for alias in node.names]
    assert not [name for name in names if name.startswith("_")]
    assert all(
        hasattr(interventions, alias.name)
        for node in first_party
        if node.module == "interventions"
        for alias in node.names
    )


def test_the_documented_method_edits_composes_and_detaches_exactly(head_knockout: type[Intervention]) -> None:
    lvlm = build_tiny("llava")
    before = first_logits(lvlm)
    knockout = head_knockout(heads="0+1", layers="all")
    assert knockout.to_spec() == "head_knockout:heads=0+1"
    assert parse_intervention(knockout.to_spec()) == knockout
    edited = first_logits(lvlm, knockout)
    assert not torch.allclose(edited, before, atol=1e-4), "knocking out heads must change the logits"
    assert not torch.allclose(
        first_logits(lvlm, interventions.Composite((knockout, PAI(alpha=2.0)))), edited, atol=1e-4
    )
    assert torch.equal(first_logits(lvlm), before), "removing the method must restore the model bit for bit"
    with pytest.raises(ConfigError, match="head 99 is out of range"):
        first_logits(lvlm, head_knockout(heads="99"))
    with pytest.raises(ConfigError, match="heads must be indices"):
        head_knockout(heads="one")
    assert lvlm.generation_hooks == [] and not lvlm.o_proj(0)._forward_pre_hooks


@pytest.mark.parametrize(
    "intervention",
    [VHR(), "vhr", ["vhr:alpha=2", PAI()], ("pai", "vhr"), interventions.Composite((VHR(), PAI()))],
    ids=["instance", "spec", "list", "tuple", "composite"],
)
def test_generate_accepts_instances_specs_and_lists(intervention: object) -> None:
    lvlm = build_tiny("llava")
    plain = lvlm.generate(images(2), PROMPTS, max_new_tokens=3)
    assert len(lvlm.generate(images(2), PROMPTS, max_new_tokens=3, intervention=intervention)) == 2
    assert lvlm.generation_hooks == [] and lvlm.attn_implementation == "sdpa"
    assert lvlm.generate(images(2), PROMPTS, max_new_tokens=3) == plain


@pytest.mark.parametrize(
    ("intervention", "message"),
    [
        (42, r"intervention must be an Intervention, a spec string .* got int: 42"),
        ([PAI(), {"name": "vhr"}], r"got dict: \{'name': 'vhr'\}"),
        (["pai", "vhrr"], r"unknown intervention 'vhrr' \(did you mean 'vhr'\?\)"),
    ],
)
def test_generate_rejects_anything_else_before_attaching(intervention: object, message: str) -> None:
    lvlm = build_tiny("llava")
    with pytest.raises(ConfigError, match=message):
        lvlm.generate(images(2), PROMPTS, max_new_tokens=2, intervention=intervention)
    assert lvlm.generation_hooks == [] and lvlm.attn_implementation == "sdpa"
