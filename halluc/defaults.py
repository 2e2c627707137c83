"""Defaults of the embedded world: the shipped toy model and detectors, used when no model is named."""

from __future__ import annotations

from pathlib import Path

from halluc.errors import ModelLoadError

__all__ = ["ASSETS", "DESCRIBE_PROMPT", "default_model"]

ASSETS = Path(__file__).resolve().parent / "assets"
# The detailed-description prompt of the CHAIR literature; the toy model is trained on it, every job defaults to it.
DESCRIBE_PROMPT = "Please describe this image in detail."


def default_model() -> Path:
    """Path of the shipped toy LLaVA (trained by scripts/train_toy_lvlm.py)."""
    path = ASSETS / "toy-llava"
    if not (path / "config.json").exists():
        raise ModelLoadError(
            f"the shipped toy model is missing at {path}; run scripts/train_toy_lvlm.py or pass --model"
        )
    return path
