"""Mechanism 2: per-head edits through forward pre-hooks on each layer's attention output projection.

The input of ``o_proj`` is the concatenation of the heads' outputs, ``[batch, seq, heads * head_dim]``, for every
attention implementation (eager, SDPA, flash, ours), so splitting it into ``[batch, seq, heads, head_dim]`` gives
each head's output before it is mixed back into the residual stream. A ``HeadEdit`` sees that view and returns a
replacement (or None to leave it); hooks only act when their owner is live (see ``scope``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from halluc.models import LVLM
from interventions.scope import live

__all__ = ["HeadEdit", "add_head_hooks", "scale_last_position"]

HeadEdit = Callable[[int, torch.Tensor], torch.Tensor | None]  # (layer, [batch, seq, heads, head_dim]) -> same


def scale_last_position(heads: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Multiply the last position's heads by ``scale`` ``[batch, heads]``; earlier positions are unchanged."""
    last = heads[:, -1:] * scale[:, None, :, None].to(heads.dtype)  # [batch, 1, heads, head_dim]
    return last if heads.shape[1] == 1 else torch.cat([heads[:, :-1], last], dim=1)


def add_head_hooks(lvlm: LVLM, layers: Sequence[int], edit: HeadEdit, owner: object) -> Callable[[], None]:
    """Pre-hook ``o_proj`` of each layer in ``layers`` with ``edit``; returns the undo removing these hooks only."""
    heads, head_dim = lvlm.num_heads, lvlm.head_dim

    def make_hook(layer: int) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], tuple | None]:
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple | None:
            if not live(owner):
                return None
            flat = args[0]  # [batch, seq, heads * head_dim]
            edited = edit(layer, flat.reshape(*flat.shape[:-1], heads, head_dim))  # [batch, seq, heads, head_dim]
            return None if edited is None else (edited.reshape(flat.shape), *args[1:])

        return hook

    handles = [lvlm.o_proj(layer).register_forward_pre_hook(make_hook(layer)) for layer in layers]

    def undo() -> None:
        for handle in handles:
            handle.remove()

    return undo
