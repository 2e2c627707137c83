"""Intervention API: registry, CLI strings, JSON, handles, apply/intervene/Composite, and the pure selections."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from tiny_models import build_tiny
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import interventions
from halluc.errors import ConfigError
from interventions import (
    ATTENTION_NAME,
    PAI,
    REGISTRY,
    VCD,
    VHR,
    Composite,
    FiringMonitor,
    Intervention,
    TokenEmphasis,
    apply,
    check_decoding,
    from_dict,
    intervene,
    parse_intervention,
    register,
    select_heads,
    select_tokens,
)
from interventions.layers import resolve_layers
from interventions.modality import pai_layers
from interventions.row_edit import row_edit_attention
from interventions.token_emphasis import spatial_peaks
from interventions.vhr import _Reinforcement, head_divergence, vhr_layers

torch.set_num_threads(1)


def test_registry_holds_the_methods() -> None:
    assert {"vhr": VHR, "pai": PAI, "token_emphasis": TokenEmphasis, "vcd": VCD}.items() <= REGISTRY.items()
    with pytest.raises(ConfigError, match="already registered"):
        register("vhr")(type("Again", (Intervention,), {}))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("vhr", VHR()),
        ("vhr:alpha=2.5,layers=0+18-31", VHR(alpha=2.5, layers="0+18-31")),
        (" pai : alpha = 0.2 , cfg = yes , gamma=1.2 ", PAI(alpha=0.2, cfg=True, gamma=1.2)),
        ("token_emphasis:local=0.6,head_specific=false", TokenEmphasis(local=0.6, head_specific=False)),
    ],
)
def test_parse_intervention(spec: str, expected: Intervention) -> None:
    assert parse_intervention(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope:alpha=1", r"unknown intervention 'nope'.*; choose one of: (\w+, )*pai, token_emphasis, vcd, vhr, vista"),
        ("vhr:beta=1", r"unknown parameter 'beta'; valid parameters: alpha, layers"),
        ("vhr:alpha=high", r"alpha='high' is not a valid float"),
        ("pai:cfg=maybe", r"cfg='maybe' is not a valid bool"),
        ("vhr:alpha", r"expected key=value, got 'alpha'"),
        ("vhr:alpha=-1", r"alpha must be >= 0, got -1.0"),
        ("pai:cutoff=1", r"cutoff must be in \[0, 1\)"),
        ("token_emphasis:fraction=0", r"fraction must be in \(0, 1\]"),
        ("vhr:layers=1-x", r"bad layer item '1-x'"),
        ("vhr:layers=5-2", r"bad layer range '5-2'"),
        ("vhrr:alpha=2", r"unknown intervention 'vhrr' \(did you mean 'vhr'\?\); choose one of"),
        ("pai:alpah=1", r"unknown parameter 'alpah' \(did you mean 'alpha'\?\); valid parameters"),
        ("vhr:alpha=inf", r"vhr: alpha=inf is not a finite number"),
        ("vhr:alpha=1e400", r"vhr: alpha=inf is not a finite number"),
        ("pai:gamma=nan", r"pai: gamma=nan is not a finite number"),
        ("token_emphasis:local=-inf", r"token_emphasis: local=-inf is not a finite number"),
    ],
)
def test_parse_errors_name_the_value_and_the_options(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_intervention(spec)


def test_non_finite_values_are_rejected_from_python_and_json_too() -> None:
    with pytest.raises(ConfigError, match="alpha=inf is not a finite number"):
        VHR(alpha=float("inf"))
    with pytest.raises(ConfigError, match="gamma=nan is not a finite number"):
        from_dict({"name": "pai", "gamma": float("nan")})


@pytest.mark.parametrize(
    ("config", "spec"),
    [
        (VHR(), "vhr"),
        (VHR(alpha=2.5, layers="0+18-31"), "vhr:alpha=2.5,layers=0+18-31"),
        (PAI(alpha=0.5, cfg=False, cutoff=0.05), "pai:alpha=0.5,cfg=false,cutoff=0.05"),
        (
            TokenEmphasis(fraction=1 / 3, head_specific=True),
            "token_emphasis:fraction=0.3333333333333333,head_specific=true",
        ),
    ],
)
def test_to_spec_is_the_inverse_of_parse(config: Intervention, spec: str) -> None:
    assert config.to_spec() == spec
    assert parse_intervention(spec) == config


def test_json_round_trip() -> None:
    for config in (VHR(alpha=3.0), PAI(cfg=True), TokenEmphasis(summary=0.4, layers="all")):
        data = json.loads(config.to_json())
        assert data["name"] == config.name and from_dict(data) == config
    composite = Composite((VHR(), PAI(alpha=0.3)))
    assert from_dict(json.loads(composite.to_json())) == composite
    assert from_dict({"name": "vhr", "alpha": 2}) == VHR(alpha=2.0)  # JSON ints are fine for floats
    with pytest.raises(ConfigError, match="alpha=True is not a valid float"):
        from_dict({"name": "vhr", "alpha": True})
    with pytest.raises(ConfigError, match="unknown intervention None"):
        from_dict({"alpha": 1.0})
    with pytest.raises(ConfigError, match="Composite parts must be Intervention configs, got str"):
        Composite(("vhr",))  # type: ignore[arg-type]


def test_layer_rules_scale_to_depth() -> None:
    assert vhr_layers(32) == (1, *range(18, 32))  # the second layer plus the last 14 (VHR paper, section 4.4)
    assert vhr_layers(8) == (1, 4, 5, 6, 7) and vhr_layers(4) == (1, 2, 3) and vhr_layers(2) == (1,)
    assert pai_layers(32) == tuple(range(2, 32)) and pai_layers(8) == tuple(range(1, 8))  # layer 0 never edited
    assert pai_layers(4) == (1, 2, 3) and pai_layers(1) == ()
    assert resolve_layers("0+2-3", 4, pai_layers) == (0, 2, 3)
    assert resolve_layers("last", 4, pai_layers) == (3,)
    with pytest.raises(ConfigError, match="layer 9 in '9' is out of range; this model has layers 0..3"):
        resolve_layers("9", 4, pai_layers)


def test_vhr_head_selection_on_hand_built_outputs() -> None:
    # 8 heads of width 2; the text-only output of every head is (1, 0) except head 7, which is large.
    text = torch.tensor([[1.0, 0.0]] * 7 + [[7.0, 0.0]])
    shift = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 20.0])  # image - text distance per head
    image = text + torch.stack([torch.zeros(8), shift], dim=-1)
    heads = torch.stack([image, text])[:, None]  # [2B = 2, seq 1, heads 8, dim 2]
    vhd, text_norm = head_divergence(heads[:, -1])
    assert torch.allclose(vhd, shift[None]) and torch.equal(text_norm, text.pow(2).sum(-1)[None])
    # head 7: VHD and text norm both above mean + std -> outlier, VHD 0; lower median of the rest is 3
    assert select_heads(vhd, text_norm).tolist() == [[False, False, False, True, True, True, True, False]]
    # same VHDs but an ordinary text norm: head 7 is no outlier and is reinforced
    plain = torch.ones(1, 8)
    assert select_heads(vhd, plain).tolist() == [[False, False, False, False, True, True, True, True]]
    state = _Reinforcement(alpha=2.0)
    state.selecting = True
    edited = state.edit(3, heads)
    assert state.scales[3].tolist() == [[1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 1.0]]
    assert torch.equal(edited[:, 0, 3], 2 * heads[:, 0, 3]) and torch.equal(edited[:, 0, 7], heads[:, 0, 7])


SALIENCY = torch.tensor(  # a 4x4 CLS attention map: one summary outlier (4.0), a corner peak (0.18)
    [
        [0.11, 0.21, 0.12, 0.04],
        [0.22, 0.35, 0.23, 0.03],
        [0.06, 0.07, 0.08, 0.16],
        [0.18, 0.05, 0.01, 4.00],
    ]
).flatten()


def test_token_selection_on_hand_built_map() -> None:
    assert spatial_peaks(SALIENCY, (4, 4)).nonzero().flatten().tolist() == [5, 12, 15]
    local, summary = select_tokens(SALIENCY, SALIENCY, 0.25, grid=(4, 4))
    assert local.nonzero().flatten().tolist() == [4, 5, 6]  # top 4 minus the summary token
    assert summary.nonzero().flatten().tolist() == [12, 15]  # summary token + the peak local missed
    local, summary = select_tokens(SALIENCY, SALIENCY, 0.25)  # no grid (the official setting): outliers only
    assert local.nonzero().flatten().tolist() == [4, 5, 6] and summary.nonzero().flatten().tolist() == [15]
    flat_local, flat_summary = select_tokens(torch.ones(16), torch.ones(16), 0.25, grid=(4, 4))
    assert flat_local.sum() == 4 and not flat_summary.any()  # a flat map has no outliers and no peaks
    # two maps, as the official code reads them: local from the first vision layer, summary from the feature layer
    first_layer = torch.arange(16.0)  # ranks tokens 12..15 highest
    local, summary = select_tokens(first_layer, SALIENCY, 0.25)
    assert summary.nonzero().flatten().tolist() == [15] and local.nonzero().flatten().tolist() == [12, 13, 14]
    assert select_tokens(first_layer, SALIENCY, 0.3)[0].sum() == 3  # int(0.3 * 16) = 4 picks, minus token 15


def test_handles_apply_and_nesting_restore_the_model() -> None:
    lvlm = build_tiny("llava")
    handle = TokenEmphasis().attach(lvlm)
    assert lvlm.attn_implementation == ATTENTION_NAME and len(lvlm.generation_hooks) == 1
    assert ALL_ATTENTION_FUNCTIONS[ATTENTION_NAME] is row_edit_attention
    assert ALL_MASK_ATTENTION_FUNCTIONS[ATTENTION_NAME] is sdpa_mask  # else the function gets no mask
    handle.remove()
    handle.remove()  # idempotent
    assert lvlm.attn_implementation == "sdpa" and lvlm.generation_hooks == [] and not handle.attached
    o_proj = lvlm.o_proj(1)  # a VHR layer
    users_hook = o_proj.register_forward_pre_hook(lambda module, args: None)  # someone else's: must survive
    with apply(lvlm, VHR(), PAI()) as outer:
        assert len(outer) == 2 and len(o_proj._forward_pre_hooks) == 2
        with apply(lvlm, TokenEmphasis()):
            assert len(lvlm.generation_hooks) == 5  # each block: its methods' hooks, then its firing monitor
        assert lvlm.attn_implementation == ATTENTION_NAME  # PAI still uses it (reference-counted)
        assert len(lvlm.generation_hooks) == 3 and len(o_proj._forward_pre_hooks) == 2
        assert isinstance(lvlm.generation_hooks[-1], FiringMonitor)
    assert lvlm.attn_implementation == "sdpa" and lvlm.generation_hooks == []
    assert list(o_proj._forward_pre_hooks) == [users_hook.id]
    users_hook.remove()
    lvlm.set_attn_implementation("eager")
    try:
        with apply(lvlm, PAI()):
            assert lvlm.attn_implementation == ATTENTION_NAME
        assert lvlm.attn_implementation == "eager"  # the previous implementation, whatever it was
    finally:
        lvlm.set_attn_implementation("sdpa")


def test_apply_removes_its_handles_on_error_and_rejects_non_configs() -> None:
    lvlm = build_tiny("llava")
    with pytest.raises(RuntimeError, match="boom"), apply(lvlm, PAI(), VHR()):
        raise RuntimeError("boom")
    assert lvlm.attn_implementation == "sdpa" and lvlm.generation_hooks == []
    with pytest.raises(ConfigError, match="layer 7 in '7' is out of range"), apply(lvlm, PAI(), VHR(layers="7")):
        pass
    assert lvlm.attn_implementation == "sdpa" and lvlm.generation_hooks == []
    with (
        pytest.raises(ConfigError, match="expected Intervention configs or spec strings, got int: 42"),
        apply(lvlm, PAI(), 42),
    ):
        pass
    assert lvlm.attn_implementation == "sdpa" and lvlm.generation_hooks == []  # rejected before PAI attached
    with apply(lvlm, "vhr:alpha=3") as handles:
        assert [h.name for h in handles] == ["vhr"]


def test_attach_failure_undoes_the_partial_install() -> None:
    @dataclass(frozen=True)
    class Broken(PAI):
        def install(self, lvlm, handle) -> None:
            super().install(lvlm, handle)
            raise RuntimeError("half-way")

    lvlm = build_tiny("llava")
    with pytest.raises(RuntimeError, match="half-way"):
        Broken().attach(lvlm)
    assert lvlm.attn_implementation == "sdpa" and lvlm.generation_hooks == []


def test_intervene_decorator_and_composite() -> None:
    lvlm = build_tiny("llava")
    seen: list[tuple[str, int]] = []

    @intervene(PAI(), VHR())
    def probe(model, label: str) -> str:
        seen.append((model.attn_implementation, len(model.generation_hooks)))
        return label

    assert probe(lvlm, "x") == "x" and seen == [(ATTENTION_NAME, 3)]
    assert lvlm.generation_hooks == []
    with pytest.raises(ConfigError, match="needs the LVLM as the first argument"):
        probe("not a model", "x")
    with Composite((PAI(), VHR())).apply(lvlm) as handles:
        assert [h.name for h in handles] == ["pai", "vhr"]
    assert lvlm.generation_hooks == [] and lvlm.attn_implementation == "sdpa"  # leaving the Composite undoes both
    assert {"Composite", "apply", "intervene"} <= set(interventions.__all__)
    assert [name for name in interventions.__all__ if not hasattr(interventions, name)] == []  # import * works


def test_beam_search_is_refused_for_methods_with_a_contrast_branch() -> None:
    for config in (PAI(), TokenEmphasis(), VCD(), Composite((VHR(), VCD(alpha=2.0)))):
        with pytest.raises(ConfigError, match="--num-beams 3 cannot run .*(pai|token_emphasis|vcd)"):
            check_decoding(config, num_beams=3)
        check_decoding(config, num_beams=1)
    for config in (None, VHR(), PAI(cfg=False), TokenEmphasis(cfg=False)):
        check_decoding(config, num_beams=3)
    lvlm = build_tiny("llava")  # and a beam search with a method that has no branch runs
    batch = lvlm.prepare([None], ["Describe this image in detail."])
    assert lvlm.generate_ids(batch, max_new_tokens=2, num_beams=2, intervention=PAI(cfg=False)).shape == (1, 2)
