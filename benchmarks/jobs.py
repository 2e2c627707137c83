"""CHAIR and POPE jobs: image set + model (+ intervention) -> resumable run directory -> metrics.

Each job builds ``Request``s from its data, hands them to the runner, then scores the stored samples; it never
touches the model itself. Under ``accelerate launch`` every process generates its shard and the main process scores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks import chair, pope
from benchmarks.chair import GroundTruth
from benchmarks.runner import (
    GenerationSettings,
    Request,
    RunSummary,
    distributed_state,
    firing_summary,
    run_generation,
    unique_samples,
)
from halluc.defaults import DESCRIBE_PROMPT
from halluc.errors import InputDataError
from halluc.imagesets import ImageSet
from halluc.models import model_fingerprint
from halluc.runs import RunStore, config_hash, result_config

__all__ = ["CHAIR_PROMPT", "JobResult", "chair_ground_truth", "pope_questions", "run_chair", "run_pope"]

CHAIR_PROMPT = DESCRIBE_PROMPT


@dataclass(frozen=True)
class JobResult:
    store: RunStore
    metrics: dict[str, Any]
    summary: RunSummary


def _open_store(out: Path, manifest: dict[str, Any], resume: bool) -> RunStore:
    """Create the run directory on the main process; other processes open it once it exists."""
    state = distributed_state()
    store = RunStore.create(out, manifest, resume=resume) if state.is_main_process else None
    state.wait_for_everyone()
    return store if store is not None else RunStore.open(out)


def _open_run(
    job: str,
    lvlm: Any,
    requests: Sequence[Request],
    out: Path,
    settings: GenerationSettings,
    config: dict[str, Any],
    *,
    intervention: Any,
    seed: int,
    resume: bool,
) -> RunStore:
    """The run's store (holding the writer lock on the main process), its manifest hashed on what changes results."""
    manifest = {
        "job": job,
        **model_fingerprint(lvlm),
        "intervention": getattr(intervention, "to_dict", lambda: None)() if intervention is not None else None,
        "settings": asdict(settings),
        "seed": seed,
        **config,
        "n_requests": len(requests),
        "requests_sha256": config_hash([(r.id, r.image, r.prompt) for r in requests]),
    }
    manifest["config_hash"] = config_hash(result_config(manifest))
    return _open_store(out, manifest, resume)


def _execute(
    job: str,
    lvlm: Any,
    requests: Sequence[Request],
    out: Path,
    settings: GenerationSettings,
    config: dict[str, Any],
    *,
    intervention: Any,
    seed: int,
    resume: bool,
    progress: bool,
) -> tuple[RunStore, RunSummary]:
    """Open a run and generate every request; the caller scores and finishes it (an error marks it failed)."""
    store = _open_run(job, lvlm, requests, out, settings, config, intervention=intervention, seed=seed, resume=resume)
    try:
        torch.manual_seed(seed)
        summary = run_generation(lvlm, requests, store, settings, intervention=intervention, progress=progress)
    except BaseException as exc:
        store.__exit__(type(exc), exc, exc.__traceback__)
        raise
    return store, summary


def _is_main() -> bool:
    return distributed_state().is_main_process


def _samples(store: RunStore) -> list[dict[str, Any]]:
    """The run's samples, each id once (exact repeats dropped with a warning, conflicting ones refused)."""
    return unique_samples(store.samples(), where=str(store.samples_path()))


def _finish(
    store: RunStore, metrics: dict[str, Any], samples: list[dict[str, Any]], n_errors: int, **artifacts: Any
) -> None:
    """Close a scored run: error count and firing summary into ``metrics``, artifacts, metrics.json, status."""
    metrics["n_errors"] = n_errors
    metrics["firing"] = firing_summary(samples)
    for name, value in artifacts.items():
        store.write_artifact(f"{name}.json", value)
    store.write_metrics(metrics)
    store.finish(n_errors=n_errors)


def _chair_image_id(image_id: int | str) -> int:
    if isinstance(image_id, int) or str(image_id).isdigit():
        return int(image_id)
    raise InputDataError(
        f"image {image_id!r} has no integer COCO id, so CHAIR ground truth cannot name it; pass --annotations "
        "(COCO instances of the images) so ids come from there"
    )


def chair_ground_truth(images: ImageSet, gt_file: Path | None = None, mode: chair.Mode = "reference") -> GroundTruth:
    """Load and check CHAIR ground truth for every image of ``images``, before any model loads or generates."""
    if gt_file is None and images.instances is None and images.captions is None:
        raise InputDataError("CHAIR needs ground truth: pass --annotations/--captions (COCO files) or --gt-file")
    if gt_file is not None:
        gt = chair.load_ground_truth_file(gt_file)
    else:
        gt = chair.load_ground_truth(images.instances, images.captions, mode=mode)
    missing = [i for i in images.image_ids if _chair_image_id(i) not in gt]
    if missing:
        source = gt_file or images.captions or images.instances
        raise InputDataError(
            f"{len(missing)} of {len(images.image_ids)} images have no ground truth in {str(source)!r}, "
            f"e.g. {missing[:3]}"
        )
    return gt


def pope_questions(
    images: ImageSet, questions: Sequence[pope.PopeQuestion] | None = None, *, n_images: int = 500, seed: int = 0
) -> list[pope.PopeQuestion]:
    """The POPE questions of a job (built from the image set's instances unless given), checked: labels present,
    every image in the set. Cheap, so commands call it before the model loads."""
    if questions is None:
        if images.instances is None:
            raise InputDataError("POPE needs --annotations (COCO instances) to build questions, or --questions")
        built = pope.build_pope(images.instances, n_images=n_images, seed=seed)
        questions = [q for split in pope.SPLITS for q in built[split]]
    if not questions:
        raise InputDataError("the POPE question files hold no questions")
    unlabelled = [q.question_id for q in questions if q.label is None]
    if unlabelled:
        raise InputDataError(
            f"{len(unlabelled)} POPE questions have no 'label' (yes/no), e.g. question_id {unlabelled[:3]}; "
            "scoring needs a labelled question file"
        )
    names = set(images.file_names.values())
    missing = sorted({q.image for q in questions if q.image not in names})
    if missing:
        raise InputDataError(f"{len(missing)} POPE images are not in {images.name!r}, e.g. {missing[:3]}")
    return list(questions)


def run_chair(
    lvlm: Any,
    images: ImageSet,
    out: Path,
    *,
    settings: GenerationSettings | None = None,
    intervention: Any = None,
    prompt: str = CHAIR_PROMPT,
    gt_file: Path | None = None,
    mode: chair.Mode = "reference",
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    ground_truth: GroundTruth | None = None,
    extra: dict[str, Any] | None = None,
) -> JobResult:
    """Describe every image, then score the descriptions with CHAIR against COCO-format ground truth.

    Ground truth is loaded and checked before anything is generated (pass ``ground_truth`` from
    :func:`chair_ground_truth` to check it before the model loads, as the CLI does). ``extra``: more manifest
    entries that describe the run (e.g. its protocol and split), hashed with the rest."""
    settings = settings or GenerationSettings()
    gt = ground_truth if ground_truth is not None else chair_ground_truth(images, gt_file, mode)
    requests = [Request(str(i), str(images.path(i)), prompt, {"image_id": i}) for i in images.image_ids]
    config = {"images": images.describe(), "prompt": prompt, "chair_mode": mode, **(extra or {})}
    store = _open_run(
        "chair", lvlm, requests, out, settings, config, intervention=intervention, seed=seed, resume=resume
    )
    with store:
        torch.manual_seed(seed)
        summary = run_generation(lvlm, requests, store, settings, intervention=intervention, progress=progress)
        if not _is_main():
            return JobResult(store, {}, summary)
        samples = _samples(store)
        ok = [{"image_id": s["image_id"], "caption": s["response"]} for s in samples if "error" not in s]
        metrics, details = chair.score_records(ok, gt, mode=mode)
        _finish(store, metrics, samples, len(samples) - len(ok), chair_details=details)
    return JobResult(store, metrics, summary)


def _pope_request_id(question: pope.PopeQuestion) -> str:
    """Identical (image, question) pairs across splits share one generation."""
    return hashlib.sha1(f"{question.image}\n{question.text}".encode()).hexdigest()[:16]


def run_pope(
    lvlm: Any,
    images: ImageSet,
    out: Path,
    *,
    questions: Sequence[pope.PopeQuestion] | None = None,
    n_images: int = 500,
    settings: GenerationSettings | None = None,
    intervention: Any = None,
    suffix: str = pope.DEFAULT_SUFFIX,
    strict: bool = False,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> JobResult:
    """Answer POPE questions (built from the image set's instances unless given) and score them per split.

    ``extra``: more manifest entries that describe the run (e.g. the question-file versions and label set)."""
    settings = settings or GenerationSettings(max_new_tokens=8)
    questions = pope_questions(images, questions, n_images=n_images, seed=seed)
    by_name = {name: image_id for image_id, name in images.file_names.items()}
    requests: dict[str, Request] = {}
    for q in questions:
        rid = _pope_request_id(q)
        meta = {"image_id": by_name[q.image], "question": q.text}
        requests.setdefault(
            rid, Request(rid, str(images.path(by_name[q.image])), pope.pope_prompt(q.text, suffix), meta)
        )
    config = {
        "images": images.describe(), "suffix": suffix, "strict": strict, "n_questions": len(questions), **(extra or {})
    }  # fmt: skip
    store = _open_run(
        "pope", lvlm, list(requests.values()), out, settings, config,
        intervention=intervention, seed=seed, resume=resume,
    )  # fmt: skip
    with store:
        torch.manual_seed(seed)
        summary = run_generation(
            lvlm, list(requests.values()), store, settings, intervention=intervention, progress=progress
        )
        if not _is_main():
            return JobResult(store, {}, summary)
        samples = _samples(store)
        answers = {s["id"]: s.get("response") for s in samples}
        scored = [pope.score_answer(q, answers[_pope_request_id(q)], strict=strict) for q in questions
                  if answers.get(_pope_request_id(q)) is not None]  # fmt: skip
        metrics = pope.aggregate(scored)
        asked = [{**q.to_dict(), "split": q.split} for q in questions]
        _finish(store, metrics, samples, len(questions) - len(scored), pope_questions=asked, pope_scored=scored)
    return JobResult(store, metrics, summary)
