"""LVLM adapters: load a checkpoint, prepare batches, generate, and expose structure to interventions.

Supported families (detected from the config's ``model_type``): LLaVA-1.5 (``llava``), LLaVA-NeXT
(``llava_next``), Qwen2-VL / Qwen2.5-VL (``qwen2_vl``, ``qwen2_5_vl``), Idefics3 / SmolVLM (``idefics3``,
``smolvlm``).
"""

from halluc.models._families import FAMILIES, FamilySpec, family_for_config, supported_model_types
from halluc.models._fingerprint import model_fingerprint
from halluc.models._hooks import GenerationHook, InterventionArg, SupportsApply, register_spec_parser
from halluc.models._inputs import PreparedBatch
from halluc.models._loading import load_lvlm, parse_dtype
from halluc.models._lvlm import LVLM

__all__ = [
    "FAMILIES",
    "LVLM",
    "FamilySpec",
    "GenerationHook",
    "InterventionArg",
    "PreparedBatch",
    "SupportsApply",
    "family_for_config",
    "load_lvlm",
    "model_fingerprint",
    "parse_dtype",
    "register_spec_parser",
    "supported_model_types",
]
