"""CrossCheck: rank (model, intervention) systems by object hallucination without references ("CrossCheckGPT").

Every system describes every image once greedily (its *target* output) and N times by sampling (its *evidence*).
Each target sentence is checked against every system's evidence, its own included (scoring in
:mod:`benchmarks.consistency`):

* explicit: an ``InconsistencyMeasure`` against one evidence system's N passages on the same image (default: the
  share of the sentence's objects a passage does not mention, averaged over passages);
* implicit: the evidence system, as an LVLM with its intervention, answers "Is there a/an {object} in the image?"
  per object of the sentence; P(no) comes from its next-token scores; the sentence gets the mean over objects.

Evidence systems are weighted by softmax(-self_inconsistency / T); a sentence's score is the weighted mean over
evidence systems; a system's score is the mean over its sentences that mention an object. Lower is better.
Where the images have annotations, scores are correlated with annotation CHAIR_i (Spearman, Pearson).

Run directory (``halluc crosscheck --out OUT``); every generation goes through the runner, so ``--resume`` works::

    OUT/manifest.json, metrics.json     job "crosscheck"; metrics: the correlations with CHAIR_i
    OUT/crosscheck.json                 the result, below
    OUT/systems/<NN-name>/target/       greedy descriptions (a CHAIR run when the images have annotations)
    OUT/systems/<NN-name>/evidence/     N sampled descriptions per image (sample ids "<image_id>#<k>") and
                                        judgements.json {"<image_id>|<object>": P(no) by this system}

``crosscheck.json`` (the dashboard reads ``systems``, ``sentences``, ``correlations``, ``lower_is_better``)::

    {"format": "halluc.crosscheck/1", "lower_is_better": true, "mode": "explicit",   # "score" is explicit
     "measure": "object-mention", "settings": {...},
     "systems": [{"system": "vhr:alpha=2", "score": .21, "explicit": .21, "implicit": .30, "rank_explicit": 1,
                  "rank_implicit": 2, "CHAIR_i": .12 | null, "CHAIR_s": .4 | null, "CHAIR_i_distinct": .1 | null,
                  "degenerate_share": 0 | null, "n_sentences": 140,
                  "model": "path" | null, "intervention": {...} | null,
                  "target_run": "systems/01-vhr_alpha=2/target", "evidence_run": "systems/01-vhr_alpha=2/evidence"}],
     "unscored": [system, ...],
     "explicit": {"self_inconsistency": {system: x}, "weights": {system: w}, "ranking": [best, ...],
                  "correlation": {"n_systems", "spearman", "spearman_p", "pearson", "pearson_p"} | null},
     "implicit": {... the same ...},
     "correlations": {"spearman explicit (CHAIR_i)": .9, "pearson implicit (CHAIR_i)": .8, ...},  # numbers only
     "sentences": [{"system", "image_id", "index", "sentence", "score" (= explicit), "explicit", "implicit",
                    "explicit_by_evidence": {system: x | null}, "implicit_by_evidence": {system: x | null},
                    "objects": [{"object", "support", "p_no", "status": "supported" | "unsupported",
                                 "annotation": "present" | "hallucinated" | null}]}]}

``support`` is the weighted share of evidence passages mentioning the object and ``status`` is "supported" when
it is at least 0.5; ``p_no`` is the weighted P(no); ``annotation`` is the ground truth when there is one.
Sentences that mention no object have no score and are left out of ``sentences``; a system none of whose
sentences mentions an object has no score, is left out of ``systems`` and is listed in ``"unscored": [...]``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.consistency import (
    ImageId,
    InconsistencyMeasure,
    ObjectMentionMeasure,
    Ranking,
    Raw,
    Sentence,
    aggregate,
    explicit_raw,
    implicit_raw,
    judge_objects,
    mean,
    sentences_of,
    weighted_mean,
)
from benchmarks.detector_chair import correlations
from benchmarks.jobs import CHAIR_PROMPT, _execute, run_chair
from benchmarks.runner import GenerationSettings, Request
from halluc.errors import ConfigError, OutputLocationError
from halluc.imagesets import ImageSet, load_image
from halluc.objects import Mode, categories
from halluc.runs import RunStore, atomic_write_json, config_hash

__all__ = ["FILE", "CrossCheckSettings", "System", "parse_system", "run_crosscheck"]

FILE = "crosscheck.json"
KINDS = ("explicit", "implicit")


@dataclasses.dataclass(frozen=True)
class System:
    """A (model, intervention) pair under a display name; ``model`` None means the default model."""

    name: str
    model: str | None = None
    intervention: Any = None  # an interventions config (``apply``, ``to_dict``) or None for the baseline

    def describe(self) -> dict[str, Any]:
        """JSON identity of the system for manifests and crosscheck.json."""
        return {"model": self.model, "intervention": self.intervention.to_dict() if self.intervention else None}


def parse_system(spec: str) -> System:
    """Parse ``baseline``, an intervention spec such as ``vhr:alpha=2``, or either after ``<model>@``."""
    text = spec.strip()
    model, sep, body = text.rpartition("@")
    body = body.strip()
    if not body:
        raise ConfigError(f"system {spec!r} is empty; use 'baseline', an intervention spec, or '<model>@<either>'")
    intervention = None
    if body not in ("baseline", "none"):
        from interventions import parse_intervention

        intervention = parse_intervention(body)
    return System(text, (model.strip() or None) if sep else None, intervention)


@dataclasses.dataclass(frozen=True)
class CrossCheckSettings:
    """Sampling and scoring settings, recorded in the manifest."""

    n_samples: int = 4  # evidence passages per (system, image)
    sample_temperature: float = 0.7
    weight_temperature: float = 0.1  # T of softmax(-self_inconsistency / T)
    max_new_tokens: int = 128
    batch_size: int = 16
    prompt: str = CHAIR_PROMPT
    mode: Mode = "reference"
    seed: int = 0

    def __post_init__(self) -> None:
        """Reject values that cannot work, naming them."""
        for key in ("n_samples", "max_new_tokens", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("sample_temperature", "weight_temperature"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)}")


def _slug(name: str) -> str:
    """A file-safe form of a system name for its directory."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)[:60]


@dataclasses.dataclass
class _Outputs:
    """What one system produced: target texts, evidence passages, and CHAIR metrics / GT when annotated."""

    texts: dict[ImageId, str]
    passages: dict[ImageId, list[str]]
    chair: dict[str, Any] | None
    gt: dict[ImageId, set[str]] | None


def _generate_system(
    lvlm: Any, system: System, images: ImageSet, root: Path, settings: CrossCheckSettings, resume: bool, progress: bool
) -> _Outputs:
    """Target (greedy; a CHAIR run when annotated) and evidence (sampled) runs of one system, each resumable."""
    greedy = GenerationSettings(max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)
    common = {"intervention": system.intervention, "seed": settings.seed, "resume": resume, "progress": progress}
    config = {"images": images.describe(), "prompt": settings.prompt, "system": system.name}
    chair = gt = None
    if images.instances is not None or images.captions is not None:
        job = run_chair(
            lvlm, images, root / "target", settings=greedy, prompt=settings.prompt, mode=settings.mode, **common
        )
        target, chair = job.store, job.metrics
        details = json.loads((root / "target" / "chair_details.json").read_text(encoding="utf-8"))
        gt = {d["image_id"]: set(d["gt_objects"]) for d in details}
    else:
        requests = [Request(str(i), str(images.path(i)), settings.prompt, {"image_id": i}) for i in images.image_ids]
        target = _execute("crosscheck-target", lvlm, requests, root / "target", greedy, config, **common)[0]
        target.finish()
    sampled = dataclasses.replace(greedy, do_sample=True, temperature=settings.sample_temperature)
    requests = [
        Request(f"{i}#{k}", str(images.path(i)), settings.prompt, {"image_id": i, "sample": k})
        for i in images.image_ids
        for k in range(settings.n_samples)
    ]
    evidence = _execute("crosscheck-evidence", lvlm, requests, root / "evidence", sampled, config, **common)[0]
    evidence.finish()
    passages: dict[ImageId, list[str]] = {}
    for sample in evidence.samples():
        if "error" not in sample:
            passages.setdefault(sample["image_id"], []).append(sample["response"])
    texts = {s["image_id"]: s["response"] for s in target.samples() if "error" not in s}
    return _Outputs(texts, passages, chair, gt)


def _judgements(
    lvlm: Any, system: System, images: ImageSet, pairs: list[tuple[ImageId, str]], root: Path, batch_size: int
) -> dict[tuple[ImageId, str], float]:
    """P(no) of ``system`` for every (image, object) pair, cached in its evidence run's judgements.json."""
    file = root / "evidence" / "judgements.json"
    cached = json.loads(file.read_text(encoding="utf-8")) if file.exists() else {}
    todo = [(i, o) for i, o in pairs if f"{i}|{o}" not in cached]
    if todo:
        loaded = {i: load_image(str(images.path(i))) for i in dict.fromkeys(i for i, _ in todo)}
        images_todo, objects_todo = [loaded[i] for i, _ in todo], [o for _, o in todo]
        values = judge_objects(lvlm, images_todo, objects_todo, intervention=system.intervention, batch_size=batch_size)
        cached.update({f"{i}|{o}": p for (i, o), p in zip(todo, values, strict=True)})
        atomic_write_json(file, cached)
    return {(i, o): cached[f"{i}|{o}"] for i, o in pairs}


@dataclasses.dataclass(frozen=True)
class _Scored:
    """Everything the per-sentence table of crosscheck.json is built from."""

    outputs: Mapping[str, _Outputs]
    p_no: Mapping[str, Mapping[tuple[ImageId, str], float]]
    raws: Mapping[str, Raw]
    rankings: Mapping[str, Ranking]
    mode: Mode

    def object_row(self, system: str, sentence: Sentence, obj: str) -> dict[str, Any]:
        """Weighted evidence support, weighted P(no), status and ground truth of one object of a sentence."""
        image_id, gt = sentence.image_id, self.outputs[system].gt
        mentioned = {
            e: mean(obj in categories(p, mode=self.mode) for p in out.passages.get(image_id, ()))
            for e, out in self.outputs.items()
        }
        support = weighted_mean(mentioned, self.rankings["explicit"].weights)
        p_no = weighted_mean({e: t[(image_id, obj)] for e, t in self.p_no.items()}, self.rankings["implicit"].weights)
        truth = None if gt is None or image_id not in gt else obj in gt[image_id]
        return {
            "object": obj,
            "support": support,
            "p_no": p_no,
            "status": "supported" if support is not None and support >= 0.5 else "unsupported",
            "annotation": None if truth is None else ("present" if truth else "hallucinated"),
        }

    def sentence_rows(self, targets: Mapping[str, Sequence[Sentence]]) -> list[dict[str, Any]]:
        """The ``sentences`` table: every sentence with an explicit score, its scores and its objects."""
        rows = []
        for system, sentences in targets.items():
            for n, sentence in enumerate(sentences):
                score = self.rankings["explicit"].sentence_scores[system][n]
                if score is None:
                    continue
                by_evidence = {f"{k}_by_evidence": {e: c[n] for e, c in self.raws[k][system].items()} for k in KINDS}
                rows.append(
                    {
                        "system": system,
                        "image_id": sentence.image_id,
                        "index": sentence.index,
                        "sentence": sentence.text,
                        "score": score,
                        **{kind: self.rankings[kind].sentence_scores[system][n] for kind in KINDS},
                        **by_evidence,
                        "objects": [self.object_row(system, sentence, obj) for obj in sentence.objects],
                    }
                )
        return rows


def run_crosscheck(
    systems: Sequence[System],
    images: ImageSet,
    out: Path,
    load: Callable[[str | None], Any],
    *,
    settings: CrossCheckSettings | None = None,
    measure: InconsistencyMeasure | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample every system, score explicit and implicit CrossCheck, write ``crosscheck.json`` and return it.

    ``load(model)`` builds the LVLM of a system's ``model`` (None: the default model); each model loads once.
    """
    settings = settings or CrossCheckSettings()
    measure = measure or ObjectMentionMeasure(settings.mode)
    names = [s.name for s in systems]
    if not systems or len(set(names)) != len(names):
        raise ConfigError(f"give at least one system and each only once; got {names}")
    out = Path(out)
    if not resume and (out / "systems").exists():
        raise OutputLocationError(
            f"{str(out)!r} already holds a crosscheck run; pass --resume to continue it or choose another --out"
        )
    manifest = {
        "job": "crosscheck",
        "systems": [{"system": s.name, **s.describe()} for s in systems],
        "images": images.describe(),
        "settings": dataclasses.asdict(settings),
        "measure": measure.name,
    }
    manifest["config_hash"] = config_hash(manifest)
    store = RunStore.create(out, manifest, resume=resume)
    models: dict[str | None, Any] = {}
    dirs = {s.name: Path("systems") / f"{i:02d}-{_slug(s.name)}" for i, s in enumerate(systems, 1)}
    outputs: dict[str, _Outputs] = {}
    for s in systems:
        if s.model not in models:
            models[s.model] = load(s.model)
        outputs[s.name] = _generate_system(models[s.model], s, images, out / dirs[s.name], settings, resume, progress)
    targets = {
        name: [x for i, text in o.texts.items() for x in sentences_of(i, text, mode=settings.mode)]
        for name, o in outputs.items()
    }
    pairs = list(dict.fromkeys((x.image_id, obj) for sents in targets.values() for x in sents for obj in x.objects))
    p_no = {
        s.name: _judgements(models[s.model], s, images, pairs, out / dirs[s.name], settings.batch_size) for s in systems
    }
    raws = {
        "explicit": explicit_raw(targets, {name: o.passages for name, o in outputs.items()}, measure),
        "implicit": implicit_raw(targets, p_no),
    }
    rankings = {kind: aggregate(raws[kind], settings.weight_temperature) for kind in KINDS}
    chair_i = {name: o.chair["CHAIR_i"] for name, o in outputs.items() if o.chair is not None}
    blocks = {
        kind: {
            "self_inconsistency": r.self_inconsistency,
            "weights": r.weights,
            "ranking": r.ranking,
            "correlation": correlations(r.scores, chair_i) if chair_i else None,
        }
        for kind, r in rankings.items()
    }
    flat = {
        f"{stat} {kind} (CHAIR_i)": block["correlation"][stat]
        for kind, block in blocks.items()
        for stat in ("spearman", "pearson")
        if block["correlation"] is not None and block["correlation"][stat] is not None
    }
    rows = [
        {
            "system": s.name,
            "score": rankings["explicit"].scores[s.name],
            **{kind: rankings[kind].scores[s.name] for kind in KINDS},
            **{f"rank_{kind}": rankings[kind].ranking.index(s.name) + 1 for kind in KINDS},
            "CHAIR_i": chair_i.get(s.name),
            **{k: (outputs[s.name].chair or {}).get(k) for k in ("CHAIR_s", "CHAIR_i_distinct", "degenerate_share")},
            "n_sentences": sum(v is not None for v in rankings["explicit"].sentence_scores[s.name]),
            **s.describe(),
            "target_run": str(dirs[s.name] / "target"),
            "evidence_run": str(dirs[s.name] / "evidence"),
        }
        for s in systems
        if rankings["explicit"].scores[s.name] is not None
    ]
    result = {
        "format": "halluc.crosscheck/1",
        "lower_is_better": True,
        "mode": "explicit",
        "measure": measure.name,
        "settings": dataclasses.asdict(settings),
        "systems": rows,
        "unscored": [s.name for s in systems if rankings["explicit"].scores[s.name] is None],
        **blocks,
        "correlations": flat,
        "sentences": _Scored(outputs, p_no, raws, rankings, settings.mode).sentence_rows(targets),
    }
    store.write_artifact(FILE, result)
    store.write_metrics({key.removesuffix(" (CHAIR_i)").replace(" ", "_"): value for key, value in flat.items()})
    store.finish()
    return result
