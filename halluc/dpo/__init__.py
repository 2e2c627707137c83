"""Context-aware DPO on SENTINEL pairs (optional extra ``dpo``: peft, trl).

The prompt is the chat prompt plus the context (the description so far); only the next sentence (y_win or
y_lose) is scored; sigmoid DPO loss with ``beta`` (0.1); LoRA adapter; the reference model is the same model
with the adapter disabled. See ``halluc.dpo._train`` for why trl's DPOTrainer is used.
"""

from halluc.dpo._data import PAIR_FIELDS, load_pairs, preference_rows
from halluc.dpo._train import MIN_TRL, DpoResult, DpoSettings, build_trainer, lora_target, train_dpo

__all__ = [
    "MIN_TRL",
    "PAIR_FIELDS",
    "DpoResult",
    "DpoSettings",
    "build_trainer",
    "load_pairs",
    "lora_target",
    "preference_rows",
    "train_dpo",
]
