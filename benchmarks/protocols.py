"""Evaluation protocols as data: the image sample, prompt, token budget, decoding and data-file version of a named
benchmark setting, so a number comes with everything needed to reproduce it (recorded in every run's manifest).

CHAIR protocols (:data:`PROTOCOLS`), one frozen :class:`Protocol` each:

* ``vhr``: 5 random 500-image splits of COCO val2014, "Please describe this image in detail.", 512 new tokens,
  greedy; CHAIR reported as mean ± std over the splits (VHR, "Cracking the Code of Hallucination in LVLMs with
  Vision-aware Head Divergence", ACL 2025). The official repository (jinghan1he/VHR) could not be read here, so its
  split seeds are unknown: halluc fixes seeds 0-4 and records them with the id list of every split.
* ``pai``: one 500-image sample, "Please help me describe the image in detail.", 512 new tokens, greedy, exactly as
  LALBJ/PAI @ 9bbd8bd ``chair_eval.py`` draws it: ``setup_seeds()`` seeds Python's ``random`` with 927
  (chair_eval.py:18-23, called at :59); ``COCODataSet`` lists the image directory and ``random.shuffle``s the
  file names (eval_data_loader.py:14-15); the loader keeps that order (``shuffle=False``, batch size 1 by default,
  chair_eval.py:45,70-72) and the loop stops at batch 500 (chair_eval.py:87-89), i.e. the first 500 shuffled
  files; the prompt is chair_eval.py:94, ``max_new_tokens`` 512 (:56, :119), greedy (``do_sample`` off, 1 beam:
  :47-48, :118-121). One difference cannot be removed: PAI shuffles ``os.listdir`` order, which depends on the
  file system, so its exact 500 ids are not portable. halluc shuffles the file names *sorted* (the one portable
  order) with ``random.Random(927)``, the same rule on a defined input. (It also assumes, as PAI's code does,
  that loading the model between seeding and shuffling, chair_eval.py:63, draws nothing from Python's ``random``.)

The sampling rule (``shuffle_first``) is shared: sort the image set's file names, shuffle them with
``random.Random(seed)``, keep the first ``n_images``. With ``--images toy:val`` a protocol draws from the toy
world's images by the same rule, so it runs offline; with a COCO val2014 directory it draws from COCO.

POPE question files come in versions that score differently (:data:`POPE_FILE_VERSIONS`): RUCAIBox/POPE @ e3e3926
(the files LLaVA's evaluation uses; random has 2,910 questions), @ 3df3ba1 (the current files, 3,000 per split,
other negatives and order) and RePOPE (YanNeu/RePOPE @ bcf22e5, corrected labels of the current files with
ambiguous questions removed). Popular and adversarial have 3,000 questions in both POPE versions, so a count cannot
tell them apart: :func:`detect_pope_version` compares content fingerprints, exact (ids, images, texts, labels) or,
for a file without labels or with a prompt suffix, the questions alone.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.chair import GroundTruth, Mode
from benchmarks.outputs import sha256
from benchmarks.pope import PopeQuestion
from benchmarks.runner import GenerationSettings
from halluc.errors import ConfigError, InputDataError, OutputLocationError
from halluc.imagesets import ImageSet
from halluc.runs import atomic_write_json

if TYPE_CHECKING:  # the jobs import torch: loaded only when a protocol runs, not to detect a POPE version
    from benchmarks.jobs import JobResult

__all__ = [
    "IDS_FILE",
    "POPE_FILE_VERSIONS",
    "PROTOCOLS",
    "SUMMARY_FILE",
    "SUMMARY_METRICS",
    "Protocol",
    "ProtocolResult",
    "check_conflicts",
    "detect_pope_version",
    "get_protocol",
    "pope_fingerprints",
    "protocol_splits",
    "run_chair_protocol",
    "sample_split",
    "split_dir",
    "summarise_splits",
    "write_id_list",
]

IDS_FILE = "image_ids.txt"  # in each split's run directory; usable as --image-ids
SUMMARY_FILE = "protocol_summary.json"  # in the parent --out directory
SUMMARY_METRICS = ("CHAIR_s", "CHAIR_i", "recall", "precision", "f1", "CHAIR_i_distinct", "avg_len")
_COCO_2014_GT = "COCO 2014 train+val instances and captions (as the reference CHAIR code builds it)"


@dataclass(frozen=True)
class Protocol:
    """A named evaluation setting: what every run of it must share. JSON primitives only (recorded as is)."""

    name: str
    benchmark: str
    prompt: str
    max_new_tokens: int
    n_images: int
    seeds: tuple[int, ...]
    image_pool: str
    ground_truth: str
    source: str
    sampling: str = "shuffle_first"  # sort file names, random.Random(seed).shuffle, keep the first n_images
    num_beams: int = 1
    do_sample: bool = False

    @property
    def n_splits(self) -> int:
        return len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seeds": list(self.seeds)}


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            name="vhr",
            benchmark="chair",
            prompt="Please describe this image in detail.",
            max_new_tokens=512,
            n_images=500,
            seeds=(0, 1, 2, 3, 4),
            image_pool="COCO val2014 (val2014/, 40,504 images)",
            ground_truth=_COCO_2014_GT,
            source="VHR (ACL 2025): CHAIR mean ± std over 5 random 500-image splits; seeds chosen by halluc",
        ),
        Protocol(
            name="pai",
            benchmark="chair",
            prompt="Please help me describe the image in detail.",
            max_new_tokens=512,
            n_images=500,
            seeds=(927,),
            image_pool="COCO val2014 (val2014/, 40,504 images)",
            ground_truth=_COCO_2014_GT,
            source="LALBJ/PAI @ 9bbd8bd chair_eval.py:18-23,59,87-94,119 and eval_data_loader.py:14-15",
        ),
    )
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``, or ConfigError listing the valid names (with a close match)."""
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    close = difflib.get_close_matches(name, PROTOCOLS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown protocol {name!r}{hint}; valid protocols: {', '.join(sorted(PROTOCOLS))}")


# --- image samples ----------------------------------------------------------------------------------------------


def sample_split(file_names: Mapping[int | str, str], n_images: int, seed: int) -> list[int | str]:
    """Ids of the first ``n_images`` file names after ``random.Random(seed).shuffle`` of all of them, sorted."""
    pool = sorted(file_names, key=lambda image_id: file_names[image_id])
    if n_images > len(pool):
        raise ConfigError(f"the protocol samples {n_images} images but the image set holds only {len(pool)}")
    random.Random(seed).shuffle(pool)
    return pool[:n_images]


def protocol_splits(protocol: Protocol, images: ImageSet, n_splits: int | None = None) -> list[tuple[int, ImageSet]]:
    """``(seed, image set of that split)`` for the first ``n_splits`` seeds of ``protocol`` (all by default)."""
    n = protocol.n_splits if n_splits is None else n_splits
    if not 1 <= n <= protocol.n_splits:
        raise ConfigError(
            f"--splits {n} conflicts with protocol {protocol.name!r}, which has {protocol.n_splits} split(s) "
            f"(seeds {list(protocol.seeds)}); pass --splits 1..{protocol.n_splits}"
        )
    file_names = {i: images.file_names[i] for i in images.image_ids}  # the set's ids only (a --annotations file
    out = []  # may list more images than the directory's id list)
    for seed in protocol.seeds[:n]:
        ids = tuple(sample_split(file_names, protocol.n_images, seed))
        out.append((seed, replace(images, image_ids=ids)))
    return out


def split_dir(out: Path, index: int, seed: int) -> Path:
    """The run directory of split ``index`` (0-based) under the protocol's ``--out``."""
    return Path(out) / f"split{index + 1}-seed{seed}"


def write_id_list(path: Path, ids: Sequence[int | str]) -> None:
    """Write an id list (one per line, readable by ``--image-ids``) atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputLocationError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


# Command-line options a protocol fixes -> the protocol field they must agree with (None: any explicit value).
_FIXED = {
    "--prompt": "prompt",
    "--max-new-tokens": "max_new_tokens",
    "--num-beams": "num_beams",
    "--seed": None,
    "--limit": None,
    "--image-ids": None,
}


def check_conflicts(protocol: Protocol, given: Mapping[str, Any]) -> None:
    """Refuse options given explicitly (``{"--prompt": value, ...}``) that disagree with ``protocol``, naming both
    values. ``--seed``, ``--limit`` and ``--image-ids`` always conflict: the protocol fixes the sample and seeds."""
    problems = []
    for option, value in given.items():
        if option not in _FIXED:
            raise ConfigError(f"option {option!r} is not one a protocol fixes; known: {', '.join(_FIXED)}")
        field = _FIXED[option]
        if field is None:
            fixed = f"seeds {list(protocol.seeds)}" if option == "--seed" else f"its {protocol.n_images}-image sample"
            problems.append(f"{option} {value!r} (protocol {protocol.name!r} fixes {fixed})")
        elif value != getattr(protocol, field):
            problems.append(f"{option} {value!r} (protocol {protocol.name!r} fixes {getattr(protocol, field)!r})")
    if problems:
        raise ConfigError(
            "options conflict with the protocol: " + "; ".join(problems) + "; leave them out or drop --protocol"
        )


# --- statistics over splits -------------------------------------------------------------------------------------


def summarise_splits(protocol: Protocol, splits: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± sample std (n - 1; None for one split) over splits of each headline metric.

    ``splits``: one ``{"seed", "run", "metrics"}`` per split, in seed order."""
    if not splits:
        raise InputDataError("no splits to summarise")
    summary: dict[str, Any] = {}
    for key in SUMMARY_METRICS:
        values = [s["metrics"][key] for s in splits if isinstance(s["metrics"].get(key), int | float)]
        if len(values) != len(splits):
            continue
        std = statistics.stdev(values) if len(values) > 1 else None
        summary[key] = {"mean": statistics.fmean(values), "std": std, "values": values}
    return {
        "protocol": protocol.to_dict(),
        "n_splits_run": len(splits),
        "complete": len(splits) == protocol.n_splits,
        "std": "sample standard deviation over splits (n - 1)",
        "splits": [{"seed": s["seed"], "run": str(s["run"])} for s in splits],
        "metrics": summary,
    }


def _data_files(images: ImageSet | None, gt_file: Path | None) -> dict[str, dict[str, str]]:
    """Path and sha256 of each ground-truth file the splits are scored against (the data-file version)."""
    files = {"gt_file": gt_file}
    if images is not None:
        files.update(instances=images.instances, captions=images.captions)
    return {k: {"path": str(Path(v).resolve()), "sha256": sha256(Path(v))} for k, v in files.items() if v is not None}


@dataclass(frozen=True)
class ProtocolResult:
    """The runs of a protocol's splits and the summary written to ``<out>/protocol_summary.json``."""

    runs: tuple[JobResult, ...]
    summary: dict[str, Any]
    path: Path


def run_chair_protocol(
    lvlm: Any,
    protocol: Protocol,
    splits: Sequence[tuple[int, ImageSet]],
    out: Path,
    ground_truth: GroundTruth,
    *,
    batch_size: int = 16,
    intervention: Any = None,
    mode: Mode = "reference",
    gt_file: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> ProtocolResult:
    """Run CHAIR on every split of :func:`protocol_splits` (each its own run directory with its id list, the
    protocol, split and seed in its manifest; generation seeded with the split's seed), then write the mean ± std.

    The caller checks inputs and each split's directory before the model loads (the CLI does)."""
    if protocol.benchmark != "chair":
        raise ConfigError(f"protocol {protocol.name!r} is a {protocol.benchmark} protocol, not a CHAIR one")
    from benchmarks.jobs import run_chair

    settings = GenerationSettings(
        max_new_tokens=protocol.max_new_tokens, batch_size=batch_size, do_sample=protocol.do_sample,
        num_beams=protocol.num_beams,
    )  # fmt: skip
    runs, rows, data = [], [], _data_files(splits[0][1] if splits else None, gt_file)
    for index, (seed, images) in enumerate(splits):
        run_dir = split_dir(out, index, seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_id_list(run_dir / IDS_FILE, images.image_ids)
        split = {"split": index + 1, "seed": seed, "ids_file": IDS_FILE, "data_files": data}
        extra = {"protocol": {**protocol.to_dict(), **split}}
        result = run_chair(
            lvlm, images, run_dir, settings=settings, intervention=intervention, prompt=protocol.prompt,
            gt_file=gt_file, mode=mode, seed=seed, resume=resume, progress=progress, ground_truth=ground_truth,
            extra=extra,
        )  # fmt: skip
        runs.append(result)
        rows.append({"seed": seed, "run": run_dir.name, "metrics": result.metrics})
    if not all(row["metrics"] for row in rows):  # a process other than the main one scores nothing
        return ProtocolResult(tuple(runs), {}, Path(out) / SUMMARY_FILE)
    summary = summarise_splits(protocol, rows)
    summary["intervention"] = getattr(intervention, "to_dict", lambda: None)() if intervention is not None else None
    atomic_write_json(Path(out) / SUMMARY_FILE, summary)
    return ProtocolResult(tuple(runs), summary, Path(out) / SUMMARY_FILE)


# --- POPE question-file versions -----------------------------------------------------------------------------------


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()[:16]


def pope_fingerprints(questions: Sequence[PopeQuestion]) -> dict[str, Any]:
    """``exact``: hash of (id, image, text, label) in file order; ``questions``: hash of the sorted distinct
    (image, first line of text) pairs, the same for a file without labels or with a prompt suffix."""
    exact = [[q.question_id, q.image, q.text, q.label] for q in questions]
    asked = sorted({(q.image, q.text.splitlines()[0].strip() if q.text.strip() else "") for q in questions})
    return {"n": len(questions), "exact": _sha(exact), "questions": _sha(asked)}


# version -> split -> (questions, exact fingerprint, questions fingerprint); computed with pope_fingerprints from
# the files named in each version's "source" (three of them are in ../shared/realdata/pope, the RePOPE files in
# github:YanNeu/RePOPE annotations/coco_repope_{split}.json).
POPE_FILE_VERSIONS: dict[str, dict[str, Any]] = {
    "pope-e3e3926": {
        "source": "RUCAIBox/POPE @ e3e3926 output/coco/coco_pope_{split}.json (the files LLaVA-1.5's evaluation uses)",
        "splits": {
            "random": (2910, "5a3b0c775863211f", "3097e5547f294dd3"),
            "popular": (3000, "ece39eb990ccd5a9", "bb841494de4a3d05"),
            "adversarial": (3000, "6416473aa6740c03", "f699db13f6124f72"),
        },
    },
    "pope-3df3ba1": {
        "source": "RUCAIBox/POPE @ 3df3ba1 output/coco/coco_pope_{split}.json (the current files)",
        "splits": {
            "random": (3000, "b2d2208083264e47", "dcc5498ce4b0afd9"),
            "popular": (3000, "8fa5140dd182251d", "947cf7dffca541d6"),
            "adversarial": (3000, "4bcd19e49785666f", "d026c89a54d3f96a"),
        },
    },
    "repope-bcf22e5": {
        "source": "YanNeu/RePOPE @ bcf22e5 annotations/coco_repope_{split}.json (pope-3df3ba1 relabelled, "
        "ambiguous questions removed)",
        "splits": {
            "random": (2774, "1694adbf9053731a", "73b0480da55aebc4"),
            "popular": (2727, "4cd83d479c770fbb", "b9d46030d85a10db"),
            "adversarial": (2684, "bdce25801112528c", "cd772fa41749c47d"),
        },
    },
}


def detect_pope_version(questions: Sequence[PopeQuestion]) -> list[dict[str, Any]]:
    """Which official file version each split of ``questions`` is (questions grouped by split, None -> "all").

    Per split: ``{"split", "n_questions", "version", "match"}`` where match is ``exact`` (same ids, images, texts,
    labels), ``questions`` (same image/question pairs; labels, ids, order or a prompt suffix differ, e.g. LLaVA's
    combined unlabelled file) or ``none`` (version ``unknown``: a subset, another sample, or a custom file)."""
    groups: dict[str, list[PopeQuestion]] = {}
    for q in questions:
        groups.setdefault(q.split or "all", []).append(q)
    found = []
    for split, group in groups.items():
        prints = pope_fingerprints(group)
        entry = {"split": split, "n_questions": prints.pop("n"), "version": "unknown", "match": "none", **prints}
        for version, info in POPE_FILE_VERSIONS.items():
            known = info["splits"].get(split)
            if known is not None and prints["exact"] == known[1]:
                entry.update(version=version, match="exact")
                break
            if known is not None and prints["questions"] == known[2] and entry["match"] == "none":
                entry.update(version=version, match="questions")
        found.append(entry)
    return found
