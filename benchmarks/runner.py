"""Generation runner: requests -> batched generation -> run store, resumable and shardable with accelerate.

Benchmarks build ``Request``s from their data and score the stored samples afterwards; the runner is the only
place that touches the model. Under ``accelerate launch`` each process takes every n-th request, appends to its
own shard file, and the main process merges the shards in request order, so the result equals a 1-process run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from tqdm.auto import tqdm

from halluc.errors import ConfigError, InputDataError
from halluc.imagesets import load_image
from halluc.runs import RunStore

__all__ = [
    "GenerationSettings",
    "Request",
    "RunSummary",
    "distributed_state",
    "firing_summary",
    "run_generation",
    "unique_samples",
]

_log = logging.getLogger("halluc")
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


@dataclass(frozen=True)
class Request:
    """One generation to run: a sample id, an image file (or None for text-only) and the prompt."""

    id: str
    image: str | None
    prompt: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings recorded in the manifest; greedy by default, as CHAIR/POPE papers report."""

    max_new_tokens: int = 512
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    num_beams: int = 1

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs["temperature"] = self.temperature
        if self.num_beams > 1:
            kwargs["num_beams"] = self.num_beams
        return kwargs


@dataclass(frozen=True)
class RunSummary:
    generated: int
    skipped: int
    errors: int


class _Generator(Protocol):
    def generate(self, images: Sequence[Image.Image | None], prompts: Sequence[str], **kwargs: Any) -> list[str]: ...


class _Distributed(Protocol):
    num_processes: int
    process_index: int
    is_main_process: bool

    def wait_for_everyone(self) -> None: ...


def _launched_world_size() -> int:
    """How many processes a launcher (torchrun, accelerate, mpirun) says this job has; 1 when not launched."""
    for name in _WORLD_SIZE_VARS:
        value = os.environ.get(name, "")
        if value.strip().isdigit():
            return int(value)
    return 1


def distributed_state() -> Any:
    """accelerate's process state; under torchrun without a GPU it uses CPU processes (gloo) instead of
    silently running one full copy per process, and a launch it still cannot follow is refused."""
    import torch
    from accelerate import PartialState

    world = _launched_world_size()
    state = PartialState(cpu=world > 1 and not torch.cuda.is_available())
    if state.num_processes != world:
        raise ConfigError(
            f"launched as {world} processes but accelerate sees {state.num_processes}; every process would write "
            "the whole run. Launch with 'accelerate launch --num_processes N -m halluc.cli ...' or run one process"
        )
    return state


def _distributed_state() -> _Distributed | None:
    """accelerate's process state when launched with several processes, else None."""
    state = distributed_state()
    return state if state.num_processes > 1 else None


def unique_samples(records: Iterable[dict[str, Any]], *, where: str) -> list[dict[str, Any]]:
    """Records with repeated ids removed: exact repeats are dropped with a warning, conflicting ones refused."""
    seen: dict[str, dict[str, Any]] = {}
    dropped = 0
    for record in records:
        key = str(record.get("id"))
        if key not in seen:
            seen[key] = record
        elif json.dumps(seen[key], sort_keys=True, default=str) == json.dumps(record, sort_keys=True, default=str):
            dropped += 1
        else:
            raise InputDataError(
                f"{where}: conflicting records for sample id {key!r} (two writers wrote this run?); "
                "remove the wrong one or rerun into a new --out"
            )
    if dropped:
        _log.warning("%s: dropped %d duplicate sample record(s) (identical repeats of an id)", where, dropped)
    return list(seen.values())


def run_generation(
    lvlm: _Generator,
    requests: Sequence[Request],
    store: RunStore,
    settings: GenerationSettings,
    *,
    intervention: Any = None,
    progress: bool = True,
    state: _Distributed | None = None,
) -> RunSummary:
    """Generate a response for every request not yet in ``store``, appending records batch by batch."""
    state = state if state is not None else _distributed_state()
    done = store.done_ids()
    mine = [r for i, r in enumerate(requests) if state is None or i % state.num_processes == state.process_index]
    todo = [r for r in mine if r.id not in done]
    shard = None if state is None else f"rank{state.process_index}"
    errors = 0
    show = progress and (state is None or state.is_main_process)
    bar = tqdm(total=len(todo), desc="generating", unit="img", disable=not show)
    for start in range(0, len(todo), settings.batch_size):
        chunk = todo[start : start + settings.batch_size]
        ok: list[tuple[Request, Image.Image | None]] = []
        records: dict[str, dict[str, Any]] = {}
        for req in chunk:
            try:
                ok.append((req, load_image(req.image) if req.image else None))
            except InputDataError as exc:
                records[req.id] = _record(req, error=str(exc))
                errors += 1
        if ok:
            firing: list[dict[str, Any]] = []  # what the intervention did to each sample (proof of firing)
            texts = lvlm.generate(
                [img for _, img in ok],
                [req.prompt for req, _ in ok],
                batch_size=len(ok),
                intervention=intervention,
                **({"firing": firing} if intervention is not None else {}),
                **settings.generate_kwargs(),
            )
            for k, ((req, _), text) in enumerate(zip(ok, texts, strict=True)):
                records[req.id] = _record(req, response=text, firing=firing[k] if firing else None)
        store.append([records[req.id] for req in chunk], shard=shard)
        bar.update(len(chunk))
    bar.close()
    if state is not None:
        state.wait_for_everyone()
        if state.is_main_process:
            store.merge_shards([r.id for r in requests])
        state.wait_for_everyone()
    return RunSummary(generated=len(todo) - errors, skipped=len(mine) - len(todo), errors=errors)


def _record(
    req: Request, *, response: str | None = None, error: str | None = None, firing: dict[str, Any] | None = None
) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": req.id, "image": Path(req.image).name if req.image else None, "prompt": req.prompt}
    rec.update(req.meta)
    if error is not None:
        rec["error"] = error
    else:
        rec["response"] = response
    if firing:
        rec["firing"] = firing
    return rec


def firing_summary(records: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """What the intervention did over a run, from the samples' ``firing`` records: how many samples it changed
    (first-step log-probabilities or the top token) and the mean change; None for a run without intervention."""
    fired = [r["firing"] for r in records if isinstance(r.get("firing"), dict)]
    changes = [f["first_step_change"] for f in fired if isinstance(f.get("first_step_change"), int | float)]
    if not fired:
        return None
    return {
        "samples": len(fired),
        "changed_samples": sum(change > 0 for change in changes),
        "top1_changed_samples": sum(bool(f.get("top1_changed")) for f in fired),
        "mean_first_step_change": sum(changes) / len(changes) if changes else None,
    }
