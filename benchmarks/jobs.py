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
from benchmarks.runner import GenerationSettings, Request, RunSummary, run_generation
from halluc.defaults import DESCRIBE_PROMPT
from halluc.errors import InputDataError
from halluc.imagesets import ImageSet
from halluc.models import model_fingerprint
from halluc.runs import RunStore, config_hash

__all__ = ["CHAIR_PROMPT", "JobResult", "run_chair", "run_pope"]

CHAIR_PROMPT = DESCRIBE_PROMPT


@dataclass(frozen=True)
class JobResult:
    store: RunStore
    metrics: dict[str, Any]
    summary: RunSummary


def _open_store(out: Path, manifest: dict[str, Any], resume: bool) -> RunStore:
    """Create the run directory on the main process; other processes open it once it exists."""
    from accelerate import PartialState

    state = PartialState()
    store = RunStore.create(out, manifest, resume=resume) if state.is_main_process else None
    state.wait_for_everyone()
    return store if store is not None else RunStore.open(out)


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
    manifest["config_hash"] = config_hash({k: v for k, v in manifest.items() if k != "command"})
    store = _open_store(out, manifest, resume)
    torch.manual_seed(seed)
    summary = run_generation(lvlm, requests, store, settings, intervention=intervention, progress=progress)
    return store, summary


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


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
) -> JobResult:
    """Describe every image, then score the descriptions with CHAIR against COCO-format ground truth."""
    settings = settings or GenerationSettings()
    if gt_file is None and images.instances is None and images.captions is None:
        raise InputDataError("CHAIR needs ground truth: pass --annotations/--captions (COCO files) or --gt-file")
    requests = [Request(str(i), str(images.path(i)), prompt, {"image_id": i}) for i in images.image_ids]
    config = {"images": images.describe(), "prompt": prompt, "chair_mode": mode}
    store, summary = _execute(
        "chair", lvlm, requests, out, settings, config,
        intervention=intervention, seed=seed, resume=resume, progress=progress,
    )  # fmt: skip
    if not _is_main():
        return JobResult(store, {}, summary)
    if gt_file is not None:
        gt = chair.load_ground_truth_file(gt_file)
    else:
        gt = chair.load_ground_truth(images.instances, images.captions, mode=mode)
    samples = store.samples()
    ok = [{"image_id": s["image_id"], "caption": s["response"]} for s in samples if "error" not in s]
    metrics, details = chair.score_records(ok, gt, mode=mode)
    metrics["n_errors"] = len(samples) - len(ok)
    store.write_artifact("chair_details.json", details)
    store.write_metrics(metrics)
    store.finish(n_errors=metrics["n_errors"])
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
) -> JobResult:
    """Answer POPE questions (built from the image set's instances unless given) and score them per split."""
    settings = settings or GenerationSettings(max_new_tokens=8)
    if questions is None:
        if images.instances is None:
            raise InputDataError("POPE needs --annotations (COCO instances) to build questions, or --questions")
        built = pope.build_pope(images.instances, n_images=n_images, seed=seed)
        questions = [q for split in pope.SPLITS for q in built[split]]
    by_name = {name: image_id for image_id, name in images.file_names.items()}
    missing = sorted({q.image for q in questions if q.image not in by_name})
    if missing:
        raise InputDataError(f"{len(missing)} POPE images are not in {images.name!r}, e.g. {missing[:3]}")
    requests: dict[str, Request] = {}
    for q in questions:
        rid = _pope_request_id(q)
        meta = {"image_id": by_name[q.image], "question": q.text}
        requests.setdefault(
            rid, Request(rid, str(images.path(by_name[q.image])), pope.pope_prompt(q.text, suffix), meta)
        )
    config = {"images": images.describe(), "suffix": suffix, "strict": strict, "n_questions": len(questions)}
    store, summary = _execute(
        "pope", lvlm, list(requests.values()), out, settings, config,
        intervention=intervention, seed=seed, resume=resume, progress=progress,
    )  # fmt: skip
    if not _is_main():
        return JobResult(store, {}, summary)
    answers = {s["id"]: s.get("response") for s in store.samples()}
    scored = [pope.score_answer(q, answers[_pope_request_id(q)], strict=strict) for q in questions
              if answers.get(_pope_request_id(q)) is not None]  # fmt: skip
    metrics = pope.aggregate(scored)
    metrics["n_errors"] = len(questions) - len(scored)
    store.write_artifact("pope_questions.json", [{**q.to_dict(), "split": q.split} for q in questions])
    store.write_artifact("pope_scored.json", scored)
    store.write_metrics(metrics)
    store.finish(n_errors=metrics["n_errors"])
    return JobResult(store, metrics, summary)
