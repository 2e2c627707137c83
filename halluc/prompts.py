"""Prompt wording shared by benchmarks and training: the object-existence question of POPE and its relatives."""

from __future__ import annotations

__all__ = ["existence_question"]

_VOWELS = ("a", "e", "i", "o", "u")


def existence_question(name: str) -> str:
    """POPE's question about one object: "Is there a/an <name> in the image?" ("an" before a vowel letter)."""
    article = "an" if name[:1].lower() in _VOWELS else "a"
    return f"Is there {article} {name} in the image?"
