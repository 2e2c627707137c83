"""Training-free hallucination interventions behind one API, and the public API to write new ones.

Use:

    with interventions.apply(lvlm, VHR(alpha=2.0), PAI()):
        replies = lvlm.generate(images, prompts)

    lvlm.generate(images, prompts, intervention=["vhr:alpha=2", PAI()])   # instances, spec strings, or a list

    @intervene(TokenEmphasis())
    def caption(lvlm, images): ...

Methods (one module each): ``VHR`` (vhr.py), ``TokenEmphasis`` (token_emphasis.py), ``PAI`` (modality.py),
``VCD`` (vcd.py), ``DoLa`` (dola.py), ``VISTA`` (vista.py), ``OPERA`` (opera.py, its loop in opera_loop.py).

Extend (docs/extending.md has a worked example): subclass ``Intervention`` (a frozen dataclass; ``check`` validates,
``install`` attaches), decorate it with ``register``, and install one or more of the shared mechanisms, each in
its own public module:

* ``row_edit``: attention-score edits ``a + s|a|`` on the generating row (``RowEdit``, ``add_row_edit``);
* ``head_edit``: per-head output edits before ``o_proj`` (``HeadEdit``, ``add_head_hooks``, ``scale_last_position``);
* ``contrastive``: a second branch of the batch (no image, a noised image) for contrastive logits
  (``ContrastBranch``, ``ContrastiveGuidance``);
* ``GenerationHook`` subclasses told about each generate call (``add_generation_hook``), with per-sample batch
  helpers (``image_key_mask``, ``fit``, ``paired_inputs``, ``run_prefill``), layer specs (``resolve_layers``,
  ``scale_to_depth``) and ``owned_forward`` for auxiliary passes no other intervention may edit.
"""

from halluc.models import GenerationHook, PreparedBatch, register_spec_parser
from interventions.analysis import HeadReport, analyse_heads
from interventions.base import (
    REGISTRY,
    Composite,
    Handle,
    Intervention,
    StepForwardProcessor,
    apply,
    check_decoding,
    from_dict,
    intervene,
    paper_defaults,
    parse_intervention,
    register,
)
from interventions.batching import add_generation_hook, fit, image_key_mask, paired_inputs, run_prefill
from interventions.contrastive import ContrastBranch, ContrastiveGuidance
from interventions.dola import DoLa
from interventions.firing import FiringMonitor
from interventions.head_edit import HeadEdit, add_head_hooks, scale_last_position
from interventions.layers import check_layer_spec, resolve_layers, scale_to_depth
from interventions.modality import PAI
from interventions.opera import OPERA
from interventions.row_edit import ATTENTION_NAME, RowEdit, add_row_edit
from interventions.scope import live, owned_forward
from interventions.token_emphasis import TokenEmphasis, select_tokens
from interventions.vcd import VCD
from interventions.vhr import VHR, select_heads
from interventions.vista import VISTA

register_spec_parser(parse_intervention)

__all__ = [
    "ATTENTION_NAME",
    "OPERA",
    "PAI",
    "REGISTRY",
    "VCD",
    "VHR",
    "VISTA",
    "Composite",
    "ContrastBranch",
    "ContrastiveGuidance",
    "DoLa",
    "FiringMonitor",
    "GenerationHook",
    "Handle",
    "HeadEdit",
    "HeadReport",
    "Intervention",
    "PreparedBatch",
    "RowEdit",
    "StepForwardProcessor",
    "TokenEmphasis",
    "add_generation_hook",
    "add_head_hooks",
    "add_row_edit",
    "analyse_heads",
    "apply",
    "check_decoding",
    "check_layer_spec",
    "fit",
    "from_dict",
    "image_key_mask",
    "intervene",
    "paper_defaults",
    "live",
    "owned_forward",
    "paired_inputs",
    "parse_intervention",
    "register",
    "resolve_layers",
    "run_prefill",
    "scale_last_position",
    "scale_to_depth",
    "select_heads",
    "select_tokens",
]
