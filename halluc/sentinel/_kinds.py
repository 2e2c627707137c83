"""The sentence kinds SENTINEL tells apart and the pair types built from them (names shared by config and steps)."""

from __future__ import annotations

from typing import Literal

__all__ = ["KINDS", "PAIR_TYPES", "Kind"]

Kind = Literal["hallucinated", "coherent", "exploratory", "uncertain", "no_objects", "repeat"]
KINDS: tuple[str, ...] = ("hallucinated", "coherent", "exploratory", "uncertain", "no_objects", "repeat")
PAIR_TYPES: tuple[str, ...] = ("coherent", "exploratory")  # the kind of the positive; the negative is hallucinated
