"""Settings of a SENTINEL generation run, shared by the sampler and the driver and recorded in the manifest."""

from __future__ import annotations

from dataclasses import dataclass

from halluc.errors import ConfigError
from halluc.sentinel._kinds import PAIR_TYPES
from halluc.sentinel._prompt import DEFAULT_QUESTION

__all__ = ["SentinelConfig"]


@dataclass(frozen=True)
class SentinelConfig:
    """Generation settings, recorded in the manifest (a resumed run must use the same)."""

    question: str = DEFAULT_QUESTION
    n_samples: int = 10
    temperature: float = 0.7
    max_sentence_tokens: int = 48
    max_sentences: int = 12
    batch_images: int = 4
    pair_types: tuple[str, ...] = ("coherent",)
    seed: int = 0

    def __post_init__(self) -> None:
        """Reject values generation cannot run with, naming the valid range or options."""
        unknown = [t for t in self.pair_types if t not in PAIR_TYPES]
        if unknown or not self.pair_types:
            raise ConfigError(f"unknown pair types {unknown or '(none)'}; choose from: {', '.join(PAIR_TYPES)}")
        for name in ("n_samples", "max_sentence_tokens", "max_sentences", "batch_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
