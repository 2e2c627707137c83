"""MME-style and AMBER jobs: questions + model (+ intervention) -> resumable run directory -> official metrics.

Like the CHAIR and POPE jobs (:mod:`benchmarks.jobs`) they only build ``Request``s, let the runner generate
(batched, resumable, sharded) and score the stored samples. MME's questions come from the embedded world
(:mod:`halluc.world.questions`); AMBER's from the official metadata and images, or from the world, whose
AMBER-format metadata the job writes into ``<run>/amber_data`` so ``halluc score amber`` can rescore the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks import amber, mme
from benchmarks.jobs import JobResult, _finish, _is_main, _open_run, _samples
from benchmarks.runner import GenerationSettings, Request, RunSummary, run_generation
from halluc.defaults import DESCRIBE_PROMPT
from halluc.errors import ConfigError, InputDataError
from halluc.imagesets import ImageSet
from halluc.world.questions import MME_SUBSETS, Question, WorldImage, amber_set, load_world_images, mme_questions

__all__ = ["amber_requests", "mme_set", "run_amber", "run_mme", "world_amber_data"]


def _world_images(images: ImageSet) -> list[WorldImage]:
    """The world's record of every image of ``images`` (its instances file must be a world build's)."""
    if images.instances is None:
        raise ConfigError(f"--images {images.name!r}: these questions come from the embedded world; use toy:val")
    return load_world_images(images.instances, list(images.image_ids))


def mme_set(images: ImageSet, seed: int = 0) -> list[Question]:
    """The MME-style pairs of a world image set; cheap, so commands call it before the model loads."""
    questions = mme_questions(_world_images(images), seed)
    if not questions:
        raise InputDataError(f"no image of {images.name!r} settles any question; use more images")
    return questions


def _mme_id(q: Question) -> str:
    return f"{q.kind}/{q.image_id}/{'yes' if q.label else 'no'}"


def run_mme(
    lvlm: Any,
    images: ImageSet,
    out: Path,
    *,
    questions: Sequence[Question] | None = None,
    settings: GenerationSettings | None = None,
    intervention: Any = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> JobResult:
    """Answer the MME-style existence/count/position/colour pairs of a world image set and score them as MME does."""
    settings = settings or GenerationSettings(max_new_tokens=8)
    questions = list(questions) if questions is not None else mme_set(images, seed)
    requests = [Request(_mme_id(q), str(images.path(q.image_id)), f"{q.text} {mme.SUFFIX}",
                        {"image_id": q.image_id, "subset": q.kind, "question": q.text, "label": q.label})
                for q in questions]  # fmt: skip
    config = {"images": images.describe(), "suffix": mme.SUFFIX, "subsets": list(MME_SUBSETS)}
    store = _open_run("mme", lvlm, requests, out, settings, config, intervention=intervention, seed=seed, resume=resume)
    with store:
        torch.manual_seed(seed)
        summary = run_generation(lvlm, requests, store, settings, intervention=intervention, progress=progress)
        if not _is_main():
            return JobResult(store, {}, summary)
        samples = _samples(store)
        answered = [{**s, "image": s["image_id"]} for s in samples if "error" not in s]
        metrics = mme.score(answered, MME_SUBSETS)
        _finish(store, metrics, samples, len(samples) - len(answered))
    return JobResult(store, metrics, summary)


def world_amber_data(images: ImageSet, root: Path, seed: int = 0) -> amber.AmberData:
    """Write the AMBER-format metadata of a world image set into ``root`` and load it back (checked). Its
    description query is halluc's describe prompt (the one models here are tuned on), not AMBER's shorter one."""
    annotations, relation, queries = amber_set(_world_images(images), seed, DESCRIBE_PROMPT)
    return amber.load_amber_data(amber.write_amber_data(root, annotations, relation, queries))


def amber_requests(data: amber.AmberData, image_dir: Path, limit: int | None = None) -> list[Request]:
    """One request per official query (``query/query_all.json``), those of the first ``limit`` images when given;
    every query id must have an annotation and every image must exist, checked before any generation."""
    queries = amber.load_queries(data.root)
    if limit is not None:
        keep = list(dict.fromkeys(q["image"] for q in queries))[:limit]
        queries = [q for q in queries if q["image"] in set(keep)]
    unknown = [q["id"] for q in queries if q["id"] not in data.annotations]
    if unknown:
        raise InputDataError(f"{len(unknown)} queries have no annotation in {str(data.root)!r}, e.g. ids {unknown[:3]}")
    missing = sorted({q["image"] for q in queries if not (Path(image_dir) / q["image"]).is_file()})
    if missing:
        raise InputDataError(f"{len(missing)} AMBER images are not in {str(image_dir)!r}, e.g. {missing[:3]}")
    return [Request(str(q["id"]), str(Path(image_dir) / q["image"]), q["query"],
                    {"query_id": q["id"], "type": data.annotations[q["id"]]["type"]}) for q in queries]  # fmt: skip


def run_amber(
    lvlm: Any,
    data: amber.AmberData,
    requests: Sequence[Request],
    out: Path,
    *,
    settings: GenerationSettings | None = None,
    answer_tokens: int = 8,
    intervention: Any = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> JobResult:
    """Describe the images and answer the yes/no queries (``answer_tokens`` new tokens at most), then score as the
    official code does; yes/no answers are first mapped to "Yes"/"No" by their first word (recorded)."""
    settings = settings or GenerationSettings()
    described = [r for r in requests if r.meta["type"] == "generative"]
    asked = [r for r in requests if r.meta["type"] != "generative"]
    config = {"amber_data": str(data.root), "answer_max_new_tokens": answer_tokens, "parse_answers": True,
              "similarity": amber.similarity_backend(), **(extra or {})}  # fmt: skip
    store = _open_run("amber", lvlm, requests, out, settings, config, intervention=intervention, seed=seed,
                      resume=resume)  # fmt: skip
    with store:
        torch.manual_seed(seed)
        first = run_generation(lvlm, described, store, settings, intervention=intervention, progress=progress)
        answers = replace(settings, max_new_tokens=answer_tokens)
        second = run_generation(lvlm, asked, store, answers, intervention=intervention, progress=progress)
        summary = RunSummary(first.generated + second.generated, first.skipped + second.skipped,
                             first.errors + second.errors)  # fmt: skip
        if not _is_main():
            return JobResult(store, {}, summary)
        samples = _samples(store)
        ok = [s for s in samples if "error" not in s]
        responses = {s["query_id"]: amber.official_response(data.annotations[s["query_id"]], s["response"], True)
                     for s in ok}  # fmt: skip
        metrics, details = amber.score_responses(responses, data)
        _finish(store, metrics, samples, len(samples) - len(ok), amber_details={str(k): v for k, v in details.items()})
    return JobResult(store, metrics, summary)
