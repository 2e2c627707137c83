"""DoLa, "Decoding by Contrasting Layers" (Chuang et al., ICLR 2024), on forward pre-hooks and a logits processor.

Each step, the next-token log-probabilities of the final layer are contrasted with those of an early exit:

1. Early exits. Candidate layer ``l`` is the hidden state entering decoder layer ``l`` (``hidden_states[l]`` in
   transformers' convention: 0 is the embedding output), at the last position, sent through ``lm_head`` WITHOUT
   the final norm, as both official codes do: voidism/DoLa@805230e
   ``transformers-4.28.1/src/transformers/models/llama/modeling_llama.py:703`` (``lm_head(hidden_states[l])``;
   only the last entry is normed, lines 556, 594-598) and transformers 4.46.3
   ``src/transformers/generation/utils.py:2640-2642`` (``lm_head(outputs.hidden_states[l][:, -1, :])``). Here a
   forward pre-hook on each candidate layer of ``lvlm.decoder_layers`` keeps that input's last position.
2. Premature layer: the candidate whose distribution is furthest from the final one by Jensen-Shannon divergence,
   with each KL term averaged (not summed) over the vocabulary (voidism ``dola.py:175-198``; transformers 4.46.3
   ``utils.py:4696-4740``). The official codes then average over the batch (``js_divs.mean(-1)``, written for
   batch 1) so one layer serves the whole batch; here every row picks its own, which equals batch 1 row by row
   and keeps a sample's output independent of its batch. With one candidate there is no selection.
3. Contrast: ``log_softmax(final) - log_softmax(premature)`` on the plausible tokens, -inf elsewhere. A token is
   plausible when its final log-probability is at least ``max + log(relative_top)`` (``relative_top`` 0.1; the
   threshold is lowered to the ``min_tokens_to_keep``-th best, 1, which never binds for ``relative_top < 1``).
   Sources: voidism ``utils.py:2456-2465`` and ``2698-2705``, transformers 4.46.3 ``utils.py:4671-4693``. The
   premature log-probabilities of implausible tokens are set to a base filter value (-1e-3 in transformers,
   -1e3 in voidism) that cannot reach the output, since those tokens end at -inf.
4. Repetition penalty (``repetition_penalty`` 1.2): the official scripts default to 1.2 in both DoLa modes
   (voidism ``tfqa_eval.py:189-199``, ``gsm8k_eval.py:292-302``), and transformers warns below 1.2
   (4.46.3 ``generation/configuration_utils.py:702-708``). It is applied here, by transformers' public
   ``RepetitionPenaltyLogitsProcessor`` INSIDE this processor, right after the contrast, which is the official
   order (the contrast enters ``logits_processor``: voidism ``utils.py:2709``, transformers ``utils.py:2658``).
   Set it here, not on ``generate``: transformers runs its own processors before the custom ones, so a
   ``generate(repetition_penalty=...)`` would penalise the final-layer logits before the contrast. Like
   transformers 5's own, it ignores each row's left padding. 1.0 turns it off.

Candidate layers (``layers``): ``"high"`` is ``range(N // 2, N, 2)`` for ``N <= 40`` decoder layers and
``range(N - 20, N, 2)`` for deeper models; ``"low"`` is ``range(start, N // 2, 2)``, resp. ``range(start, 20, 2)``,
where ``start`` is 0, or, when ``lm_head`` shares the input embedding matrix (an early exit at the embeddings
would just echo the input token), 2 (1 for a 2-layer model, 0 for 1 layer); ``"low"`` is ``(start,)`` when
``start == N // 2`` (transformers 4.46.3 ``utils.py:2580-2617``; e.g. the README's LLaMA-7B sets
``0,2,...,14`` and ``16,18,...,30``, ``README.md:69-72`` and ``89-92``). Tying is read from the weights rather
than from ``config.tie_word_embeddings``, which on a VLM's top-level config need not describe its language model.
Any spec of ``interventions.resolve_layers`` also works (``"0+2+4"``, ``"all"``; ``"default"`` is ``"low"``),
indices meaning the same inputs as above. Default ``"low"``: the official setting for open-ended, long-form
generation (the README's FACTOR / GSM8K / StrategyQA and GPT-4-judged runs, ``README.md:69-72`` and ``89-92``) and
transformers' advice for long answers (4.46.3 ``configuration_utils.py:158-167``), which detailed captions are;
``"high"`` is the official TruthfulQA setting (``README.md:126-129``).

DoLa is not image-specific: it acts on every row, text-only samples and beams included. Deviations from the
official code: per-row selection (above); all arithmetic in float32 (transformers kept the early exits in the
model dtype); with ``relative_top=0`` nothing is filtered but both sides are still log-softmaxed (voidism
then subtracts raw logits, a per-row constant apart: the same argmax, but not the same after the penalty);
beam search is allowed (the officials allow greedy and sampling only, 4.46.3
``configuration_utils.py:539-546``; beams accumulate the contrast scores); sampling warpers given to ``generate``
(temperature, top-k/p), a ``repetition_penalty`` in the checkpoint's ``generation_config``, and the processors of
methods attached before DoLa act on the final-layer scores before the contrast (DoLa takes the scores it is
handed as the final layer's); the official code applied warpers after the contrast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LogitsProcessor, RepetitionPenaltyLogitsProcessor

from halluc.errors import ConfigError
from halluc.models import LVLM, GenerationHook, PreparedBatch
from interventions.base import Handle, Intervention, StepForwardProcessor, register
from interventions.batching import add_generation_hook, fit
from interventions.layers import check_layer_spec, resolve_layers
from interventions.scope import live

__all__ = ["DoLa", "dola_contrast", "premature_candidates"]

BUCKETS = ("high", "low")
MIN_TOKENS_TO_KEEP = 1  # transformers 4.46.3 utils.py:4677


def premature_candidates(bucket: str, num_layers: int, tied: bool) -> tuple[int, ...]:
    """The official candidate layers of ``bucket`` ("high" or "low") for a model of ``num_layers`` decoder layers."""
    if bucket == "high":
        return tuple(range(num_layers // 2 if num_layers <= 40 else num_layers - 20, num_layers, 2))
    start = 0 if not tied else 2 if num_layers > 2 else 1 if num_layers == 2 else 0
    if start == num_layers // 2:
        return (start,)
    layers = tuple(range(start, num_layers // 2 if num_layers <= 40 else 20, 2))
    if not layers:  # a 3-layer tied model: start 2 is past the lower half
        raise ConfigError(f"dola: layers='low' selects no layer of this {num_layers}-layer model; list them instead")
    return layers


def dola_contrast(
    final: torch.Tensor, premature: torch.Tensor, relative_top: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """DoLa scores ``[rows, vocab]`` and each row's chosen candidate ``[rows]``.

    ``final``: final-layer logits ``[rows, vocab]``; ``premature``: the candidates' early-exit logits
    ``[candidates, rows, vocab]``. Float32 throughout.
    """
    log_final = torch.log_softmax(final.float(), dim=-1)  # [rows, vocab]
    log_early = torch.log_softmax(premature.float(), dim=-1)  # [candidates, rows, vocab]
    rows = torch.arange(final.shape[0], device=final.device)
    if premature.shape[0] == 1:
        chosen = torch.zeros_like(rows)
    else:
        middle = 0.5 * (log_final.exp()[None] + log_early.exp())  # [candidates, rows, vocab]
        to_final = F.kl_div(log_final[None].expand_as(middle), middle, reduction="none").mean(-1)
        to_early = F.kl_div(log_early, middle, reduction="none").mean(-1)  # [candidates, rows]
        chosen = (0.5 * (to_final + to_early)).argmax(dim=0)  # [rows]: the most distant candidate
    contrast = log_final - log_early[chosen, rows]  # [rows, vocab]
    if relative_top > 0:
        kth_best = log_final.topk(MIN_TOKENS_TO_KEEP, dim=-1).values[:, -1:]  # [rows, 1]
        threshold = torch.minimum(kth_best, log_final.amax(dim=-1, keepdim=True) + math.log(relative_top))
        contrast = contrast.masked_fill(log_final < threshold, -math.inf)
    return contrast, chosen


@register("dola")
@dataclass(frozen=True)
class DoLa(Intervention):
    """Contrast the final layer's next-token log-probabilities with the most distant premature layer's."""

    layers: str = "low"
    relative_top: float = 0.1
    repetition_penalty: float = 1.2

    def check(self) -> None:
        """Check every value, naming the bad one."""
        if not 0 <= self.relative_top < 1:
            raise ConfigError(f"dola: relative_top must be in [0, 1), got {self.relative_top!r}")
        if not self.repetition_penalty > 0:
            raise ConfigError(f"dola: repetition_penalty must be > 0 (1 is off), got {self.repetition_penalty!r}")
        if self.layers not in BUCKETS:
            try:
                check_layer_spec(self.layers)
            except ConfigError as error:
                raise ConfigError(
                    f"dola: layers must be 'high', 'low' or a layer spec such as 0+2+4, got {self.layers!r} ({error})"
                ) from None

    def candidates(self, lvlm: LVLM) -> tuple[int, ...]:
        """The candidate premature layers on ``lvlm`` (indices of the decoder layers whose input is read)."""
        tied = lvlm.lm_head.weight is lvlm.model.get_input_embeddings().weight
        if self.layers in BUCKETS:
            return premature_candidates(self.layers, lvlm.num_layers, tied)
        return resolve_layers(self.layers, lvlm.num_layers, partial(premature_candidates, "low", tied=tied))

    def reads_step_forward(self) -> bool:
        """The contrast reads the early exits captured in the step's forward."""
        return True

    def install(self, lvlm: LVLM, handle: Handle) -> None:
        """A pre-hook per candidate layer keeping its input's last position, and the per-call contrast hook."""
        state = _Contrast(self, self.candidates(lvlm))
        for layer in state.layers:
            hook = lvlm.decoder_layers[layer].register_forward_pre_hook(partial(state.capture, layer), with_kwargs=True)
            handle.on_remove(hook.remove)
        handle.on_remove(add_generation_hook(lvlm, state))


class _Contrast(GenerationHook):
    """DoLa's per-call state: the candidates' last-position inputs of the current step, and the left padding."""

    def __init__(self, config: DoLa, layers: tuple[int, ...]) -> None:
        """Idle until a generate call starts."""
        self.config = config
        self.layers = layers
        self._hidden: dict[int, torch.Tensor] | None = None  # layer -> [rows, hidden], this step only

    def capture(self, layer: int, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: keep the last position of the layer's input (never edits it)."""
        if self._hidden is None or not live(self):
            return
        hidden = args[0] if args else kwargs["hidden_states"]  # [rows, seq, hidden]
        self._hidden[layer] = hidden[:, -1].detach().clone()

    def take(self, rows: int) -> torch.Tensor:
        """``[candidates, rows, hidden]`` of the step just run, consumed so that a stale step is never reused."""
        if self._hidden is None or set(self._hidden) != set(self.layers):
            raise RuntimeError(f"dola: no hidden states of layers {self.layers} for this step")
        hidden = torch.stack([self._hidden.pop(layer) for layer in self.layers])
        if hidden.shape[1] != rows:
            raise RuntimeError(f"dola: the step ran {hidden.shape[1]} rows but the scores have {rows}")
        return hidden

    def on_generate_start(self, lvlm: LVLM, batch: PreparedBatch) -> None:
        """Arm the capture."""
        self._hidden = {}
        self.chosen: list[torch.Tensor] = []  # per step: [rows] index into ``layers`` of the premature layer used

    def report(self, lvlm: LVLM, batch: PreparedBatch) -> list[dict[str, Any]] | None:
        """Per sample: the premature layer each step contrasted against (its first row when beams repeat it)."""
        if not self.chosen:
            return None
        per_sample = self.chosen[0].shape[0] // len(batch)
        steps = torch.stack(self.chosen)[:, ::per_sample].T.tolist()  # [samples, steps]
        return [{"dola": {"premature_layers": [self.layers[i] for i in row]}} for row in steps]

    def logits_processors(self, lvlm: LVLM, batch: PreparedBatch) -> list[LogitsProcessor]:
        """A fresh contrast processor for this call, told each sample's left padding (kept out of the penalty)."""
        padding = (batch.inputs["attention_mask"] != 0).int().argmax(dim=1)  # [samples]
        return [_LayerContrast(self, lvlm.lm_head, padding)]

    def on_generate_end(self, lvlm: LVLM) -> None:
        """Disarm and drop the captured states."""
        self._hidden = None


class _LayerContrast(StepForwardProcessor):
    """Replaces the final-layer scores by DoLa's contrast, then applies the repetition penalty."""

    def __init__(self, state: _Contrast, lm_head: nn.Module, padding: torch.Tensor) -> None:
        """One generate call's processor; the penalty is built at the first step, when the row count is known.

        ``padding``: ``[samples]`` left-padding lengths, which the penalty ignores.
        """
        self.state = state
        self.lm_head = lm_head
        self.padding = padding
        self.penalty: RepetitionPenaltyLogitsProcessor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """Return new scores ``[rows, vocab]``; the inputs are not modified."""
        hidden = self.state.take(scores.shape[0])  # [candidates, rows, hidden]
        weight = self.lm_head.weight
        with torch.no_grad():
            early = self.lm_head(hidden.to(weight.device, weight.dtype)).to(scores.device)  # [candidates, rows, vocab]
        contrast, chosen = dola_contrast(scores, early, self.state.config.relative_top)
        self.state.chosen.append(chosen.cpu())
        config = self.state.config
        if config.repetition_penalty != 1:
            if self.penalty is None:
                padding = fit(self.padding, scores.shape[0]).to(input_ids.device)  # [rows]
                self.penalty = RepetitionPenaltyLogitsProcessor(float(config.repetition_penalty), padding)
            contrast = self.penalty(input_ids, contrast)
        return contrast.to(scores.dtype)
