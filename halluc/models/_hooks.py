"""Extension points the adapter offers interventions, defined here so the core never imports them.

* ``GenerationHook``: a no-op base for objects in ``LVLM.generation_hooks``; subclasses override what they need.
* ``SupportsApply``: what ``generate(..., intervention=)`` accepts, alone, as spec strings, or in a list.
* ``register_spec_parser``: how the ``interventions`` package teaches the core to read spec strings such as
  ``"vhr:alpha=2"`` (the registry lives there; the core only calls the parser it was given).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeAlias, runtime_checkable

from halluc.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator

    import torch
    from transformers import LogitsProcessor

    from halluc.models._inputs import PreparedBatch
    from halluc.models._lvlm import LVLM

__all__ = ["GenerationHook", "InterventionArg", "SupportsApply", "applied", "register_spec_parser"]


class GenerationHook:
    """Told about every ``LVLM.generate_ids`` call; every method is a no-op until a subclass overrides it.

    ``edits_forwards``: whether the method behind this hook changes the model's forwards (module hooks, attention
    functions). A decoding loop that runs several query rows where generation runs one (OPERA's candidates in one
    forward) does so only when no attached hook does, since edits may act on the last query row alone. Hooks that
    only read or process scores set it False.
    """

    edits_forwards: ClassVar[bool] = True

    def on_generate_start(self, lvlm: LVLM, batch: PreparedBatch) -> None:
        """Called before ``model.generate``, e.g. to record this batch's image-token positions."""

    def logits_processors(self, lvlm: LVLM, batch: PreparedBatch) -> list[LogitsProcessor]:
        """Extra logits processors for this call (fresh instances; may be empty)."""
        return []

    def decoding(self, lvlm: LVLM, batch: PreparedBatch) -> Callable[..., torch.LongTensor] | None:
        """A decoding loop replacing ``model.generate``'s own for this call, or None (the default): passed as
        ``generate(custom_generate=...)``, it is called after the inputs, cache and processors are prepared as
        ``fn(model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs)`` and
        returns the sequences ``[batch, prompt + new]``. At most one attached hook may supply one."""
        return None

    def report(self, lvlm: LVLM, batch: PreparedBatch) -> list[dict[str, Any]] | None:
        """What this hook did to each sample of the call just made (one dict per sample), or None: read after
        ``model.generate`` and before ``on_generate_end``, into ``generate(..., firing=...)``."""
        return None

    def on_generate_end(self, lvlm: LVLM) -> None:
        """Called in a ``finally`` after ``model.generate``, so per-call state is always cleared."""


@runtime_checkable
class SupportsApply(Protocol):
    """An intervention: ``apply(lvlm)`` returns a context manager that attaches it for the block."""

    def apply(self, lvlm: LVLM) -> AbstractContextManager[object]:
        """Attach to ``lvlm`` on enter and detach on exit."""


InterventionArg: TypeAlias = "SupportsApply | str | Sequence[SupportsApply | str] | None"
_SPEC_PARSERS: list[Callable[[str], SupportsApply]] = []


def register_spec_parser(parser: Callable[[str], SupportsApply]) -> None:
    """Let ``generate(..., intervention="name:key=value")`` read spec strings with ``parser`` (latest wins)."""
    _SPEC_PARSERS.append(parser)


def _resolve(item: SupportsApply | str) -> SupportsApply:
    """One intervention object from an object or a spec string, or a ConfigError naming what was given."""
    if isinstance(item, str):
        if not _SPEC_PARSERS:
            raise ConfigError(f"cannot read intervention spec {item!r}: `import interventions` registers the parser")
        return _SPEC_PARSERS[-1](item)
    if isinstance(item, SupportsApply):
        return item
    raise ConfigError(
        f"intervention must be an Intervention, a spec string like 'vhr:alpha=2', or a list of them; "
        f"got {type(item).__name__}: {item!r}"
    )


@contextmanager
def _all_applied(lvlm: LVLM, parts: list[SupportsApply]) -> Iterator[None]:
    with ExitStack() as stack:
        for part in parts:
            stack.enter_context(part.apply(lvlm))
        yield


def applied(lvlm: LVLM, intervention: InterventionArg) -> AbstractContextManager[object]:
    """Context manager attaching ``intervention`` (None, one, a spec string, or a list: in order) to ``lvlm``.

    Everything is resolved before anything is attached, so a bad list item leaves the model untouched.
    """
    if intervention is None:
        return nullcontext()
    if isinstance(intervention, str) or not isinstance(intervention, Sequence):
        return _resolve(intervention).apply(lvlm)
    return _all_applied(lvlm, [_resolve(item) for item in intervention])
