"""Mechanism 1: attention-score edits on the last query row, via one function registered with transformers.

The function ``row_edit_attention`` is registered once (idempotently) in ``AttentionInterface`` under
``ATTENTION_NAME``, with transformers' SDPA mask builder registered under the same name in
``AttentionMaskInterface`` (a name without a mask function silently receives ``attention_mask=None``). It is SDPA
for every layer and row, except that when live ``RowEdit``s target a layer, the LAST query row (the position whose
output predicts the next token, in prefill and in every decoding step) is recomputed eagerly with its scores edited
as ``a + s * |a|``, ``s`` a per-(row, head, key) strength summed over the edits. Only that row is recomputed; the
KV cache is never touched.

Per-call parameters come from the edits registered for that attention module (state attached by ``add_row_edit``),
never from the process-global registry. The language model (text sub-config only) is switched to the function
while at least one edit is attached to the model, and back to its previous implementation after the last one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol
from weakref import WeakKeyDictionary

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from halluc.models import LVLM
from interventions.scope import live

__all__ = ["ATTENTION_NAME", "RowEdit", "add_row_edit", "attend_row", "last_row_scores", "row_edit_attention"]

ATTENTION_NAME = "halluc_row_edit"
_MIN = torch.finfo(torch.float32).min


class RowEdit(Protocol):
    """One method's score edit; ``armed`` while a generate call has given it a batch."""

    @property
    def armed(self) -> bool:
        """Whether a batch is set (outside generate calls the layer stays pure SDPA)."""

    def strength(self, layer: int, scores: torch.Tensor) -> torch.Tensor:
        """``s`` for ``a + s|a|``, broadcastable to ``scores`` ([rows, heads, keys], unedited, masked)."""


_EDITS: WeakKeyDictionary[nn.Module, list[RowEdit]] = WeakKeyDictionary()  # attention module -> its edits
_USERS: WeakKeyDictionary[nn.Module, tuple[int, str]] = WeakKeyDictionary()  # model -> (edit count, previous)


def last_row_scores(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Scaled scores of the last query row, ``[batch, heads, keys]`` float32, masked keys at the float32 minimum."""
    batch, heads, _, head_dim = query.shape
    kv_heads = key.shape[1]
    last = query[:, :, -1].reshape(batch, kv_heads, heads // kv_heads, head_dim)  # [batch, kv_heads, groups, dim]
    scores = (last @ key.transpose(-1, -2)).float().mul_(scaling)  # [batch, kv_heads, groups, keys]
    scores = scores.reshape(batch, heads, -1)  # [batch, heads, keys]
    if attention_mask is None:  # causal without padding: the last row sees every key
        return scores
    row = attention_mask[:, :, -1]  # [batch | 1, 1, keys]
    if row.dtype == torch.bool:
        return torch.where(row, scores, _MIN)
    return scores.add_(row).clamp_min_(_MIN)


def attend_row(scores: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Softmax (float32) of ``[batch, heads, keys]`` scores against ``value`` -> ``[batch, heads, head_dim]``."""
    batch, heads, keys = scores.shape
    kv_heads = value.shape[1]
    probs = scores.softmax(dim=-1).to(value.dtype).reshape(batch, kv_heads, heads // kv_heads, keys)
    return (probs @ value).reshape(batch, heads, value.shape[-1])  # [batch, kv_heads, groups, dim] -> flat heads


def row_edit_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """SDPA, except that live edits on this layer recompute the last query row with ``a + s|a|`` scores.

    q/k/v: ``[batch, heads | kv_heads, seq, head_dim]`` after RoPE and the cache update; returns
    ``[batch, q_len, heads, head_dim]`` as every transformers attention function does.
    """
    edits = [edit for edit in _EDITS.get(module, ()) if edit.armed and live(edit)]
    if not edits:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = last_row_scores(query, key, attention_mask, scale)  # [batch, heads, keys]
    strength = edits[0].strength(module.layer_idx, scores)
    for edit in edits[1:]:  # composed edits add their strengths
        strength = strength + edit.strength(module.layer_idx, scores)
    edited = torch.addcmul(scores, strength, scores.abs())  # a + s|a|
    row = attend_row(edited, value).to(query.dtype)[:, None]  # [batch, 1, heads, dim]
    if query.shape[2] == 1:  # decoding: the only row is the edited one
        return row, None
    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )  # [batch, q_len, heads, dim]
    return torch.cat([output[:, :-1], row], dim=1), None


def _ensure_registered() -> None:
    """Register the function and its mask builder once; later calls are no-ops."""
    if ATTENTION_NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(ATTENTION_NAME, row_edit_attention)
    if ATTENTION_NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def _use_edit_attention(lvlm: LVLM) -> Callable[[], None]:
    """Switch the language model to the edit function (first user) and return the reference-counted release."""
    model = lvlm.model
    count, previous = _USERS.get(model, (0, lvlm.attn_implementation))
    if count == 0:
        lvlm.set_attn_implementation(ATTENTION_NAME)
    _USERS[model] = (count + 1, previous)

    def release() -> None:
        remaining, before = _USERS.pop(model)
        if remaining == 1:
            lvlm.set_attn_implementation(before)
        else:
            _USERS[model] = (remaining - 1, before)

    return release


def add_row_edit(lvlm: LVLM, layers: Sequence[int], edit: RowEdit) -> Callable[[], None]:
    """Apply ``edit`` on ``layers`` while attached; returns the undo (which may restore the previous attention)."""
    _ensure_registered()
    modules = [lvlm.attention(layer) for layer in layers]
    for module in modules:
        _EDITS.setdefault(module, []).append(edit)
    release = _use_edit_attention(lvlm)

    def undo() -> None:
        for module in modules:
            kept = [other for other in _EDITS.get(module, ()) if other is not edit]
            if kept:
                _EDITS[module] = kept
            else:
                _EDITS.pop(module, None)
        release()

    return undo
