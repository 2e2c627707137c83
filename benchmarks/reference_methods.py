"""Straightforward eager batch-1 implementations of each method's official algorithm: the yardstick for the
fidelity tests (``tests/test_fidelity.py``, ``tests/test_opera.py``) and for the speed benchmark
(``scripts/bench_interventions.py``).

Written from the official code's algorithm (LALBJ/PAI, hasanar1f/PAINT, and the VHR paper's Algorithm 1; the
VHR repository could not be read here), in its style: eager attention whose pre-softmax scores of the last query
row are edited in place by layer, ``model.generate`` one sample at a time, CFG as a logits processor with its own
text-only forward and cache (edits off during it), VHR choosing its heads layer by layer with two full forwards
per layer. Nothing here uses halluc's intervention machinery; only the configs' values are read.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from PIL import Image
from transformers import AttentionInterface, LogitsProcessor
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from halluc.models import LVLM

__all__ = [
    "OperaReference",
    "ReferenceRun",
    "reference_opera",
    "reference_pai",
    "reference_token_emphasis",
    "reference_vhr",
    "reference_vista",
]

ATTENTION = "halluc_reference_eager"
EDITS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}  # layer -> edit of the last row's [heads, keys]
STATE = {"edits_on": True}  # the official CFG pass turns the edits off


def _eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention; the last query row's scores go through ``EDITS[layer]`` when edits are on."""
    key, value = repeat_kv(key, module.num_key_value_groups), repeat_kv(value, module.num_key_value_groups)
    weights = query @ key.transpose(2, 3) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    edit = EDITS.get(module.layer_idx) if STATE["edits_on"] else None
    if edit is not None:
        weights[0, :, -1] = edit(weights[0, :, -1])
    probs = weights.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    return (probs @ value).transpose(1, 2).contiguous(), probs


@contextmanager
def _eager_edits(lvlm: LVLM) -> Iterator[None]:
    """The language model on the editing eager attention for the block; edits cleared after."""
    if ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION, _eager_attention)
        AttentionMaskInterface.register(ATTENTION, eager_mask)
    previous = lvlm.attn_implementation
    lvlm.set_attn_implementation(ATTENTION)
    try:
        yield
    finally:
        EDITS.clear()
        STATE["edits_on"] = True
        lvlm.set_attn_implementation(previous)


class _ReferenceCFG(LogitsProcessor):
    """PAI's CFG.py: ``gamma * (lc - lu) + lu`` on log-probs, ``lc < log(cutoff) + max lc`` set to -inf."""

    def __init__(self, lvlm: LVLM, prompt: str, gamma: float, cutoff: float) -> None:
        self.model = lvlm.model
        self.ids = lvlm.text_only([prompt]).inputs["input_ids"]  # [1, text prompt]
        self.gamma, self.cutoff = gamma, cutoff
        self.cache = None

    def _unconditional(self, input_ids: torch.LongTensor) -> torch.Tensor:
        step = self.ids if self.cache is None else input_ids[:, -1:]
        start = 0 if self.cache is None else self.cache.get_seq_length()
        positions = torch.arange(start, start + step.shape[1])[None]
        STATE["edits_on"] = False
        try:
            out = self.model(input_ids=step, position_ids=positions, cache=self.cache, use_cache=True)
        finally:
            STATE["edits_on"] = True
        self.cache = out.cache
        return out.logits[:, -1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        lc = torch.log_softmax(scores.float(), dim=-1)
        lu = torch.log_softmax(self._unconditional(input_ids).float(), dim=-1)
        out = self.gamma * (lc - lu) + lu
        return out.masked_fill(lc < math.log(self.cutoff) + lc.max(dim=-1, keepdim=True).values, -math.inf)


class ReferenceRun:
    """Greedy tokens and the processed scores of each step of one reference generation."""

    def __init__(self, tokens: list[int], scores: list[torch.Tensor]) -> None:
        self.tokens, self.scores = tokens, scores


def _generate(lvlm: LVLM, image: Image.Image | None, prompt: str, new_tokens: int, cfg: _ReferenceCFG | None):
    inputs = lvlm.prepare([image], [prompt]).inputs
    out = lvlm.model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        logits_processor=[cfg] if cfg else [],
        output_scores=True,
        return_dict_in_generate=True,
    )
    return ReferenceRun(out.sequences[0, inputs["input_ids"].shape[1] :].tolist(), [s[0] for s in out.scores])


def _image_span(lvlm: LVLM, image: Image.Image | None, prompt: str) -> torch.Tensor:
    """Positions of the image tokens in the one-sample prompt."""
    ids = lvlm.prepare([image], [prompt]).inputs["input_ids"][0]
    return (ids == lvlm.model.config.image_token_id).nonzero().flatten()


def _paper_start(num_layers: int) -> int:
    """The first edited layer: 2 of 32 (PAI's ``--start-layer 2``) scaled to depth, at least 1."""
    return max(1, math.floor(2 * num_layers / 32 + 0.5))


def reference_pai(
    lvlm: LVLM, image, prompt: str, new_tokens: int, alpha: float, cfg: bool, gamma: float, cutoff: float
):
    """PAI: ``S[:, -1, img] += alpha |S[:, -1, img]|`` on layers start..L-1, then CFG when on."""
    span = _image_span(lvlm, image, prompt)

    def edit(scores: torch.Tensor) -> torch.Tensor:
        scores[:, span] = scores[:, span] + alpha * scores[:, span].abs()
        return scores

    with _eager_edits(lvlm):
        if len(span):
            EDITS.update({layer: edit for layer in range(_paper_start(lvlm.num_layers), lvlm.num_layers)})
        return _generate(lvlm, image, prompt, new_tokens, _ReferenceCFG(lvlm, prompt, gamma, cutoff) if cfg else None)


def _cls_attention(lvlm: LVLM, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS-to-patch attention (summed over heads) of CLIP's first layer and of the feature layer, one image."""
    pixels = lvlm.prepare([image], ["x"]).inputs["pixel_values"]
    lvlm.model.set_attn_implementation({"vision_config": "eager"})
    try:
        attentions = lvlm.vision_tower(pixels, output_attentions=True).attentions
    finally:
        lvlm.model.set_attn_implementation({"vision_config": "sdpa"})
    feature = lvlm.model.config.vision_feature_layer
    return attentions[0][0, :, 0, 1:].sum(0), attentions[feature][0, :, 0, 1:].sum(0)


def reference_token_emphasis(
    lvlm: LVLM, image, prompt: str, new_tokens: int, local: float, summary: float, fraction: float, gamma: float
):
    """PAINT (modPAI): local = top int(fraction n) of layer-0 CLS attention minus summary; summary = IQR outliers
    of the layer -2 CLS attention; ``S += alpha|S|`` / ``beta|S|`` on those image columns; CFG (cut-off 0.1)."""
    span = _image_span(lvlm, image, prompt)
    first, feature = (a.detach().float().numpy() for a in _cls_attention(lvlm, image))
    q1, q3 = (float(v) for v in torch.quantile(torch.from_numpy(feature), torch.tensor([0.25, 0.75])))
    summary_idx = {int(i) for i in (feature > q3 + 1.5 * (q3 - q1)).nonzero()[0]}
    top = sorted(range(len(first)), key=lambda i: -first[i])[: max(1, int(fraction * len(first)))]
    local_idx = [i for i in top if i not in summary_idx]
    local_cols, summary_cols = span[local_idx], span[sorted(summary_idx)]

    def edit(scores: torch.Tensor) -> torch.Tensor:
        scores[:, local_cols] = scores[:, local_cols] + local * scores[:, local_cols].abs()
        scores[:, summary_cols] = scores[:, summary_cols] + summary * scores[:, summary_cols].abs()
        return scores

    with _eager_edits(lvlm):
        EDITS.update({layer: edit for layer in range(_paper_start(lvlm.num_layers), lvlm.num_layers)})
        return _generate(lvlm, image, prompt, new_tokens, _ReferenceCFG(lvlm, prompt, gamma, 0.1))


def _vhr_layers(num_layers: int) -> list[int]:
    """The second layer plus the last 14 of 32, scaled to depth (at least one)."""
    last = max(1, math.floor(14 * num_layers / 32 + 0.5))
    return sorted({min(1, num_layers - 1), *range(num_layers - last, num_layers)})


def reference_vhr(lvlm: LVLM, image, prompt: str, new_tokens: int, alpha: float):
    """VHR, Algorithm 1: per VHR layer in order, an image and a text-only forward (earlier layers already
    reinforced); VHD = ||h_img - h_txt|| per head at the last position; heads whose VHD and text-only squared
    norm both exceed mean + std get VHD 0; heads above the median VHD are scaled by ``alpha`` while generating."""
    heads, head_dim = lvlm.num_heads, lvlm.head_dim
    image_inputs, text_inputs = lvlm.prepare([image], [prompt]).inputs, lvlm.text_only([prompt]).inputs
    scales: dict[int, torch.Tensor] = {}
    captured: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(module, args):
            split = args[0].reshape(*args[0].shape[:-1], heads, head_dim).clone()
            captured[layer] = split[0, -1].float()
            if layer in scales:
                split[:, -1] = split[:, -1] * scales[layer][:, None].to(split.dtype)
            return (split.reshape(args[0].shape),)

        return hook

    hooks = [lvlm.o_proj(layer).register_forward_pre_hook(make_hook(layer)) for layer in _vhr_layers(lvlm.num_layers)]
    try:
        if image is not None:
            for layer in _vhr_layers(lvlm.num_layers):
                with torch.no_grad():
                    lvlm.model(**image_inputs)
                    with_image = captured[layer]
                    lvlm.model(**text_inputs)
                    text_only = captured[layer]
                vhd, norm = (with_image - text_only).norm(dim=-1), text_only.pow(2).sum(dim=-1)
                outlier = (vhd > vhd.mean() + vhd.std()) & (norm > norm.mean() + norm.std())
                vhd = torch.where(outlier, torch.zeros_like(vhd), vhd)
                scales[layer] = torch.where(vhd > vhd.median(), alpha, 1.0)
        return _generate(lvlm, image, prompt, new_tokens, None)
    finally:
        for hook in hooks:
            hook.remove()


def reference_vista(lvlm: LVLM, image, prompt: str, new_tokens: int, strength: float, alpha: float) -> ReferenceRun:
    """VISTA, one sample, a full forward per step without a cache: v_l = last-token output of layer l with the
    image minus without it; every MLP output steered ``normalize(normalize(x) + lambda (1 + relu(cos(x, -v))) v/|v|)
    |x|``; logits mixed ``(1 - alpha) logits + alpha mean lm_head(h_l)`` over layers 25..30 of 32 (scaled)."""
    layers = lvlm.decoder_layers
    last_sla = min(math.floor(30 * len(layers) / 32 + 0.5), len(layers) - 2)
    sla = range(max(min(math.floor(25 * len(layers) / 32 + 0.5), last_sla), 0), max(last_sla, 0) + 1)
    outputs: dict[int, torch.Tensor] = {}
    capture = [
        block.register_forward_hook(
            lambda m, a, out, i=i: outputs.__setitem__(i, out[0] if isinstance(out, tuple) else out)
        )
        for i, block in enumerate(layers)
    ]
    inputs = dict(lvlm.prepare([image], [prompt]).inputs)
    vectors: dict[int, torch.Tensor] = {}
    steering = []
    try:
        if image is not None:
            with torch.no_grad():
                lvlm.model(**inputs)
                with_image = {i: h[0, -1].float() for i, h in outputs.items()}
                lvlm.model(**lvlm.text_only([prompt]).inputs)
                vectors = {i: with_image[i] - h[0, -1].float() for i, h in outputs.items()}

        def make_steer(i: int):
            def hook(module, args, x):
                v = vectors[i]
                unit = v / v.norm()
                cos = (x.float() @ -v) / (x.float().norm(dim=-1) * v.norm())  # [1, seq]
                y = strength * (1 + cos.clamp(min=0))[..., None] * unit
                xf = x.float()
                moved = xf / xf.norm(dim=-1, keepdim=True) + y
                return (moved / moved.norm(dim=-1, keepdim=True) * xf.norm(dim=-1, keepdim=True)).to(x.dtype)

            return hook

        if vectors and strength > 0:
            steering = [block.mlp.register_forward_hook(make_steer(i)) for i, block in enumerate(layers)]
        new: list[int] = []
        scores: list[torch.Tensor] = []
        for _ in range(new_tokens):
            step = dict(inputs)
            tail = torch.tensor([new], dtype=torch.long)
            for name, value in inputs.items():
                if value.dim() == 2 and value.shape == inputs["input_ids"].shape:
                    fill = tail if name == "input_ids" else torch.full_like(tail, int(name == "attention_mask"))
                    step[name] = torch.cat([value, fill.to(value.dtype)], dim=1)
            with torch.no_grad():
                logits = lvlm.model(**step).logits[0, -1].float()
                early = torch.stack([lvlm.lm_head(outputs[i][0, -1]).float() for i in sla]).mean(dim=0)
            logits[lvlm.model.generation_config.eos_token_id or 0] = -math.inf  # min_new_tokens keeps EOS out
            mixed = (1 - alpha) * logits + alpha * early if alpha > 0 else logits
            scores.append(mixed)
            new.append(int(mixed.argmax()))
        return ReferenceRun(new, scores)
    finally:
        for hook in capture + steering:
            hook.remove()


class OperaReference(ReferenceRun):
    """OPERA's new tokens, the processed scores ``[beams, vocab]`` of every loop iteration, and the rollback
    positions in order."""

    def __init__(self, tokens: list[int], scores: list[torch.Tensor], rollbacks: list[int]) -> None:
        super().__init__(tokens, scores)
        self.rollbacks = rollbacks


class _Hyps:
    """transformers 4.29 ``BeamHypotheses`` (length_penalty 1, early_stopping False: the generation defaults)."""

    def __init__(self, beams: int) -> None:
        self.beams, self.kept, self.worst = beams, [], 1e9

    def add(self, hyp: torch.Tensor, sum_logprobs: float) -> None:
        score = sum_logprobs / hyp.shape[-1]
        if len(self.kept) < self.beams or score > self.worst:
            self.kept.append((score, hyp))
            if len(self.kept) > self.beams:
                ranked = sorted([(s, i) for i, (s, _) in enumerate(self.kept)])
                del self.kept[ranked[0][1]]
                self.worst = ranked[1][0]
            else:
                self.worst = min(score, self.worst)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        return len(self.kept) >= self.beams and self.worst >= best_sum_logprobs / cur_len


def reference_opera(
    lvlm: LVLM,
    image: Image.Image | None,
    prompt: str,
    new_tokens: int,
    num_beams: int = 5,
    scale_factor: float = 50.0,
    threshold: int = 15,
    num_attn_candidates: int = 5,
    penalty_weights: float = 1.0,
    window_size: int = 512,
) -> OperaReference:
    """shikiw/OPERA ``opera_beam_search`` (transformers-4.29.2/src/transformers/generation/utils.py:3116-3600), one
    sample, eager attention: the prompt (with its image) runs once; each iteration then recomputes all the beams'
    new tokens on a copy of the prompt cache (``output_attentions``; a generated image-placeholder id would break
    a forward of the whole sequence), the last layer's rows max over heads, then every candidate appended; column
    scores in float16; the same history, rollback and rejection rules; beam search as 4.29's
    ``BeamSearchScorer``. Only the rows of new tokens are kept: the window and the row sums need no others."""
    beams, C = num_beams, num_attn_candidates
    base = dict(lvlm.prepare([image] * beams, [prompt] * beams).inputs)  # the official expands the input per beam
    prompt_ids = base["input_ids"]
    P = prompt_ids.shape[1]
    image_ids = (prompt_ids[0] == lvlm.model.config.image_token_id).nonzero().flatten()
    eos = lvlm.model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos)

    def forward(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last logits ``[beams, vocab]`` and the last layer's rows of the new tokens, max over heads."""
        if ids.shape[1] == P:
            return prompt_logits, torch.zeros(beams, 1, 0, P)
        positions = torch.arange(P, ids.shape[1])[None] + offsets  # text positions after the prompt
        out = lvlm.model(
            input_ids=ids[:, P:], attention_mask=torch.ones_like(ids), position_ids=positions,
            cache=copy.deepcopy(prompt_cache), output_attentions=True,
        )  # fmt: skip
        return out.logits[:, -1].float(), out.attentions[-1].float().max(1, keepdim=True).values

    previous = lvlm.attn_implementation
    lvlm.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            prompt_positions, offsets = lvlm.prefill_positions(base)  # offsets: M-RoPE's shift after an image
            out = lvlm.model(**base, position_ids=prompt_positions, use_cache=True)
            prompt_logits, prompt_cache = out.logits[:, -1].float(), out.cache
            return _opera_loop(
                forward, prompt_ids, P, image_ids, eos, new_tokens, beams, scale_factor, threshold, C,
                penalty_weights, window_size,
            )  # fmt: skip
    finally:
        lvlm.set_attn_implementation(previous)


def _opera_loop(forward, input_ids, P, image_ids, eos, new_tokens, beams, scale_factor, threshold, C, weights, window):
    max_length = P + new_tokens
    beam_scores = torch.zeros(beams)
    beam_scores[1:] = -1e9
    hyps, done = _Hyps(beams), False
    history, history_locs, max_rollback_time = [], [], torch.zeros(window)
    rejects = [[] for _ in range(window)]
    beam_next_tokens = beam_idx = None
    all_scores, rollbacks = [], []
    while True:
        state = {"input_ids": input_ids.clone(), "hyps": copy.deepcopy(hyps)}
        logits, attn_previous = forward(input_ids)  # [beams, vocab], [beams, 1, L - P, L]
        cand_scores, cand_tokens = torch.topk(logits, C, dim=-1, largest=True, sorted=True)
        state.update(beam_scores=beam_scores.clone(), beam_next_tokens=beam_next_tokens, beam_idx=beam_idx)
        attn_last = []
        for c in range(C):
            _, attn = forward(torch.cat([input_ids, cand_tokens[:, c : c + 1]], dim=-1))
            square = torch.cat([attn_previous, torch.zeros_like(attn_previous).sum(-1, keepdim=True)], -1)
            attn_last.append(torch.cat([square, attn[:, :, -1:]], -2))
        attn_last = torch.cat(attn_last, 1)  # [beams, C, L - P + 1, L + 1]: the rows of the new tokens
        attn_last = attn_last / attn_last.sum(-1, keepdim=True)
        attn_local = scale_factor * attn_last[:, :, :, P:]
        attn_local_scores = torch.zeros(attn_local.shape[:2] + attn_local.shape[-1:], dtype=torch.float16)
        for j in range(attn_local.shape[-1]):
            attn_local_scores[..., j] = (1e-7 * attn_local[..., j:, j].prod(-1)).to(torch.float32)
        cur_response_lens = attn_local.shape[-1]
        if len(image_ids):
            attn_i = attn_last[:, :, -1, int(image_ids[0]) : int(image_ids[-1]) + 1].sum(-1)
        else:
            attn_i = torch.zeros(attn_last.shape[:2])
        rollback_scores, rollback_locs = attn_local_scores.max(-1)
        rollback_loc = rollback_locs.mode().values.mode().values
        penalty_scores = -attn_i if cur_response_lens <= 10 else rollback_scores
        history_locs.append(rollback_locs.mode().values[:, None])
        gathered = torch.cat(history_locs, -1)
        cand_scores = cand_scores - weights * penalty_scores
        if len(history) >= window:
            history.pop(0)
        history.append(state)
        pos, rolled = int(rollback_loc) + 1, False
        if all((row == rollback_loc).long().sum() > int(threshold) for row in gathered) and rollback_loc >= 10:
            if pos + 1 < window and max_rollback_time[pos] >= C:
                pos -= 1
                rolled = bool(max_rollback_time[pos] < C)
            else:
                rolled = pos + 1 < window
            if rolled:
                max_rollback_time[pos] += 1
                if cur_response_lens - pos > window + 1:
                    pos = max(1, cur_response_lens - window - 1)
                for j in range(cur_response_lens - pos - 2):
                    history.pop(-1)
                    history_locs.pop(-1)
                    rejects[-(j + 1)] = []
                input_ids, hyps = history[-2]["input_ids"], history[-2]["hyps"]
                beam_scores = history[-2]["beam_scores"]
                beam_next_tokens, beam_idx = history[-1]["beam_next_tokens"], history[-1]["beam_idx"]
                logits, _ = forward(input_ids)
                history.pop(-1)
                history_locs.pop(-1)
                rejects[pos + 1] = []
                logits = logits - (999.0 + logits.min(-1, keepdim=True).values)
                flat = logits.view(1, -1)
                reject = (beam_idx * logits.shape[-1] + beam_next_tokens)[None]
                if len(rejects[pos]) > 0:
                    reject = torch.cat([rejects[pos], reject], -1)
                rejects[pos] = reject
                next_logits = flat.scatter(-1, reject, -999.0).view(beams, -1)
                rollbacks.append(pos)
        if not rolled:
            next_logits = torch.full_like(logits, -999.0).scatter(-1, cand_tokens, cand_scores)
        scores = torch.log_softmax(next_logits, dim=-1)
        all_scores.append(scores)
        vocab = scores.shape[-1]
        top_scores, top = torch.topk((scores + beam_scores[:, None]).view(1, -1), 2 * beams, dim=1)
        sources, tokens = top[0] // vocab, top[0] % vocab
        next_beam_scores, beam_next_tokens, beam_idx = torch.zeros(beams), torch.zeros(beams, dtype=torch.long), None
        beam_idx = torch.zeros(beams, dtype=torch.long)
        kept = 0
        for rank in range(2 * beams):
            if int(tokens[rank]) in eos:
                if rank < beams:
                    hyps.add(input_ids[sources[rank]].clone(), top_scores[0, rank].item())
            else:
                next_beam_scores[kept], beam_next_tokens[kept], beam_idx[kept] = (
                    top_scores[0, rank],
                    tokens[rank],
                    sources[rank],
                )
                kept += 1
            if kept == beams:
                break
        done = done or hyps.is_done(top_scores[0].max().item(), input_ids.shape[-1] + 1)
        beam_scores = next_beam_scores
        input_ids = torch.cat([input_ids[beam_idx], beam_next_tokens[:, None]], dim=-1)
        if done or input_ids.shape[-1] >= max_length:
            break
    if not done:
        for k in range(beams):
            hyps.add(input_ids[k], beam_scores[k].item())
    best = sorted(hyps.kept, key=lambda x: x[0])[-1][1]
    tokens = best[P:].tolist() + ([eos[0]] if best.shape[-1] < max_length else [])
    return OperaReference(tokens, all_scores, rollbacks)
