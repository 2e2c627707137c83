"""Which intervention machinery is live during a forward pass.

Normally every attached hook and edit is live. Some methods run an auxiliary forward of their own (VHR's paired
image/text-only prefill, PAI's text-only CFG branch, head analysis); inside ``owned_forward(owner)`` only that
owner's machinery acts, so composed interventions never edit each other's auxiliary passes. The owner lives in a
``ContextVar``, never in a global registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["live", "owned_forward"]

_OWNER: ContextVar[object | None] = ContextVar("halluc_forward_owner", default=None)


@contextmanager
def owned_forward(owner: object) -> Iterator[None]:
    """Run the block as ``owner``'s auxiliary forward: every other intervention's machinery is off."""
    token = _OWNER.set(owner)
    try:
        yield
    finally:
        _OWNER.reset(token)


def live(owner: object) -> bool:
    """Whether machinery belonging to ``owner`` should act in the current forward."""
    current = _OWNER.get()
    return current is None or current is owner
