"""Extension points the adapter offers interventions, as protocols so the core never imports them."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from transformers import LogitsProcessor

    from halluc.models._inputs import PreparedBatch
    from halluc.models._lvlm import LVLM

__all__ = ["GenerationHook", "SupportsApply"]


@runtime_checkable
class GenerationHook(Protocol):
    """An object in ``LVLM.generation_hooks``, told about every ``generate_ids`` call and able to add processors."""

    def on_generate_start(self, lvlm: LVLM, batch: PreparedBatch) -> None:
        """Called before ``model.generate``, e.g. to record this batch's image-token positions."""

    def logits_processors(self, lvlm: LVLM, batch: PreparedBatch) -> list[LogitsProcessor]:
        """Extra logits processors for this call (fresh instances; may be empty)."""

    def on_generate_end(self, lvlm: LVLM) -> None:
        """Called in a ``finally`` after ``model.generate``, so per-call state is always cleared."""


@runtime_checkable
class SupportsApply(Protocol):
    """What ``generate(..., intervention=)`` accepts: ``apply(lvlm)`` returns a context manager that attaches it."""

    def apply(self, lvlm: LVLM) -> AbstractContextManager[object]:
        """Attach to ``lvlm`` on enter and detach on exit."""
