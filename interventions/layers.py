"""Layer selections as short strings, and the rule that scales a paper's 32-layer choice to any depth.

Grammar (0-based decoder layer indices): ``default`` (the method's own rule), ``all``, ``first``, ``last``, or
items joined by ``+`` where an item is ``i`` or an inclusive range ``i-j``, e.g. ``0+18-31``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from halluc.errors import ConfigError

__all__ = ["check_layer_spec", "resolve_layers", "scale_to_depth"]

NAMED = ("default", "all", "first", "last")
REFERENCE_DEPTH = 32  # the papers' LLaVA-1.5-7B language model


def scale_to_depth(count_at_32: int, num_layers: int) -> int:
    """``count_at_32`` layers of a 32-layer model, scaled to ``num_layers`` and rounded half up."""
    return math.floor(count_at_32 * num_layers / REFERENCE_DEPTH + 0.5)


def _items(spec: str) -> list[tuple[int, int]]:
    """The ``(first, last)`` ranges of an explicit spec, or a ConfigError naming the bad item."""
    ranges = []
    for item in spec.split("+"):
        low, dash, high = item.strip().partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise ConfigError(
                f"bad layer item {item!r} in {spec!r}; use {', '.join(NAMED)} or indices/ranges like 0+18-31"
            ) from None
        if first < 0 or last < first:
            raise ConfigError(f"bad layer range {item!r} in {spec!r}; indices are 0-based and ranges ascend")
        ranges.append((first, last))
    return ranges


def check_layer_spec(spec: str) -> None:
    """Validate the syntax of a layer spec (depth is checked later, at attach time)."""
    if spec not in NAMED:
        _items(spec)


def resolve_layers(spec: str, num_layers: int, default: Callable[[int], tuple[int, ...]]) -> tuple[int, ...]:
    """Sorted layer indices for a model with ``num_layers`` decoder layers."""
    if spec == "default":
        return default(num_layers)
    if spec == "all":
        return tuple(range(num_layers))
    if spec in ("first", "last"):
        return (0,) if spec == "first" else (num_layers - 1,)
    layers = sorted({layer for first, last in _items(spec) for layer in range(first, last + 1)})
    if layers[-1] >= num_layers:
        raise ConfigError(f"layer {layers[-1]} in {spec!r} is out of range; this model has layers 0..{num_layers - 1}")
    return tuple(layers)
