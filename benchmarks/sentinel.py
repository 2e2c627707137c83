"""The SENTINEL generation job: grow each description sentence by sentence and record preference pairs.

The algorithm (sampling, classification, pairing, output files) is :mod:`halluc.sentinel`; this module drives it
over an image set with a model-backed sentence source and an object validator, into a resumable run directory.

Images are processed in a rolling batch: every round, each active image samples its next sentence (one
``generate`` call for all of them), the new objects are validated (one batched validator call), each image takes
its step, and finished images are written and replaced by the next ones in the queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from detectors import ObjectValidator, tag_image_id
from halluc.errors import InputDataError, OutputLocationError
from halluc.imagesets import ImageSet, load_image
from halluc.models import model_fingerprint
from halluc.runs import RunStore, config_hash
from halluc.sentinel import (
    IMAGES,
    KINDS,
    Candidate,
    LVLMSentenceSource,
    PairWriter,
    SentenceSource,
    SentinelConfig,
    StepResult,
    candidates,
    pair_stats,
    run_step,
)

__all__ = ["GenerationResult", "generate_pairs", "run_sentinel"]


@dataclass(frozen=True)
class GenerationResult:
    """Where the run went, its statistics, and how many images were generated now, skipped or failed."""

    store: RunStore
    stats: dict[str, Any]
    generated: int
    skipped: int
    errors: int


@dataclass
class _ImageState:
    """One image while its description grows."""

    image_id: int | str
    path: str
    image: Image.Image
    sentences: list[str] = field(default_factory=list)
    context_objects: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None

    @property
    def context(self) -> str:
        return " ".join(self.sentences)

    def pair_record(self, win: Candidate, lose: Candidate, pair_type: str, question: str) -> dict[str, Any]:
        """A pairs.jsonl line (field names are read by the dashboard and the DPO trainer)."""
        return {
            "image_id": self.image_id,
            "image_path": self.path,
            "question": question,
            "context": self.context,
            "y_win": win.text,
            "y_lose": lose.text,
            "win_objects": list(win.objects),
            "lose_hallucinated": [o for o in lose.objects if self.statuses.get(o) == "hallucinated"],
            "context_objects": list(self.context_objects),
            "step": len(self.sentences),
            "type": pair_type,
        }

    def take(self, result: StepResult, n_samples: int, question: str, max_sentences: int) -> None:
        """Record a step's pairs and counts, then extend the context or finish."""
        self.pairs += [self.pair_record(win, lose, pair_type, question) for win, lose, pair_type in result.pairs]
        counts = {kind: sum(1 for k in result.kinds.values() if k == kind) for kind in KINDS}
        keep = result.next_sentence
        self.steps.append(
            {"step": len(self.sentences), "n_samples": n_samples, "n_unique": len(result.kinds), **counts,
             "n_pairs": len(result.pairs), "kept": keep.text if keep else None}
        )  # fmt: skip
        if keep is None:
            self.stop_reason = result.stop_reason
            return
        self.sentences.append(keep.text)
        self.context_objects += [o for o in dict.fromkeys(keep.objects) if o not in self.context_objects]
        if len(self.sentences) >= max_sentences:
            self.stop_reason = "max_sentences"

    def image_record(self, question: str) -> dict[str, Any]:
        """The images.jsonl line: final description, verdict per object, per-step counts."""
        return {
            "image_id": self.image_id,
            "image_path": self.path,
            "question": question,
            "description": self.context,
            "n_sentences": len(self.sentences),
            "stop_reason": self.stop_reason,
            "verdicts": dict(sorted(self.statuses.items())),
            "n_pairs": len(self.pairs),
            "steps": self.steps,
        }


def _open_run(out: Path, manifest: dict[str, Any], resume: bool) -> tuple[RunStore, PairWriter]:
    """Create (or, with ``resume``, continue) the run directory and its writer."""
    if not resume and (Path(out) / IMAGES).exists():
        raise OutputLocationError(
            f"{str(out)!r} already holds a SENTINEL run; pass --resume to continue it or choose another --out"
        )
    store = RunStore.create(Path(out), manifest, resume=resume)
    return store, PairWriter(store.path)


def generate_pairs(
    source: SentenceSource,
    validator: ObjectValidator,
    images: ImageSet,
    out: Path,
    *,
    config: SentinelConfig | None = None,
    model_info: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> GenerationResult:
    """Generate sentence-level preference pairs for every image of ``images`` not yet done in ``out``."""
    config = config or SentinelConfig()
    items = [(image_id, str(images.path(image_id).resolve())) for image_id in images.image_ids]
    manifest = {
        "job": "sentinel",
        **(model_info or {}),
        "config": asdict(config),
        "images": images.describe(),
        "images_sha256": config_hash(items),
        "kinds": list(KINDS),
    }
    manifest["config_hash"] = config_hash(manifest)
    store, writer = _open_run(out, manifest, resume)
    with store:  # an exception marks the run failed (interrupted on Ctrl-C) and frees its writer lock
        todo = deque((i, p) for i, p in items if str(i) not in writer.done)
        skipped, generated, errors = len(items) - len(todo), 0, 0
        torch.manual_seed(config.seed)
        bar = tqdm(total=len(todo), desc="sentinel", unit="img", disable=not progress)
        active: list[_ImageState] = []
        n_pairs = 0
        while todo or active:
            while todo and len(active) < config.batch_images:
                image_id, path = todo.popleft()
                try:
                    active.append(_ImageState(image_id, path, tag_image_id(load_image(path), image_id)))
                except InputDataError as exc:
                    writer.write([], {"image_id": image_id, "image_path": path, "error": str(exc)})
                    errors += 1
                    bar.update(1)
            if not active:
                continue
            _round(source, validator, active, config)
            for state in [s for s in active if s.stop_reason is not None]:
                writer.write(state.pairs, state.image_record(config.question))
                active.remove(state)
                generated, n_pairs = generated + 1, n_pairs + len(state.pairs)
                bar.set_postfix(pairs=n_pairs, refresh=False)
                bar.update(1)
        bar.close()
        stats = pair_stats(store.path)
        store.write_metrics(stats)
        store.finish(n_pairs=stats["n_pairs"], n_errors=stats["n_errors"])
    return GenerationResult(store, stats, generated, skipped, errors)


def _round(
    source: SentenceSource, validator: ObjectValidator, active: list[_ImageState], config: SentinelConfig
) -> None:
    """One step for every active image: sample, validate the new objects, classify, pair, extend or finish."""
    samples = source.sample([s.image for s in active], config.question, [s.context for s in active])
    asked = [
        list(dict.fromkeys(o for c in candidates(per_image) for o in c.objects if o not in state.statuses))
        for state, per_image in zip(active, samples, strict=True)
    ]
    verdicts = validator.validate_many([s.image for s in active], [s.path for s in active], asked)
    for state, per_image, found in zip(active, samples, verdicts, strict=True):
        state.statuses.update({obj: verdict.status for obj, verdict in found.items()})
        result = run_step(per_image, state.statuses, state.context_objects, state.sentences, config.pair_types)
        state.take(result, len(per_image), config.question, config.max_sentences)


def run_sentinel(
    lvlm: Any,
    validator: ObjectValidator,
    images: ImageSet,
    out: Path,
    *,
    config: SentinelConfig | None = None,
    detectors: Sequence[str] = (),
    resume: bool = False,
    progress: bool = True,
) -> GenerationResult:
    """:func:`generate_pairs` sampling with ``lvlm``; the manifest records its weights and the ``detectors``."""
    config = config or SentinelConfig()
    return generate_pairs(
        LVLMSentenceSource(lvlm, config),
        validator,
        images,
        out,
        config=config,
        model_info={**model_fingerprint(lvlm), "detectors": list(detectors)},
        resume=resume,
        progress=progress,
    )
