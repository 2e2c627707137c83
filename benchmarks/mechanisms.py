"""Mechanism checks (issue 15): does an LVLM hallucinate the way real ones do, a language prior over visual evidence?

Four measurements; each is a pure computation (tested on hand-made inputs) fed by a model pass:

1. **Text-only prior** (:func:`text_prior`): the chat prompt without the image, then a world caption opener
   ("A kitchen scene with"); each caption noun of ``catalog.NOUNS`` is scored with its article (" a cup",
   " an automobile") by teacher-forced log-probability, synonyms are summed per category, the 27 categories
   normalised, and the mass on the scene's own categories reported (:func:`category_distribution`,
   :func:`in_scene_share`).
2. **First mentions** (:func:`measure_descriptions`): greedy descriptions are scored with CHAIR, each object's
   first mention is mapped to the generated tokens, and the generated ids are teacher-forced with and without
   the image. At the step that emits the noun's first token: image-attention mass (mean over layers and heads),
   image effect log p_img - log p_txt of the noun tokens, and text-only p. Hallucinated minus grounded is taken
   within token-position bins (:func:`stratified_difference`) with a bootstrap CI over images.
3. **Probe** (:func:`fit_probes`, :func:`probe_readout`): one logistic regression per category on the mean of the
   projected image features the LM sees (its input embeddings at the image tokens), fit on prior-free images (where
   the scene does not predict the objects, so the probe reads objects, not scenes), read on shift.
4. **Decay** (:func:`attention_decay`, :func:`rate_by_sentence`): Spearman correlation of image-attention mass
   with the generated token's position, and the hallucination rate per sentence.

:func:`measure_mechanisms` runs all four and :func:`evaluate_checks` turns the report into pass/fail;
``scripts/measure_mechanisms.py`` is the command line.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import stats
from tqdm.auto import tqdm

from benchmarks import chair
from benchmarks.compare import Interval, bootstrap_by_image
from halluc.defaults import DESCRIBE_PROMPT
from halluc.errors import ConfigError
from halluc.imagesets import ImageSet, load_image
from halluc.models import LVLM, PreparedBatch
from halluc.objects import split_sentences
from halluc.world import scene_types, world_categories
from halluc.world.captions import OPENERS
from halluc.world.catalog import NOUNS, SCENES

__all__ = [
    "ANSWER_SEPARATOR",
    "THRESHOLDS",
    "Description",
    "Interval",
    "MechanismRun",
    "MentionRecord",
    "PriorReport",
    "TokenTrace",
    "attention_decay",
    "bootstrap_by_image",
    "category_distribution",
    "compare_mentions",
    "describe_images",
    "evaluate_checks",
    "first_mentions",
    "fit_probes",
    "image_attention_by_layer",
    "image_attention_mass",
    "image_features",
    "in_scene_share",
    "later_sentences_hallucinate_more",
    "measure_descriptions",
    "measure_mechanisms",
    "opener_prefixes",
    "probe_readout",
    "probe_summary",
    "rate_by_sentence",
    "stratified_difference",
    "teacher_force",
    "text_prior",
    "token_spans",
    "tokens_overlapping",
]

# What separates the chat prompt from the answer: LLaVA-style "ASSISTANT:" + " " + answer (the toy trainer's too).
ANSWER_SEPARATOR = " "
# Pass criteria of the mechanism checks.
THRESHOLDS = {"in_scene_share": 0.8, "probe_absent_share": 0.5}


# ----- statistics on hand-made inputs -------------------------------------------------------------------------
def stratified_difference(values: Sequence[float], hallucinated: Sequence[bool], strata: Sequence[int]) -> float:
    """Mean(hallucinated) - mean(grounded) within each stratum, averaged with the hallucinated counts as weights.

    Only strata holding both kinds count, so the two groups are compared at the same position; NaN when none does.
    """
    values_, flags, groups = np.asarray(values, float), np.asarray(hallucinated, bool), np.asarray(strata)
    total, weight = 0.0, 0
    for stratum in np.unique(groups):
        here = groups == stratum
        h, g = values_[here & flags], values_[here & ~flags]
        if len(h) and len(g):
            total += len(h) * (h.mean() - g.mean())
            weight += len(h)
    return total / weight if weight else math.nan


def category_distribution(
    noun_logprobs: Mapping[str, float], nouns: Mapping[str, Sequence[str]] = NOUNS
) -> dict[str, float]:
    """Next-object distribution over categories: synonyms' probabilities summed per category, then normalised."""
    per_category = {
        c: float(torch.tensor([noun_logprobs[n] for n in words]).logsumexp(0)) for c, words in nouns.items()
    }
    normaliser = float(torch.tensor(list(per_category.values())).logsumexp(0))
    return {c: math.exp(v - normaliser) for c, v in per_category.items()}


def in_scene_share(distribution: Mapping[str, float], categories: Sequence[str]) -> float:
    """Probability mass a (normalised) category distribution puts on ``categories``."""
    return float(sum(distribution.get(c, 0.0) for c in categories))


def image_attention_by_layer(attentions: Sequence[torch.Tensor], image_keys: torch.Tensor) -> torch.Tensor:
    """``[layers, batch, queries]`` attention probability on the image keys, mean over heads.

    ``attentions``: one ``[batch, heads, queries, keys]`` tensor per layer (``output_attentions=True``);
    ``image_keys``: ``[batch, keys]`` bool, True at image-token positions.
    """
    keys = image_keys.to(attentions[0].dtype)[:, None, None, :]  # [batch, 1, 1, keys]
    return torch.stack([(layer * keys).sum(dim=-1).mean(dim=1) for layer in attentions])


def image_attention_mass(attentions: Sequence[torch.Tensor], image_keys: torch.Tensor) -> torch.Tensor:
    """``[batch, queries]`` attention probability on the image keys, mean over layers and heads (the check's)."""
    return image_attention_by_layer(attentions, image_keys).mean(dim=0)


def rate_by_sentence(details: list[dict]) -> dict[str, float]:
    """Share of hallucinated mentions per sentence position (1, 2, 3, 4+) over all captions."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for caption in details:
        spans = split_sentences(caption["caption"])
        for mention in caption["mentions"]:
            index = next((i for i, (s, e) in enumerate(spans) if s <= mention["start"] < e), len(spans) - 1)
            key = str(index + 1) if index < 3 else "4+"
            counts[key][0] += bool(mention["hallucinated"])
            counts[key][1] += 1
    return {k: h / n for k, (h, n) in sorted(counts.items()) if n}


def later_sentences_hallucinate_more(rates: Mapping[str, float]) -> bool:
    """True when some later sentence has a higher hallucination rate than the first (the v10 behaviour check)."""
    return max((v for k, v in rates.items() if k != "1"), default=0.0) > rates.get("1", 0.0)


def _sentence_of(spans: Sequence[tuple[int, int]], start: int) -> int:
    """0-based index of the sentence holding character ``start`` (the last one when none does)."""
    return next((i for i, (s, e) in enumerate(spans) if s <= start < e), max(len(spans) - 1, 0))


# ----- text and tokens ----------------------------------------------------------------------------------------
def token_spans(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decoded, stripped text of ``ids`` and each token's [start, end) character span in it.

    Spans come from decoding growing prefixes, so they agree with the decoded text whatever the tokenizer; a
    token that adds no text (or only the stripped leading space) gets an empty or clipped span.
    """
    decode = lambda part: tokenizer.decode(list(part), skip_special_tokens=True)  # noqa: E731
    full = decode(ids)
    lead = len(full) - len(full.lstrip())
    text = full.strip()
    spans, previous = [], 0
    for k in range(len(ids)):
        end = len(decode(ids[: k + 1]))
        spans.append((min(max(previous - lead, 0), len(text)), min(max(end - lead, 0), len(text))))
        previous = end
    return text, spans


def tokens_overlapping(spans: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens whose span overlaps the characters [start, end), in order."""
    return [k for k, (s, e) in enumerate(spans) if s < end and e > start]


def opener_prefixes(scene: str, *, all_names: bool = True) -> list[str]:
    """The world's caption openers for ``scene`` cut before the object list ("A kitchen scene with", ...)."""
    names = SCENES[scene].names if all_names else SCENES[scene].names[:1]
    prefixes = []
    for name in names:
        a_scene = f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
        for template in OPENERS:
            head = template.split("{objs}")[0].rstrip()
            prefixes.append(head.format(scene=name, a_scene=a_scene, A_scene=a_scene[0].upper() + a_scene[1:]))
    return list(dict.fromkeys(prefixes))


def _noun_phrase(noun: str) -> str:
    """The noun with the article the world's captions give it (" a cup", " an automobile")."""
    return f" {'an' if noun[0] in 'aeiou' else 'a'} {noun}"


# ----- model passes -------------------------------------------------------------------------------------------
@contextmanager
def _eager_attention(lvlm: LVLM) -> Iterator[None]:
    """Run the language model with eager attention (the one that returns attention probabilities), then restore."""
    previous = lvlm.attn_implementation
    if previous != "eager":
        lvlm.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous != "eager":
            lvlm.set_attn_implementation(previous)


def _stop_ids(lvlm: LVLM) -> set[int]:
    """Token ids that end a generated answer: EOS and padding, and any other special token (an image placeholder
    in an answer could not be teacher-forced; ``skip_special_tokens`` hides them from the text anyway)."""
    eos = lvlm.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) | set(lvlm.processor.tokenizer.all_special_ids)
    ids.add(lvlm.image_token_id)
    return {int(i) for i in ids if i is not None}


def _continuation_inputs(
    lvlm: LVLM, batch: PreparedBatch, answers: Sequence[Sequence[int]]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs for the (left-padded) prompts followed by ``answers`` (right-padded), and the answer ids."""
    prompt_ids = batch.inputs["input_ids"]
    rows, width = prompt_ids.shape[0], max(1, max(len(a) for a in answers))
    answer_ids = torch.full((rows, width), lvlm.pad_token_id, dtype=prompt_ids.dtype, device=prompt_ids.device)
    answer_mask = torch.zeros_like(answer_ids)
    for row, answer in enumerate(answers):
        answer_ids[row, : len(answer)] = torch.tensor(list(answer), dtype=prompt_ids.dtype)
        answer_mask[row, : len(answer)] = 1
    inputs: dict[str, torch.Tensor] = {}
    for name, value in batch.inputs.items():
        if name == "input_ids":
            inputs[name] = torch.cat([value, answer_ids], dim=1)
        elif name == "attention_mask":
            inputs[name] = torch.cat([value, answer_mask.to(value.dtype)], dim=1)
        elif value.dim() == 2 and value.shape == prompt_ids.shape:  # other per-token tensors (token types)
            inputs[name] = torch.cat([value, torch.zeros_like(answer_ids).to(value.dtype)], dim=1)
        else:
            inputs[name] = value
    if lvlm.family.grid != "thw":  # M-RoPE families build their own 3-D positions from the mask
        inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    return inputs, answer_ids


def _answer_logprobs(logits: torch.Tensor, answer_ids: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """``[batch, answer]`` log-probability of each answer token given everything before it."""
    width = answer_ids.shape[1]
    steps = logits[:, prompt_length - 1 : prompt_length - 1 + width].float().log_softmax(dim=-1)
    return steps.gather(-1, answer_ids[..., None]).squeeze(-1)


def _prefix_logprobs(lvlm: LVLM, prompt: str, prefix: str, continuations: Sequence[str]) -> list[float]:
    """Log-probability of each continuation after the text-only chat ``prompt`` and the answer text ``prefix``."""
    tokenizer = lvlm.processor.tokenizer
    head = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    answers, lengths = [], []
    for continuation in continuations:
        ids = tokenizer(prefix + continuation, add_special_tokens=False)["input_ids"]
        if ids[: len(head)] != head:
            raise ConfigError(f"the tokenizer merges {prefix!r} with {continuation!r}; cannot score it on its own")
        answers.append(ids)
        lengths.append(len(ids) - len(head))
    batch = lvlm.prepare([None] * len(answers), [prompt] * len(answers))
    inputs, answer_ids = _continuation_inputs(lvlm, batch, answers)
    with torch.no_grad():
        logits = lvlm.model(**inputs).logits
    logprobs = _answer_logprobs(logits, answer_ids, batch.prompt_length)
    return [float(logprobs[row, len(head) : len(head) + n].sum()) for row, n in enumerate(lengths)]


@dataclass(frozen=True)
class PriorReport:
    """Check 1: in-scene share of the text-only next-object distribution, per scene and overall."""

    share: float  # mean over scenes of the per-scene mean over openers
    by_scene: dict[str, float]
    by_prefix: dict[str, float]  # "scene | prefix" -> share
    distributions: dict[str, dict[str, float]]  # scene -> category -> mean probability over its openers

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report."""
        return asdict(self)


def text_prior(lvlm: LVLM, *, prompt: str = DESCRIBE_PROMPT, all_names: bool = True) -> PriorReport:
    """Measure the language prior: next-object distribution after each scene opener, with no image in the prompt."""
    nouns = sorted({n for words in NOUNS.values() for n in words})
    scenes = scene_types()
    work = [(scene, prefix) for scene in scenes for prefix in opener_prefixes(scene, all_names=all_names)]
    by_prefix: dict[str, float] = {}
    per_scene: dict[str, list[dict[str, float]]] = defaultdict(list)
    for scene, prefix in tqdm(work, desc="text prior", unit="opener", disable=None):
        scores = _prefix_logprobs(lvlm, prompt, ANSWER_SEPARATOR + prefix, [_noun_phrase(n) for n in nouns])
        distribution = category_distribution(dict(zip(nouns, scores, strict=True)))
        by_prefix[f"{scene} | {prefix}"] = in_scene_share(distribution, scenes[scene])
        per_scene[scene].append(distribution)
    distributions = {
        scene: dict(sorted(((c, float(np.mean([d[c] for d in ds]))) for c in ds[0]), key=lambda kv: -kv[1]))
        for scene, ds in per_scene.items()
    }
    by_scene = {scene: in_scene_share(distributions[scene], scenes[scene]) for scene in scenes}
    return PriorReport(float(np.mean(list(by_scene.values()))), by_scene, by_prefix, distributions)


@dataclass(frozen=True)
class Description:
    """A greedy description: the generated ids up to the first special token, the text CHAIR scores, token spans."""

    image_id: int | str
    ids: list[int]
    text: str
    spans: list[tuple[int, int]]


def describe_images(
    lvlm: LVLM,
    images: Sequence[Image.Image],
    image_ids: Sequence[int | str],
    *,
    prompt: str = DESCRIBE_PROMPT,
    max_new_tokens: int = 128,
    batch_size: int = 16,
) -> list[Description]:
    """Greedy descriptions with the adapter's batched generation (as the CHAIR job makes them), kept as token ids."""
    stop = _stop_ids(lvlm)
    out: list[Description] = []
    for start in tqdm(range(0, len(images), batch_size), desc="describing", unit="batch", disable=None):
        chunk = list(images[start : start + batch_size])
        new = lvlm.generate_ids(lvlm.prepare(chunk, [prompt] * len(chunk)), max_new_tokens=max_new_tokens)
        for offset, row in enumerate(new.tolist()):
            ids = row[: next((k for k, t in enumerate(row) if t in stop), len(row))]
            text, spans = token_spans(lvlm.processor.tokenizer, ids)
            out.append(Description(image_ids[start + offset], ids, text, spans))
    return out


@dataclass(frozen=True)
class TokenTrace:
    """Per generated token of one description: log p with and without the image, image-attention mass."""

    logp_image: list[float]
    logp_text: list[float]
    attention_by_layer: list[list[float]]  # [token][layer] image-attention mass of the step that emits the token

    @property
    def attention(self) -> list[float]:
        """Per token, the image-attention mass of its emitting step (query = previous position), mean over layers."""
        return [float(np.mean(layers)) for layers in self.attention_by_layer]


def teacher_force(
    lvlm: LVLM,
    images: Sequence[Image.Image],
    answers: Sequence[Sequence[int]],
    *,
    prompt: str = DESCRIBE_PROMPT,
    batch_size: int = 16,
) -> list[TokenTrace]:
    """Teacher-force each answer after the prompt with its image and with no image (the same text prefix).

    The image pass uses eager attention with ``output_attentions`` to read, for every answer token, the attention
    its emitting step puts on the image tokens; the text pass only needs the log-probabilities.
    """
    traces: list[TokenTrace] = []
    with _eager_attention(lvlm), torch.no_grad():
        for start in tqdm(range(0, len(answers), batch_size), desc="teacher forcing", unit="batch", disable=None):
            chunk, pictures = answers[start : start + batch_size], list(images[start : start + batch_size])
            batch = lvlm.prepare(pictures, [prompt] * len(chunk))
            inputs, answer_ids = _continuation_inputs(lvlm, batch, chunk)
            out = lvlm.model(**inputs, output_attentions=True)
            logp_image = _answer_logprobs(out.logits, answer_ids, batch.prompt_length)
            keys = torch.zeros(inputs["input_ids"].shape, dtype=torch.bool, device=answer_ids.device)
            for row, positions in enumerate(batch.image_positions):
                keys[row, positions] = True
            emitting = slice(batch.prompt_length - 1, batch.prompt_length - 1 + answer_ids.shape[1])
            by_layer = image_attention_by_layer(out.attentions, keys)[:, :, emitting]  # [layers, rows, answer]
            text = lvlm.text_only(batch)
            text_inputs, _ = _continuation_inputs(lvlm, text, chunk)
            logp_text = _answer_logprobs(lvlm.model(**text_inputs).logits, answer_ids, text.prompt_length)
            for row, answer in enumerate(chunk):
                n = len(answer)
                layers = by_layer[:, row, :n].T.tolist()  # [token][layer]
                traces.append(TokenTrace(logp_image[row, :n].tolist(), logp_text[row, :n].tolist(), layers))
    return traces


def image_features(
    lvlm: LVLM, images: Sequence[Image.Image], *, prompt: str = DESCRIBE_PROMPT, batch_size: int = 32
) -> np.ndarray:
    """``[images, hidden]``: the LM's input embeddings at the image tokens (the projected features), mean-pooled."""
    rows = []
    with torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), desc="image features", unit="batch", disable=None):
            chunk = list(images[start : start + batch_size])
            batch = lvlm.prepare(chunk, [prompt] * len(chunk))
            embeds = lvlm.model(**batch.inputs, output_hidden_states=True, logits_to_keep=1).hidden_states[0]
            rows += [
                embeds[i, positions].float().mean(dim=0).cpu().numpy()
                for i, positions in enumerate(batch.image_positions)
            ]
    return np.stack(rows)


# ----- check 2: first mentions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MentionRecord:
    """One object's first mention in a description, measured at the step that emits its noun's first token."""

    image_id: int | str
    category: str
    word: str
    hallucinated: bool
    position: int  # index of the noun's first token among the generated tokens
    sentence: int  # 0-based sentence index
    n_tokens: int
    attention_by_layer: tuple[float, ...]  # image-attention mass at the emitting step, per layer (mean over heads)
    logp_image: float  # log p(noun tokens | image, prefix)
    logp_text: float  # log p(noun tokens | prefix), image removed

    @property
    def attention(self) -> float:
        """Image-attention mass at the emitting step, mean over layers and heads (the check's measure)."""
        return float(np.mean(self.attention_by_layer))

    @property
    def image_effect(self) -> float:
        """log p_img - log p_txt of the noun tokens."""
        return self.logp_image - self.logp_text

    @property
    def p_text(self) -> float:
        """Text-only probability of the noun tokens."""
        return math.exp(self.logp_text)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record with the derived measures."""
        return {**asdict(self), "attention": self.attention, "image_effect": self.image_effect, "p_text": self.p_text}


def first_mentions(score: chair.CaptionScore) -> list[chair.MentionVerdict]:
    """Each category's first mention in a scored caption, in caption order."""
    seen: set[str] = set()
    firsts = []
    for verdict in score.verdicts:
        if verdict.mention.category not in seen:
            seen.add(verdict.mention.category)
            firsts.append(verdict)
    return firsts


def _mention_records(description: Description, score: chair.CaptionScore, trace: TokenTrace) -> list[MentionRecord]:
    """Measure every first mention of one description on its token trace."""
    sentences = split_sentences(description.text)
    records = []
    for verdict in first_mentions(score):
        mention = verdict.mention
        tokens = tokens_overlapping(description.spans, mention.start, mention.end)
        if not tokens:
            continue
        records.append(
            MentionRecord(
                image_id=description.image_id,
                category=mention.category,
                word=mention.word,
                hallucinated=verdict.hallucinated,
                position=tokens[0],
                sentence=_sentence_of(sentences, mention.start),
                n_tokens=len(tokens),
                attention_by_layer=tuple(trace.attention_by_layer[tokens[0]]),
                logp_image=float(sum(trace.logp_image[k] for k in tokens)),
                logp_text=float(sum(trace.logp_text[k] for k in tokens)),
            )
        )
    return records


def compare_mentions(
    records: Sequence[MentionRecord],
    *,
    bin_width: int = 8,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Hallucinated minus grounded first mentions for attention, image effect and text-only p, with image CIs.

    ``matched``: within token-position bins of ``bin_width`` (the check); ``by_sentence``: within sentence index;
    ``unmatched``: plain difference of means, for reference. ``attention_by_layer``: the matched attention
    difference of each layer (a diagnostic of where the check's layer mean comes from).
    """
    images = list(dict.fromkeys(r.image_id for r in records))  # resampling units: images with a first mention
    by_image: dict[int | str, list[MentionRecord]] = defaultdict(list)
    for r in records:
        by_image[r.image_id].append(r)
    strata: dict[str, Callable[[MentionRecord], int]] = {
        "matched": lambda r: r.position // bin_width,
        "by_sentence": lambda r: min(r.sentence, 3),
        "unmatched": lambda r: 0,
    }
    flags = [np.array([r.hallucinated for r in by_image[i]], bool) for i in images]
    groups = {name: [np.array([f(r) for r in by_image[i]], int) for i in images] for name, f in strata.items()}

    def difference(read: Callable[[MentionRecord], float], name: str) -> dict[str, Any]:
        """Hallucinated minus grounded of ``read`` within the strata ``name``, with its bootstrap CI over images."""
        values = [np.array([read(r) for r in by_image[i]], float) for i in images]

        def statistic(idx: np.ndarray) -> float:
            return stratified_difference(
                np.concatenate([values[i] for i in idx]),
                np.concatenate([flags[i] for i in idx]),
                np.concatenate([groups[name][i] for i in idx]),
            )

        return bootstrap_by_image(len(images), statistic, n_resamples=n_resamples, seed=seed).to_dict()

    result: dict[str, Any] = {}
    for measure in ("attention", "image_effect", "p_text"):
        result[measure] = {
            "hallucinated_mean": _mean([getattr(r, measure) for r in records if r.hallucinated]),
            "grounded_mean": _mean([getattr(r, measure) for r in records if not r.hallucinated]),
        }
        for name in strata:
            result[measure][name] = difference(lambda r, m=measure: getattr(r, m), name)
    layers = len(records[0].attention_by_layer) if records else 0  # the model's depth
    result["attention_by_layer"] = [
        difference(lambda r, k=k: r.attention_by_layer[k], "matched") for k in range(layers)
    ]
    result["counts"] = {
        "images": len(images),
        "hallucinated": sum(r.hallucinated for r in records),
        "grounded": sum(not r.hallucinated for r in records),
    }
    return result


def _mean(values: Sequence[float]) -> float | None:
    """Mean, or None for no values."""
    return float(np.mean(values)) if len(values) else None


# ----- check 3: probe ------------------------------------------------------------------------------------------
def fit_probes(
    features: np.ndarray, present: Sequence[frozenset[str]], categories: Sequence[str], *, c: float = 1.0
) -> dict[str, Any]:
    """One standardised logistic regression per category (present vs absent); a constant when one class is seen."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probes: dict[str, Any] = {}
    for category in categories:
        labels = np.array([category in objects for objects in present], dtype=int)
        if labels.min() == labels.max():
            probes[category] = float(labels[0])
        else:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
            probes[category] = model.fit(features, labels)
    return probes


def probe_readout(probes: Mapping[str, Any], features: np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """``[images, categories]`` probability of presence read by each category's probe."""
    columns = []
    for category in categories:
        probe = probes[category]
        if isinstance(probe, float):
            columns.append(np.full(len(features), probe))
        else:
            columns.append(probe.predict_proba(features)[:, 1])
    return np.stack(columns, axis=1)


def probe_summary(
    probabilities: np.ndarray,
    categories: Sequence[str],
    present: Sequence[frozenset[str]],
    hallucinated: Sequence[set[str]],
    scene_objects: Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Mean probe probability of hallucinated, truly absent and present objects; share of hallucinated read absent.

    With ``scene_objects`` (each image's scene categories) the means are also split into in-scene and foreign
    objects, which shows whether the probe reads the object or the scene (a probe fit on prior-heavy images can
    learn "kitchen background -> fork").
    """
    from sklearn.metrics import roc_auc_score

    groups: dict[str, list[float]] = {"hallucinated": [], "absent": [], "present": []}
    split: dict[str, dict[str, list[float]]] = {k: {"in_scene": [], "foreign": []} for k in groups}
    for row, (objects, made_up) in enumerate(zip(present, hallucinated, strict=True)):
        for column, category in enumerate(categories):
            p = float(probabilities[row, column])
            group = "present" if category in objects else "hallucinated" if category in made_up else "absent"
            groups[group].append(p)
            if scene_objects is not None:
                split[group]["in_scene" if category in scene_objects[row] else "foreign"].append(p)
    labels = np.array([[c in objects for c in categories] for objects in present], dtype=int).ravel()
    auc = float(roc_auc_score(labels, probabilities.ravel())) if 0 < labels.sum() < len(labels) else None
    share = float(np.mean(np.array(groups["hallucinated"]) < 0.5)) if groups["hallucinated"] else None
    summary: dict[str, Any] = {
        "hallucinated_read_absent_share": share,
        "mean_p": {k: _mean(v) for k, v in groups.items()},
        "counts": {k: len(v) for k, v in groups.items()},
        "auc_present_vs_absent": auc,
    }
    if scene_objects is not None:
        summary["mean_p_by_scene"] = {k: {w: _mean(v) for w, v in parts.items()} for k, parts in split.items()}
        summary["counts_by_scene"] = {k: {w: len(v) for w, v in parts.items()} for k, parts in split.items()}
    return summary


# ----- check 4: decay ------------------------------------------------------------------------------------------
def attention_decay(
    traces: Sequence[TokenTrace], *, n_resamples: int = 2000, seed: int = 0, bin_width: int = 16
) -> dict[str, Any]:
    """Spearman correlation of image-attention mass with generated-token position (CI over images), and bin means."""
    masses = [np.asarray(t.attention, float) for t in traces]  # the layer mean, derived once per trace
    positions = [np.arange(len(mass)) for mass in masses]

    def statistic(idx: np.ndarray) -> float:
        x = np.concatenate([positions[i] for i in idx] or [np.empty(0)])
        y = np.concatenate([masses[i] for i in idx] or [np.empty(0)])
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return math.nan
        return float(stats.spearmanr(x, y).statistic)

    bins: dict[int, list[float]] = defaultdict(list)
    for x, y in zip(positions, masses, strict=True):
        for position, mass in zip(x, y, strict=True):
            bins[int(position) // bin_width].append(float(mass))
    return {
        "spearman": bootstrap_by_image(len(traces), statistic, n_resamples=n_resamples, seed=seed).to_dict(),
        "mean_by_position": {f"{b * bin_width}-{(b + 1) * bin_width - 1}": _mean(v) for b, v in sorted(bins.items())},
    }


# ----- the whole measurement -----------------------------------------------------------------------------------
@dataclass
class MechanismRun:
    """Everything measured on one model, plus the per-mention records and descriptions for audit."""

    report: dict[str, Any]
    mentions: list[MentionRecord] = field(default_factory=list)
    descriptions: list[dict[str, Any]] = field(default_factory=list)


def _load(images: ImageSet, limit: int) -> tuple[list[int | str], list[Image.Image]]:
    """The first ``limit`` ids of an image set (its fixed order) and their pictures."""
    ids = list(images.image_ids[:limit])
    return ids, [load_image(str(images.path(i))) for i in ids]


def measure_descriptions(
    lvlm: LVLM,
    images: Sequence[Image.Image],
    image_ids: Sequence[int | str],
    gt: chair.GroundTruth,
    *,
    prompt: str = DESCRIBE_PROMPT,
    max_new_tokens: int = 128,
    batch_size: int = 16,
) -> tuple[list[Description], list[chair.CaptionScore], list[TokenTrace], list[MentionRecord]]:
    """Describe, score with CHAIR, teacher-force and measure every first mention (checks 2 and 4)."""
    descriptions = describe_images(
        lvlm, images, image_ids, prompt=prompt, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    scores = [chair.score_caption(d.text, gt[d.image_id]) for d in descriptions]
    traces = teacher_force(lvlm, images, [d.ids for d in descriptions], prompt=prompt, batch_size=batch_size)
    records = [r for d, s, t in zip(descriptions, scores, traces, strict=True) for r in _mention_records(d, s, t)]
    return descriptions, scores, traces, records


def _scene_objects(images: ImageSet, ids: Sequence[int | str]) -> list[list[str]] | None:
    """Each image's scene categories, from the world's ``scene`` image field (None for other image sets)."""
    if images.instances is None:
        return None
    scene_of = {i: info.get("scene") for i, info in chair.load_coco(images.instances).imgs.items()}
    scenes = scene_types()
    if any(scene_of.get(i) not in scenes for i in ids):
        return None
    return [scenes[scene_of[i]] for i in ids]


def measure_mechanisms(
    lvlm: LVLM,
    shift: ImageSet,
    probe_sets: Mapping[str, ImageSet],
    *,
    n_images: int = 100,
    n_probe: int = 200,
    prompt: str = DESCRIBE_PROMPT,
    max_new_tokens: int = 128,
    batch_size: int = 16,
    bin_width: int = 8,
    n_resamples: int = 2000,
    seed: int = 0,
) -> MechanismRun:
    """Run the four mechanism checks: prior (no images), mentions and decay on the first ``n_images`` of ``shift``,
    and a probe per set of ``probe_sets`` (name -> image set, e.g. val) fit on its first ``n_probe`` images and read
    on the same shift images; the first probe set is the one the check uses."""
    if not probe_sets:
        raise ConfigError("measure_mechanisms needs at least one probe training set (e.g. {'val': toy:val})")
    torch.manual_seed(seed)
    clock = [time.perf_counter()]
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        seconds[name] = round(clock[-1] - clock[-2], 1)

    categories = sorted(str(c["name"]) for c in world_categories())
    prior = text_prior(lvlm, prompt=prompt)
    lap("prior")
    shift_ids, shift_images = _load(shift, n_images)
    gt = chair.load_ground_truth(shift.instances, shift.captions)
    descriptions, scores, traces, records = measure_descriptions(
        lvlm, shift_images, shift_ids, gt, prompt=prompt, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    details = [{"image_id": d.image_id, **s.to_dict()} for d, s in zip(descriptions, scores, strict=True)]
    lap("describe_and_teacher_force")
    shift_present = chair.load_ground_truth(instances=shift.instances)
    shift_features = image_features(lvlm, shift_images, prompt=prompt)
    made_up = [{r.category for r in records if r.image_id == i and r.hallucinated} for i in shift_ids]
    probes: dict[str, dict[str, Any]] = {}
    for name, training in probe_sets.items():
        train_ids, train_images = _load(training, n_probe)
        train_present = chair.load_ground_truth(instances=training.instances)
        fitted = fit_probes(
            image_features(lvlm, train_images, prompt=prompt), [train_present[i] for i in train_ids], categories
        )
        probabilities = probe_readout(fitted, shift_features, categories)
        probes[name] = {
            "training_images": len(train_ids),
            "first_training_id": train_ids[0] if train_ids else None,
            **probe_summary(
                probabilities,
                categories,
                [shift_present[i] for i in shift_ids],
                made_up,
                _scene_objects(shift, shift_ids),
            ),
        }
    lap("probes")
    mentions = compare_mentions(records, bin_width=bin_width, n_resamples=n_resamples, seed=seed)
    decay = attention_decay(traces, n_resamples=n_resamples, seed=seed)
    lap("bootstrap")
    report = {
        "model": lvlm.name_or_path,
        "settings": {
            "prompt": prompt,
            "shift_images": len(shift_ids),
            "first_shift_id": shift_ids[0] if shift_ids else None,
            "probe_training_sets": {name: images.name for name, images in probe_sets.items()},
            "probe_images": n_probe,
            "max_new_tokens": max_new_tokens,
            "bin_width": bin_width,
            "n_resamples": n_resamples,
            "seed": seed,
        },
        "prior": prior.to_dict(),
        "mentions": mentions,
        "probe": {"check_uses": next(iter(probe_sets)), **probes},
        "decay": decay,
        "hallucination_rate_by_sentence": rate_by_sentence(details),
        "chair": chair.chair_metrics(scores) if scores else None,
        "seconds": seconds,
    }
    report["checks"] = evaluate_checks(report)
    return MechanismRun(report, records, details)


def evaluate_checks(report: Mapping[str, Any]) -> dict[str, bool]:
    """Pass/fail of each mechanism check from a :func:`measure_mechanisms` report (missing numbers fail)."""

    def bound(measure: str, side: str) -> float:
        value = report["mentions"][measure]["matched"][side]
        return math.nan if value is None else value

    share = report["probe"][report["probe"]["check_uses"]]["hallucinated_read_absent_share"]
    decay_high = report["decay"]["spearman"]["high"]
    return {
        "prior: in-scene share >= 0.8": report["prior"]["share"] >= THRESHOLDS["in_scene_share"],
        "attention: hallucinated - grounded CI < 0": bound("attention", "high") < 0,
        "image effect: hallucinated - grounded CI < 0": bound("image_effect", "high") < 0,
        "text-only p: hallucinated - grounded CI > 0": bound("p_text", "low") > 0,
        "probe: most hallucinated read absent": share is not None and share > THRESHOLDS["probe_absent_share"],
        "decay: Spearman(mass, position) CI < 0": decay_high is not None and decay_high < 0,
        "later sentences hallucinate more": later_sentences_hallucinate_more(report["hallucination_rate_by_sentence"]),
    }
