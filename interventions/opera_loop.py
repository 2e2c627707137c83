"""OPERA's decoding loop, batched and on the KV cache; the algorithm and its sources are in ``interventions/opera.py``.

Three parts: the attention probe (an ``AttentionInterface`` function that records the last layer's probabilities
of the new query rows, max over heads), ``Lane`` (one sample's beam hypotheses, history and rollback rules, as the
official ``BeamSearchScorer`` and ``opera_beam_search`` keep them) and ``OperaLoop`` (the batched tensors: KV cache,
key mask, per-row column products of the local window).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import nn
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from halluc.models import LVLM, PreparedBatch

__all__ = ["EARLY", "FILL", "PROBE_NAME", "Lane", "OperaLoop", "last_layer_probs", "use_probe"]

PROBE_NAME = "halluc_opera_probe"
FILL = -999.0  # official value of non-candidate and rejected tokens
EARLY = 10  # official: window positions rewarded by image attention; also the smallest rollback location


# ----- the attention probe ------------------------------------------------------------------------------------------
class Probe:
    """One decoding loop's probe: the implementation every layer runs, and the last layer's recorded rows."""

    def __init__(self, delegate: Any, last: nn.Module) -> None:
        """Record nothing until armed."""
        self.delegate, self.last = delegate, last
        self.armed = False
        self.probs: torch.Tensor | None = None  # [rows, queries, keys] of the last forward, max over heads


_PROBES: WeakKeyDictionary[nn.Module, Probe] = WeakKeyDictionary()  # attention module -> probe of a running loop


def last_layer_probs(
    query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float
) -> torch.Tensor:
    """Softmax attention ``[batch, queries, keys]`` (float32), max over heads, as eager attention computes it.

    q: ``[batch, heads, queries, dim]``; k: ``[batch, kv_heads, keys, dim]``; the mask as SDPA receives it (bool,
    True = attend, or None for plain causal attention).
    """
    batch, heads, queries, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, queries, dim)
    scores = (grouped @ key[:, :, None].transpose(-1, -2)).reshape(batch, heads, queries, keys) * scaling
    if attention_mask is None:
        rows = torch.arange(queries, device=query.device)[:, None] + (keys - queries)
        attention_mask = torch.arange(keys, device=query.device)[None] <= rows  # [queries, keys]
    elif attention_mask.dtype != torch.bool:
        attention_mask = attention_mask == 0
    scores = scores.float().masked_fill(~attention_mask, torch.finfo(torch.float32).min)
    return scores.softmax(dim=-1).amax(dim=1)


def probe_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """The previous implementation for every layer; on the armed last layer, also record the probabilities."""
    probe = _PROBES.get(module)
    if probe is not None and probe.armed and module is probe.last:
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        probe.probs = last_layer_probs(query, key, attention_mask, scale)
    delegate = probe.delegate if probe is not None else sdpa_attention_forward
    return delegate(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


@contextmanager
def use_probe(lvlm: LVLM) -> Iterator[Probe]:
    """The language model on the probe for the block, then back to its previous implementation.

    The probe builds SDPA masks, so it hands layers to the previous function when that one takes them too (SDPA,
    the row-edit function) and to SDPA otherwise (eager: the same attention, another kernel).
    """
    if PROBE_NAME not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(PROBE_NAME, probe_attention)
    if PROBE_NAME not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(PROBE_NAME, sdpa_mask)
    previous = lvlm.attn_implementation
    same_masks = previous in ALL_ATTENTION_FUNCTIONS and ALL_MASK_ATTENTION_FUNCTIONS.get(previous) is sdpa_mask
    probe = Probe(ALL_ATTENTION_FUNCTIONS[previous] if same_masks else sdpa_attention_forward, lvlm.attention(-1))
    modules = [lvlm.attention(layer) for layer in range(lvlm.num_layers)]
    for module in modules:
        _PROBES[module] = probe
    lvlm.set_attn_implementation(PROBE_NAME)
    try:
        yield probe
    finally:
        lvlm.set_attn_implementation(previous)
        for module in modules:
            _PROBES.pop(module, None)


# ----- one sample ---------------------------------------------------------------------------------------------------
class Hypotheses:
    """Finished beams of one sample, as transformers 4.29's ``BeamHypotheses`` keeps them."""

    def __init__(self, size: int, length_penalty: float, early_stopping: bool | str, max_length: int) -> None:
        """Empty; ``worst`` starts at 1e9 as in the official class."""
        self.size, self.length_penalty, self.early_stopping, self.max_length = (
            size,
            length_penalty,
            early_stopping,
            max_length,
        )
        self.beams: list[tuple[float, torch.Tensor]] = []
        self.worst = 1e9

    def add(self, tokens: torch.Tensor, length: int, sum_logprobs: float) -> None:
        """Keep the hypothesis (``length`` counts the prompt) if it is among the best ``size``."""
        score = sum_logprobs / (length**self.length_penalty)
        if len(self.beams) < self.size or score > self.worst:
            self.beams.append((score, tokens))
            if len(self.beams) > self.size:
                ranked = sorted((s, i) for i, (s, _) in enumerate(self.beams))
                del self.beams[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        """Whether no running beam can still beat the worst kept hypothesis."""
        if len(self.beams) < self.size:
            return False
        if self.early_stopping is True:
            return True
        length = self.max_length if self.early_stopping == "never" and self.length_penalty > 0 else cur_len
        return self.worst >= best_sum_logprobs / length**self.length_penalty

    def best(self) -> torch.Tensor:
        """The highest-scoring hypothesis (the last added among equals, as the official sort-and-pop)."""
        return sorted(self.beams, key=lambda item: item[0])[-1][1]


@dataclass
class State:
    """What a rollback revives: the sequences (generated part), finished hypotheses, beam scores, and the choice
    ``(tokens, source beams)`` that led to this state."""

    seqs: torch.Tensor  # [beams, generated]
    hyps: Hypotheses
    beam_scores: torch.Tensor  # [beams]
    chosen: tuple[torch.Tensor, torch.Tensor] | None


@dataclass
class Lane:
    """One sample's beam search: sequences, hypotheses, the per-slot record of arg-max columns, rollback state."""

    index: int
    beams: int
    prompt_length: int  # without padding: what hypothesis lengths count
    max_new: int
    hyps: Hypotheses
    seqs: torch.Tensor  # [beams, generated]
    beam_scores: torch.Tensor  # [beams]
    chosen: tuple[torch.Tensor, torch.Tensor] | None = None
    done: bool = False
    finished: bool = False
    states: list[State] = field(default_factory=list)
    records: list[torch.Tensor] = field(default_factory=list)  # per step: [beams] mode of each slot's arg-max
    times: dict[int, int] = field(default_factory=dict)  # rollback position -> rollbacks to it
    rejects: dict[int, torch.Tensor] = field(default_factory=dict)  # rollback position -> [1, n] flat rejections
    steps: int = 0
    image_steps: int = 0
    pattern_steps: int = 0
    rollbacks: list[int] = field(default_factory=list)

    @property
    def rows(self) -> slice:
        """This sample's rows in the batched tensors."""
        return slice(self.index * self.beams, (self.index + 1) * self.beams)

    @property
    def active(self) -> bool:
        """Still searching."""
        return not (self.done or self.finished)

    def snapshot(self, window: int) -> None:
        """Record the state at the start of a step (the official ``current_state``), keeping ``window`` states."""
        if len(self.states) >= window:
            self.states.pop(0)
        self.states.append(State(self.seqs, copy.deepcopy(self.hyps), self.beam_scores.clone(), self.chosen))

    def rollback_position(self, loc: int, length: int, threshold: int, limit: int, window: int) -> int | None:
        """The official rule: where to roll back to (counting it), or None. ``length``: the window's positions."""
        record = torch.stack(self.records, dim=1)  # [beams, steps]
        if not bool(((record == loc).sum(dim=1) > threshold).all()) or loc < EARLY:
            return None
        position = loc + 1
        if position + 1 >= window:  # the official indexing fails there and skips the rollback
            return None
        if self.times.get(position, 0) >= limit:
            position -= 1
            if self.times.get(position, 0) >= limit:
                return None
        self.times[position] = self.times.get(position, 0) + 1
        if length - position > window + 1:
            position = max(1, length - window - 1)
        if len(self.states) < max(0, length - position - 2) + 2:
            return None
        return position

    def revive(self, position: int, length: int, window: int) -> tuple[State, tuple[torch.Tensor, torch.Tensor]]:
        """Drop the states after the revived one (as the official pops) and return it with the choice made there."""
        for j in range(length - position - 2):
            self.states.pop()
            self.records.pop()
            self.rejects.pop(window - 1 - j, None)  # the official clears reject_token_pos_gather[-(j + 1)]
        revived, after = self.states[-2], self.states[-1]
        self.states.pop()
        self.records.pop()
        self.rejects.pop(position + 1, None)
        self.seqs, self.hyps, self.beam_scores = revived.seqs, revived.hyps, revived.beam_scores
        self.rollbacks.append(position)
        return revived, after.chosen

    def reject(self, logits: torch.Tensor, position: int, chosen: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The revived step's logits ``[beams, vocab]`` shifted to end at -999, earlier choices there set to -999."""
        vocab = logits.shape[-1]
        shifted = logits - (-FILL + logits.min(dim=-1, keepdim=True).values)
        tokens, sources = chosen
        reject = (sources * vocab + tokens)[None]  # [1, beams] in the flattened [1, beams * vocab]
        if position in self.rejects:
            reject = torch.cat([self.rejects[position], reject], dim=-1)
        self.rejects[position] = reject
        return shifted.reshape(1, -1).scatter(-1, reject, FILL).view(-1, vocab)

    def process(
        self, scores: torch.Tensor, sources: torch.Tensor, tokens: torch.Tensor, eos: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The official ``BeamSearchScorer.process`` for this sample: ``2 * beams`` ranked continuations in, the next
        beams' scores, tokens and source beams out; EOS continuations in the top ``beams`` become hypotheses."""
        generated = self.seqs.shape[1]
        next_scores = torch.zeros(self.beams, dtype=scores.dtype, device=scores.device)
        next_tokens = torch.zeros(self.beams, dtype=torch.long, device=scores.device)
        next_sources = torch.zeros(self.beams, dtype=torch.long, device=scores.device)
        beam = 0
        for rank, (score, source, token) in enumerate(
            zip(scores.tolist(), sources.tolist(), tokens.tolist(), strict=True)
        ):
            if token in eos:
                if rank >= self.beams:
                    continue
                self.hyps.add(self.seqs[source], self.prompt_length + generated, score)
            else:
                next_scores[beam], next_tokens[beam], next_sources[beam] = score, token, source
                beam += 1
            if beam == self.beams:
                break
        if beam < self.beams:
            raise RuntimeError(f"opera: sample {self.index} has fewer than {self.beams} non-EOS continuations")
        cur_len = self.prompt_length + generated + 1
        self.done = self.done or self.hyps.is_done(float(scores.max()), cur_len)
        return next_scores, next_tokens, next_sources

    def advance(self, scores: torch.Tensor, tokens: torch.Tensor, sources: torch.Tensor) -> None:
        """Append the chosen tokens; at the length limit, add the running beams to the hypotheses (finalize)."""
        self.seqs = torch.cat([self.seqs[sources], tokens[:, None]], dim=1)
        self.beam_scores, self.chosen = scores, (tokens, sources)
        if not self.done and self.seqs.shape[1] >= self.max_new:
            for beam in range(self.beams):
                self.hyps.add(self.seqs[beam], self.prompt_length + self.seqs.shape[1], float(scores[beam]))
            self.finished = True

    def result(self) -> torch.Tensor:
        """The best hypothesis' new tokens, closed by EOS when shorter than the limit (``eos`` filled in later)."""
        return self.hyps.best()

    def report(self) -> dict[str, Any]:
        """What OPERA did to this sample."""
        return {
            "steps": self.steps,
            "image_reward_steps": self.image_steps,
            "pattern_penalty_steps": self.pattern_steps,
            "rollbacks": list(self.rollbacks),
        }


# ----- the batch ----------------------------------------------------------------------------------------------------
class OperaLoop:
    """OPERA over a batch: ``beams`` rows per sample sharing one KV cache; a step's candidates scored in one forward
    (a tree mask) or, when other methods edit the forwards, one forward per candidate."""

    def __init__(
        self,
        lvlm: LVLM,
        batch: PreparedBatch,
        config: Any,
        probe: Probe,
        generation: GenerationConfig,
        tokens_together: bool = False,
    ) -> None:
        """Prepare per-sample lanes; nothing runs yet. ``config``: the ``OPERA`` dataclass. ``tokens_together``:
        run a step's candidates, and the tokens a rollback recomputes, in one forward (see ``candidate_probs``,
        ``rebuild``); only when no other method edits the forwards, since row and head edits act on the last query
        row alone."""
        self.tokens_together = tokens_together
        device = self.device = lvlm.device
        self.lvlm, self.model, self.batch, self.config, self.probe = lvlm, lvlm.model, batch, config, probe
        eos = generation.eos_token_id
        self.eos = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])]
        self.pad = lvlm.pad_token_id if generation.pad_token_id is None else int(generation.pad_token_id)
        self.max_new = generation.max_length - batch.prompt_length
        beams = config.num_beams
        prompt_mask = batch.inputs["attention_mask"]  # [samples, prompt]
        first = torch.full((beams,), -1e9, device=device)
        first[0] = 0.0  # only the first beam's continuations count at the first step
        self.lanes = [
            Lane(
                index=i,
                beams=beams,
                prompt_length=int(prompt_mask[i].sum()),
                max_new=self.max_new,
                hyps=Hypotheses(beams, generation.length_penalty, generation.early_stopping, self.max_new),
                seqs=torch.zeros(beams, 0, dtype=torch.long, device=device),
                beam_scores=first.clone(),
            )
            for i in range(len(batch))
        ]
        for lane in self.lanes:
            lane.hyps.max_length = lane.prompt_length + self.max_new
        rows = len(batch) * beams
        self.key_mask = prompt_mask.repeat_interleave(beams, dim=0).clone()  # [rows, physical length]
        self.offsets = lvlm.prefill_positions(batch.inputs)[1].repeat_interleave(beams, dim=0)  # [rows, 1]
        self.base = torch.full((rows,), batch.prompt_length, device=device)  # physical position of the first new
        self.colprod = torch.ones(rows, self.max_new + 1, device=device)  # [rows, column]: product over stored rows
        span = torch.zeros(len(batch), batch.prompt_length, dtype=torch.bool, device=device)
        for i, positions in enumerate(batch.image_positions):
            if len(positions):  # the official span: first to last image token
                span[i, int(positions.min()) : int(positions.max()) + 1] = True
        self.span = span.repeat_interleave(beams, dim=0)  # [rows, prompt]
        self.cache: DynamicCache | None = None

    # ----- forwards -------------------------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, keep: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``tokens`` ``[rows, 1]`` after the cache; logits ``[rows, vocab]`` and last-layer probs ``[rows, keys]``.

        ``keep``: the token stays in the cache (else it is cropped away: a candidate).
        """
        mask = torch.cat([self.key_mask, torch.ones_like(tokens)], dim=1)
        positions = self.key_mask.sum(dim=1, keepdim=True) + self.offsets  # [rows, 1]
        logits, probs = self.probed(tokens, mask, positions, self.cache)
        if keep:
            self.key_mask = mask
        else:
            self.cache.crop(-1)
        return logits, probs[:, -1]

    def probed(
        self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward of ``tokens`` after ``cache`` (which it extends) with the probe armed: the last position's
        logits ``[rows, vocab]`` and the last layer's probabilities ``[rows, queries, keys]``."""
        self.probe.armed = True
        try:
            out = self.model(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        finally:
            self.probe.armed = False
        return out.logits[:, -1].float(), self.probe.probs

    def candidate_probs(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Each candidate of ``tokens`` ``[rows, candidates]`` appended alone after the cache: its last-layer
        probabilities ``[rows, keys + 1]`` over the stored keys and itself; the cache is left as it was.

        Together: all candidates in one forward, as parallel branches of a tree (each query row sees the stored keys
        and its own key only, at the same position), then cropped off: the same attention as one forward each.
        """
        if not self.tokens_together:
            return [self.forward(tokens[:, c : c + 1], keep=False)[1] for c in range(tokens.shape[1])]
        rows, count = tokens.shape
        length = self.key_mask.shape[1]
        stored = (self.key_mask != 0)[:, None, None, :].expand(rows, 1, count, length)
        own = torch.eye(count, dtype=torch.bool, device=self.device).expand(rows, 1, count, count)
        positions = (self.key_mask.sum(dim=1, keepdim=True) + self.offsets).expand(rows, count)
        mask = torch.cat([stored, own], dim=-1)  # [rows, 1, candidates, keys + candidates]
        _, probs = self.probed(tokens, mask, positions, self.cache)  # [rows, candidates, keys + candidates]
        self.cache.crop(-count)
        return [torch.cat([probs[:, c, :length], probs[:, c, length + c, None]], dim=-1) for c in range(count)]

    def fold(self, probs: torch.Tensor, scale: float) -> None:
        """Multiply each row's window columns by the newest stored row (``probs`` ``[rows, keys]``, unnormalised)."""
        weights = probs / probs.sum(dim=-1, keepdim=True)
        columns = torch.arange(self.colprod.shape[1], device=self.device)
        generated = self.key_mask.shape[1] - self.base  # [rows]: stored new tokens, the newest included
        index = (self.base[:, None] + columns).clamp(max=probs.shape[1] - 1)
        factor = torch.where(columns < generated[:, None], scale * weights.gather(1, index), 1.0)
        self.colprod = self.colprod * factor

    def rebuild(self, lane: Lane) -> torch.Tensor:
        """Recompute a revived sample's new tokens on its prompt cache, write them at the end of its rows (the
        positions between prompt and them masked), refold its columns; returns the revived step's logits. The
        tokens go in one forward, or one forward each when other methods edit the forwards (their row and head
        edits act on the last query row, as when the tokens were first decoded)."""
        rows, prompt, seqs = lane.rows, self.batch.prompt_length, lane.seqs
        count, length = seqs.shape[1], self.key_mask.shape[1]
        own = DynamicCache()
        for layer, entry in enumerate(self.cache.layers):
            own.update(entry.keys[rows, :, :prompt], entry.values[rows, :, :prompt], layer)
        prompt_mask = self.key_mask[rows, :prompt]
        positions = prompt_mask.sum(dim=1, keepdim=True) + self.offsets[rows] + torch.arange(count, device=self.device)
        chunks = [(0, count)] if self.tokens_together else [(i, i + 1) for i in range(count)]
        probs = []  # each token's last-layer attention row [beams, keys]
        for start, end in chunks:
            mask = torch.cat([prompt_mask, torch.ones_like(seqs[:, :end])], dim=1)
            logits, rows_probs = self.probed(seqs[:, start:end], mask, positions[:, start:end], own)
            probs += list(rows_probs.unbind(dim=1))
        self.colprod[rows] = 1.0
        for i in range(count):
            weights = probs[i] / probs[i].sum(dim=-1, keepdim=True)
            self.colprod[rows, : i + 1] *= self.config.scale_factor * weights[:, prompt : prompt + i + 1]
        for entry, rebuilt in zip(self.cache.layers, own.layers, strict=True):
            entry.keys[rows, :, length - count :] = rebuilt.keys[:, :, prompt:]
            entry.values[rows, :, length - count :] = rebuilt.values[:, :, prompt:]
        self.key_mask[rows, prompt:] = 0
        self.key_mask[rows, length - count :] = 1
        self.base[rows] = length - count
        return logits

    # ----- one step -------------------------------------------------------------------------------------------
    def penalised(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidates' penalised scores and tokens ``[rows, candidates]`` and each row's arg-max column mode."""
        config = self.config
        scores, tokens = logits.topk(config.num_attn_candidates, dim=-1)
        length = self.key_mask.shape[1]
        columns = torch.arange(self.colprod.shape[1], device=self.device)
        window = length - self.base  # [rows]: index of the candidate's own column
        index = (self.base[:, None] + columns).clamp(max=length)
        span = torch.nn.functional.pad(self.span, (0, length + 1 - self.span.shape[1]))
        column_scores, image = [], []
        for probs in self.candidate_probs(tokens):
            weights = probs / probs.sum(dim=-1, keepdim=True)  # [rows, length + 1]
            local = 1e-7 * (self.colprod * (config.scale_factor * weights.gather(1, index)))
            column_scores.append(torch.where(columns <= window[:, None], local, -torch.inf))
            image.append((weights * span).sum(dim=-1))
        pattern = torch.stack(column_scores, dim=1).to(torch.float16)  # [rows, candidates, columns], official fp16
        top, where = pattern.max(dim=-1)  # [rows, candidates]
        early = (window + 1 <= EARLY)[:, None]
        rewarded = scores - config.penalty_weights * -torch.stack(image, dim=1)
        scores = torch.where(early, rewarded, scores - config.penalty_weights * top)
        return scores, tokens, where.mode(dim=-1).values

    def step(self, logits: torch.Tensor, processors: LogitsProcessorList) -> torch.Tensor:
        """One official iteration for every sample; returns the tokens to feed next ``[rows]``."""
        config, beams = self.config, self.config.num_beams
        for lane in self.lanes:
            if lane.active:
                lane.snapshot(config.window_size)
        scores, tokens, modes = self.penalised(logits)
        next_logits = torch.full_like(logits, FILL).scatter(1, tokens, scores)
        for lane in self.lanes:
            if not lane.active:
                continue
            lane.steps += 1
            lane.records.append(modes[lane.rows])
            length = int(self.key_mask.shape[1] - self.base[lane.rows][0]) + 1
            loc = int(modes[lane.rows].mode().values)
            position = lane.rollback_position(
                loc, length, config.threshold, config.num_attn_candidates, config.window_size
            )
            if position is None:
                lane.image_steps += length <= EARLY
                lane.pattern_steps += length > EARLY
                continue
            _, chosen = lane.revive(position, length, config.window_size)
            next_logits[lane.rows] = lane.reject(self.rebuild(lane), position, chosen)
        log_probs = processors(self.processor_ids(), torch.log_softmax(next_logits, dim=-1))
        total = (log_probs + torch.cat([lane.beam_scores for lane in self.lanes])[:, None]).view(len(self.lanes), -1)
        best, flat = total.topk(2 * beams, dim=1)
        vocab = logits.shape[-1]
        order, fed = [], []
        for lane, lane_best, lane_flat in zip(self.lanes, best, flat, strict=True):
            if lane.active:
                lane_scores, lane_tokens, sources = lane.process(
                    lane_best, lane_flat // vocab, lane_flat % vocab, self.eos
                )
                lane.advance(lane_scores, lane_tokens, sources)
            else:  # finished samples idle on padding until the batch ends
                lane_tokens = torch.full((beams,), self.pad, device=self.device)
                sources = torch.arange(beams, device=self.device)
            order.append(sources + lane.index * beams)
            fed.append(lane_tokens)
        order = torch.cat(order)
        self.cache.reorder_cache(order)
        self.colprod = self.colprod[order]
        return torch.cat(fed)

    def processor_ids(self) -> torch.Tensor:
        """Every row's prompt and new tokens, left-padded to one length: what logits processors are shown."""
        prompts = self.batch.inputs["input_ids"].repeat_interleave(self.config.num_beams, dim=0)
        seqs = [torch.cat([prompts[lane.rows], lane.seqs], dim=1) for lane in self.lanes]
        width = max(seq.shape[1] for seq in seqs)
        padded = [torch.nn.functional.pad(seq, (width - seq.shape[1], 0), value=self.pad) for seq in seqs]
        return torch.cat(padded)

    # ----- the loop -------------------------------------------------------------------------------------------
    def run(self, input_ids: torch.Tensor, processors: LogitsProcessorList, model_kwargs: dict) -> torch.Tensor:
        """Prefill through ``generate``'s prepared inputs, step until every sample is done; the sequences
        ``[samples, prompt + new]`` (EOS closes a hypothesis shorter than the limit, padding after)."""
        beams = self.config.num_beams
        inputs = self.model.prepare_inputs_for_generation(input_ids, is_first_iteration=True, **model_kwargs)
        out = self.model(**inputs)
        self.cache = out.cache
        logits = out.logits[:, -1].float()
        if input_ids.shape[0] == len(self.lanes):  # one row per sample: copy the prompt cache to the beams
            self.cache.batch_repeat_interleave(beams)
            logits = logits.repeat_interleave(beams, dim=0)
        while True:
            fed = self.step(logits, processors)
            if not any(lane.active for lane in self.lanes):
                break
            logits, probs = self.forward(fed[:, None], keep=True)
            self.fold(probs, self.config.scale_factor)
        return self.sequences()

    def sequences(self) -> torch.Tensor:
        """Prompts followed by each sample's best hypothesis, EOS when shorter than the limit, then padding."""
        eos = self.eos[0] if self.eos else self.pad
        news = []
        for lane in self.lanes:
            best = lane.result()
            closed = torch.cat([best, torch.tensor([eos], device=best.device)])
            news.append(closed if best.shape[0] < self.max_new else best)
        width = max(new.shape[0] for new in news)
        padded = torch.stack([torch.nn.functional.pad(new, (0, width - new.shape[0]), value=self.pad) for new in news])
        return torch.cat([self.batch.inputs["input_ids"], padded], dim=1)
