"""Context-aware DPO with LoRA, on trl's ``DPOTrainer``.

trl 1.16 expresses everything this needs, so it is used as is: a text prompt that already holds the chat
template, the image placeholder and the context (``halluc.dpo.preference_rows``); its vision collator scores
only the completion tokens (the next sentence); ``loss_type="sigmoid"``, ``beta``; a LoRA ``peft_config`` on the
language model's decoder layers, with no ``ref_model``, so the reference is the same model with the adapter
disabled. ``accelerate launch`` spreads training over GPUs. The output directory holds the LoRA adapter, the
merged model (loadable by ``load_lvlm``) and a run manifest with the training metrics.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from halluc.errors import ConfigError, OutputLocationError
from halluc.runs import RunStore, config_hash

if TYPE_CHECKING:
    from trl import DPOTrainer

    from halluc.models import LVLM

__all__ = ["MIN_TRL", "DpoResult", "DpoSettings", "build_trainer", "lora_target", "train_dpo"]

MIN_TRL = "1.16"  # the DPOTrainer API this module was written and tested against
_DEVICES = ("cpu", "cuda")
_DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class DpoSettings:
    """Training settings, recorded in the run manifest; the defaults suit the toy model on a CPU."""

    beta: float = 0.1
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 8
    grad_accum: int = 1
    warmup: float = 0.05  # fraction of the steps
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = _DEFAULT_TARGETS  # module names inside the decoder layers
    bf16: bool = False
    seed: int = 0
    logging_steps: int = 10

    def __post_init__(self) -> None:
        """Reject values training cannot run with, naming the valid range."""
        if self.beta <= 0 or self.learning_rate <= 0:
            raise ConfigError(f"beta and learning_rate must be > 0, got {self.beta} and {self.learning_rate}")
        for name in ("batch_size", "grad_accum", "lora_r", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1 or None (train for `epochs`), got {self.max_steps}")
        if not self.target_modules:
            raise ConfigError("target_modules must name at least one module, e.g. q_proj,v_proj")


@dataclass(frozen=True)
class DpoResult:
    """The run directory, the saved adapter and merged model, and the training metrics."""

    store: RunStore
    adapter: Path
    merged: Path
    metrics: dict[str, Any]


def _require_trl() -> None:
    """Fail with an install hint when the optional ``dpo`` extra is missing or too old."""
    try:
        import peft  # noqa: F401
        import trl
    except ImportError as exc:
        raise ConfigError(f"DPO training needs the 'dpo' extra (pip install 'halluc[dpo]'): {exc}") from None
    from packaging.version import Version

    if Version(trl.__version__) < Version(MIN_TRL):
        raise ConfigError(f"DPO training needs trl >= {MIN_TRL}, found {trl.__version__}; pip install -U trl")


def lora_target(lvlm: LVLM, names: tuple[str, ...]) -> str:
    """A peft ``target_modules`` regex selecting ``names`` inside the language model's decoder layers only."""
    alternatives = "|".join(re.escape(name) for name in names)
    return rf"{re.escape(lvlm.family.layers_path)}\.\d+\.(.*\.)?({alternatives})"


def build_trainer(
    lvlm: LVLM,
    rows: list[dict[str, Any]],
    settings: DpoSettings,
    work_dir: Path,
    *,
    use_cpu: bool = True,
    progress: bool = True,
) -> DPOTrainer:
    """A trl DPOTrainer over ``rows`` that wraps ``lvlm.model`` in a fresh LoRA adapter (in place).

    With ``use_cpu=False`` the trainer moves the model to the GPU of each (``accelerate launch``) process.
    """
    _require_trl()
    from datasets import Dataset, List
    from datasets import Image as ImageFeature
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    dataset = Dataset.from_list(rows).cast_column("images", List(ImageFeature()))
    args = DPOConfig(
        output_dir=str(work_dir),
        beta=settings.beta,
        loss_type=["sigmoid"],
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        warmup_steps=settings.warmup,
        lr_scheduler_type="cosine",
        max_length=None,  # never cut: the image tokens and the context precede the scored sentence
        activation_checkpointing=False,
        bf16=settings.bf16,
        seed=settings.seed,
        logging_steps=settings.logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=not progress,
        use_cpu=use_cpu,
    )
    lora = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=lora_target(lvlm, settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return DPOTrainer(
        model=lvlm.model, args=args, train_dataset=dataset, processing_class=lvlm.processor, peft_config=lora
    )


def train_dpo(
    model: str | Path,
    pairs: list[dict[str, Any]],
    out: Path,
    *,
    settings: DpoSettings | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    model_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> DpoResult:
    """Train a LoRA adapter with context-aware DPO on SENTINEL ``pairs``; save it and the merged model in ``out``.

    ``device`` is "cpu" or "cuda" (every process of an ``accelerate launch`` takes its own GPU).
    """
    from halluc.dpo._data import preference_rows
    from halluc.models import load_lvlm, model_fingerprint

    if device not in _DEVICES:
        raise ConfigError(f"unknown training device {device!r}; choose one of: {', '.join(_DEVICES)}")
    settings = settings or DpoSettings()
    out = Path(out)
    adapter, merged = out / "adapter", out / "merged"
    if merged.exists():
        raise OutputLocationError(f"{str(out)!r} already holds a trained model; choose another --out")
    _require_trl()
    lvlm = load_lvlm(model, device="cpu", dtype=dtype)  # the trainer places it
    rows = preference_rows(pairs, lvlm.processor)
    manifest = {
        "job": "dpo",
        **model_fingerprint(lvlm),
        **(model_info or {}),
        "settings": asdict(settings),
        "n_pairs": len(rows),
        "pairs_sha256": config_hash(rows),
    }
    manifest["config_hash"] = config_hash(manifest)
    trainer = build_trainer(lvlm, rows, settings, out / "trainer", use_cpu=device == "cpu", progress=progress)
    store = RunStore.create(out, manifest) if trainer.accelerator.is_main_process else None
    result = trainer.train()
    metrics = {**result.metrics, "global_step": result.global_step, "n_pairs": len(rows)}
    logs = [entry for entry in trainer.state.log_history if "rewards/accuracies" in entry]
    if logs:
        metrics["last_log"] = logs[-1]
    if store is None:
        return DpoResult(RunStore.open(out), adapter, merged, metrics)
    trainer.model.save_pretrained(adapter)
    lvlm.processor.save_pretrained(adapter)
    trainer.model.merge_and_unload().save_pretrained(merged)
    lvlm.processor.save_pretrained(merged)
    store.write_artifact("train_log.json", trainer.state.log_history)
    store.write_metrics(metrics)
    store.finish(adapter=str(adapter), merged=str(merged))
    return DpoResult(store, adapter, merged, metrics)
