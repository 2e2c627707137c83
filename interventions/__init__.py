"""Training-free hallucination interventions behind one API.

    with interventions.apply(lvlm, VHR(alpha=2.0), PAI()):
        replies = lvlm.generate(images, prompts)

    lvlm.generate(images, prompts, intervention=parse_intervention("vhr:alpha=2"))

    @intervene(TokenEmphasis())
    def caption(lvlm, images): ...

Methods (one module each): ``VHR`` (vhr.py), ``TokenEmphasis`` (token_emphasis.py), ``PAI`` (modality.py). They
share three mechanisms, each in its own module: a registered attention function for score edits
(``_attention``), ``o_proj`` pre-hooks for per-head edits (``_heads``), and a logits processor with a text-only
branch (``_contrastive``). ``analyse_heads`` (analysis.py) measures VHD and image attention per head.
"""

from interventions._attention import ATTENTION_NAME
from interventions._base import (
    REGISTRY,
    Composite,
    Handle,
    Intervention,
    apply,
    from_dict,
    intervene,
    parse_intervention,
    register,
)
from interventions.analysis import HeadReport, analyse_heads
from interventions.modality import PAI
from interventions.token_emphasis import TokenEmphasis, select_tokens
from interventions.vhr import VHR, select_heads

__all__ = [
    "ATTENTION_NAME",
    "PAI",
    "REGISTRY",
    "VHR",
    "Composite",
    "Handle",
    "HeadReport",
    "Intervention",
    "TokenEmphasis",
    "analyse_heads",
    "apply",
    "from_dict",
    "intervene",
    "parse_intervention",
    "register",
    "select_heads",
    "select_tokens",
]
