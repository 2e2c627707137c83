"""Paired statistics of two systems scored on the same samples: each metric's difference with a bootstrap CI and a
paired test (``halluc compare``, the dashboard's compare page, scripts/measure_interventions.py).

Every metric is a ratio of sums of per-sample counts: CHAIR's over captions as :func:`benchmarks.chair.chair_metrics`
aggregates them (:data:`RATIOS`), POPE's over a split's questions as :func:`benchmarks.pope.pope_metrics` does
(:data:`POPE_RATIOS`; "mean" is the mean over splits). So one rule gives a metric on any resample of the shared
samples, and a difference B - A gets its percentile 95% CI from resampling the samples, the same ones for both runs
(:func:`bootstrap_by_image`): images, each with all its samples: its caption for CHAIR, all its questions for
POPE (an image's questions are not independent: resampling single questions gave intervals too narrow; the "mean"
rows resample each image with its questions of every split). Paired tests, two-sided:

* CHAIR_s is the share of a binary outcome per image (the caption hallucinates): exact McNemar test, a binomial
  test of the discordant pairs (``scipy.stats.binomtest``). POPE accuracy, also binary per question, takes the
  permutation test below instead, since McNemar assumes independent questions; only when no run names the
  questions' images (each question then its own unit, with a warning) does accuracy get McNemar.
* The other metrics: a paired permutation test of the metric itself (each image's two outputs swapped at random,
  exact when 2**n <= resamples; ``scipy.stats.permutation_test``'s rule, vectorised), not Wilcoxon signed-rank on
  per-image hallucinated-mention counts, which tests another quantity: CHAIR_i divides by all mentions, so a method
  that only shortens captions lowers the per-image counts (a Wilcoxon "effect") with CHAIR_i unchanged, and
  Wilcoxon drops the images whose counts tie, most of them.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from halluc.errors import ConfigError, InputDataError
from halluc.runs import RunStore, read_json

__all__ = [
    "ASPECTS",
    "POPE_RATIOS",
    "RATIOS",
    "Comparison",
    "Interval",
    "MetricDifference",
    "PairedCounts",
    "answer_counts",
    "bootstrap_by_image",
    "caption_counts",
    "compare_runs",
    "manifest_differences",
    "paired_difference",
]

# metric -> (numerator, denominator) of the per-caption counts (caption_counts) it sums
RATIOS: dict[str, tuple[str, str]] = {
    "CHAIR_s": ("hallucinated_caption", "captions"),
    "CHAIR_i": ("hallucinated", "mentions"),
    "CHAIR_i_distinct": ("distinct_hallucinated", "distinct"),
    "recall": ("covered", "gt"),
}
# metric -> (numerator, denominator) of the per-question counts (answer_counts) it sums within a split
POPE_RATIOS: dict[str, tuple[str, str]] = {
    "accuracy": ("correct", "parsed"),
    "precision": ("tp", "said_yes"),
    "recall": ("tp", "positive"),
    "f1": ("twice_tp", "f1_denominator"),
    "yes_ratio": ("said_yes", "parsed"),
}
_BINARY = {"CHAIR_s": "hallucinated_caption", "accuracy": "correct"}  # McNemar-tested metrics -> their outcome
_DETAILS, _SCORED, _QUESTIONS = "chair_details.json", "pope_scored.json", "pope_questions.json"
_MIN_RESAMPLES = 100


# ----- bootstrap ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap confidence interval (NaN bounds when it cannot be formed)."""

    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        """JSON-ready values (NaN written as None)."""
        return {k: (None if v is None or math.isnan(v) else v) for k, v in asdict(self).items()}

    @property
    def below_zero(self) -> bool:
        """True when the whole interval is below 0."""
        return bool(self.high < 0)

    @property
    def above_zero(self) -> bool:
        """True when the whole interval is above 0."""
        return bool(self.low > 0)


def bootstrap_by_image(
    n_groups: int,
    statistic: Callable[[np.ndarray], Any],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    batched: bool = False,
) -> Interval:
    """Percentile bootstrap CI of ``statistic(indices)``, resampling the ``n_groups`` images with replacement.

    Images, not mentions or tokens, are the independent units; ``statistic`` receives an array of image indices
    (repeats allowed), or with ``batched`` a [resamples, n_groups] array and returns one value per row (same
    resamples, faster). Resamples where the statistic is undefined (NaN) are left out of the percentiles.
    """
    indices = np.arange(n_groups)
    estimate = (float(statistic(indices[None])[0]) if batched else float(statistic(indices))) if n_groups else math.nan
    if n_groups < 2 or math.isnan(estimate):
        return Interval(estimate, math.nan, math.nan)

    def resampled(sample: np.ndarray, axis: int = -1) -> Any:
        rows = np.asarray(sample, dtype=int)
        return statistic(rows) if batched else float(statistic(rows))

    with warnings.catch_warnings():  # a constant statistic (e.g. no variation in a tiny sample) is not an error
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (indices,),
            resampled,
            vectorized=batched,
            batch=max(1, 2_000_000 // n_groups) if batched else None,  # index rows of ~16 MB at a time
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    if math.isnan(low) or math.isnan(high):
        tail = (1 - confidence) / 2 * 100
        low, high = np.nanpercentile(result.bootstrap_distribution, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high))


# ----- per-sample counts and paired tests ---------------------------------------------------------------------------
def caption_counts(detail: Mapping) -> dict[str, int]:
    """The counts CHAIR_s, CHAIR_i, distinct CHAIR_i and recall sum, from one ``chair_details.json`` record."""
    mentions = detail["mentions"]
    generated = {m["category"] for m in mentions}
    hallucinated = sum(bool(m["hallucinated"]) for m in mentions)
    return {
        "captions": 1,
        "hallucinated_caption": int(hallucinated > 0),
        "mentions": len(mentions),
        "hallucinated": hallucinated,
        "distinct": len(generated),
        "distinct_hallucinated": len({m["category"] for m in mentions if m["hallucinated"]}),
        "gt": len(detail["gt_objects"]),
        "covered": len(generated & set(detail["gt_objects"])),
    }


def answer_counts(record: Mapping) -> dict[str, int]:
    """The counts POPE's metrics sum, from one ``pope_scored.json`` record; an unparsed answer counts in none."""
    prediction, label = record["prediction"], bool(record["label"])
    parsed = prediction is not None
    said_yes, said_no = parsed and bool(prediction), parsed and not prediction
    tp, fp, fn = int(said_yes and label), int(said_yes and not label), int(said_no and label)
    return {"parsed": int(parsed), "correct": int(parsed and prediction == label), "tp": tp, "said_yes": tp + fp,
            "positive": tp + fn, "twice_tp": 2 * tp, "f1_denominator": 2 * tp + fp + fn}  # fmt: skip


def _ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """top / bottom elementwise, NaN where bottom is 0 (the metric is undefined there)."""
    return np.divide(top, bottom, out=np.full(np.shape(bottom), np.nan), where=np.asarray(bottom) > 0)


@dataclass(frozen=True)
class PairedCounts:
    """Per-sample counts of runs A and B on the same samples (``table``: A's rows, then B's in the same order), each
    sample's stratum (POPE split) and cluster: its image, the unit resampled by the bootstrap and swapped by the
    permutation test, since an image's POPE questions are not independent (a CHAIR caption is its own cluster)."""

    columns: tuple[str, ...]
    table: np.ndarray  # [2 * n_samples, n_columns]
    strata: np.ndarray  # [n_samples] stratum index of each sample
    clusters: np.ndarray  # [n_samples] cluster index of each sample, 0 .. n_clusters - 1
    n_strata: int = 1

    @classmethod
    def build(
        cls,
        a: Sequence[Mapping[str, int]],
        b: Sequence[Mapping[str, int]],
        strata: Sequence[int] | None = None,
        clusters: Sequence[Any] | None = None,
    ) -> PairedCounts:
        """From the count dicts of A and B, sample i of each describing the same sample (stratum ``strata[i]``,
        cluster ``clusters[i]``: any hashable label; by default every sample is its own cluster)."""
        if len(a) != len(b):
            raise InputDataError(f"paired counts need the same samples in both runs; got {len(a)} and {len(b)}")
        for name, labels in (("strata", strata), ("clusters", clusters)):
            if labels is not None and len(labels) != len(a):
                raise InputDataError(f"paired counts need one of {name} per sample; got {len(labels)} for {len(a)}")
        columns = tuple(a[0]) if a else ()
        table = np.array([[c[k] for k in columns] for c in (*a, *b)], dtype=float).reshape(-1, len(columns))
        strata = np.zeros(len(a), dtype=int) if strata is None else np.asarray(strata, dtype=int)
        labels = list(range(len(a))) if clusters is None else list(clusters)
        index = {label: i for i, label in enumerate(dict.fromkeys(labels))}
        return cls(columns, table, strata, np.array([index[label] for label in labels], dtype=int),
                   int(strata.max(initial=0)) + 1)  # fmt: skip

    @property
    def n(self) -> int:
        """Shared samples."""
        return len(self.table) // 2

    @property
    def n_clusters(self) -> int:
        """Clusters (images) the samples come from."""
        return int(self.clusters.max(initial=-1)) + 1

    @functools.cached_property
    def sums(self) -> np.ndarray:
        """Counts summed per run, cluster and stratum: ``[2, n_clusters, n_strata, n_columns]``."""
        out = np.zeros((2, self.n_clusters, self.n_strata, len(self.columns)))
        for side in (0, 1):
            np.add.at(out[side], (self.clusters, self.strata), self.table[side * self.n : (side + 1) * self.n])
        return out

    def _column(self, side: int, name: str) -> np.ndarray:
        """One count of one run per cluster and stratum: ``[n_clusters, n_strata]``."""
        return self.sums[side, :, :, self.columns.index(name)]

    def metric(self, side: int, rows: np.ndarray, top: str, bottom: str) -> np.ndarray:
        """Run ``side``'s (0: A, 1: B) mean over strata of sum(top) / sum(bottom) over the clusters ``rows``
        ([..., k] cluster indices, repeats allowed; NaN where a sum is 0)."""
        num = self._column(side, top)[rows].sum(axis=-2)  # [..., n_strata]
        den = self._column(side, bottom)[rows].sum(axis=-2)
        return _ratio(num, den).mean(axis=-1)

    def values(self, top: str, bottom: str) -> tuple[float, float]:
        """The metric of A and of B on all the samples."""
        every = np.arange(self.n_clusters)
        return float(self.metric(0, every, top, bottom)), float(self.metric(1, every, top, bottom))

    def difference(self, top: str, bottom: str, *, n_resamples: int = 2000, seed: int = 0) -> Interval:
        """B - A with its bootstrap CI, both runs resampled by the same clusters."""
        return bootstrap_by_image(
            self.n_clusters, lambda rows: self.metric(1, rows, top, bottom) - self.metric(0, rows, top, bottom),
            n_resamples=n_resamples, seed=seed, batched=True,
        )  # fmt: skip

    def mcnemar(self, outcome: str, *, within: str | None = None) -> float:
        """Exact McNemar p-value of the binary ``outcome`` (on the samples where ``within`` is 1 in both runs);
        it assumes independent samples, so it is meant for one sample per cluster."""
        a, b = self.table[:, self.columns.index(outcome)].reshape(2, -1) > 0
        if within is not None:
            both = (self.table[:, self.columns.index(within)].reshape(2, -1) > 0).all(axis=0)
            a, b = a[both], b[both]
        only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
        return float(stats.binomtest(only_b, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0

    def permutation(self, top: str, bottom: str, *, n_resamples: int = 2000, seed: int = 0) -> float:
        """Two-sided p-value of B - A when each cluster's A and B outputs are swapped at random (exact when
        2**n_clusters <= ``n_resamples``; NaN when B - A is undefined), with scipy.stats.permutation_test's
        p-value rule.

        Vectorised here: scipy's paired ("samples") mode loops over the samples in Python (measured: an 8,910-question
        POPE comparison took 26 s of CPU with it, 10 s without); tests/test_compare.py checks the two agree."""
        n = self.n_clusters
        (top_a, top_b), (bottom_a, bottom_b) = (
            (self._column(0, c), self._column(1, c)) for c in (top, bottom)
        )  # each [n_clusters, n_strata]
        moved_top, moved_bottom = top_a - top_b, bottom_a - bottom_b

        def statistic(swaps: np.ndarray) -> np.ndarray:  # swaps: [resamples, n], 1 = A and B exchanged
            shift_top, shift_bottom = swaps @ moved_top, swaps @ moved_bottom  # [resamples, n_strata]
            b = _ratio(top_b.sum(axis=0) + shift_top, bottom_b.sum(axis=0) + shift_bottom)
            a = _ratio(top_a.sum(axis=0) - shift_top, bottom_a.sum(axis=0) - shift_bottom)
            return b.mean(axis=-1) - a.mean(axis=-1)

        observed = float(statistic(np.zeros((1, n)))[0])
        if math.isnan(observed):
            return math.nan
        exact = 2**n <= n_resamples
        if exact:
            null = statistic(np.array(list(itertools.product((0.0, 1.0), repeat=n))))
        else:
            rng, chunk = np.random.default_rng(seed), max(1, 2_000_000 // n)
            null = np.concatenate([
                statistic((rng.random((min(chunk, n_resamples - k), n)) < 0.5).astype(float))
                for k in range(0, n_resamples, chunk)
            ])  # fmt: skip
        tolerance, extra = 1e-12, 0 if exact else 1  # a random test counts the observed arrangement too
        greater = (np.sum(null >= observed - tolerance) + extra) / (len(null) + extra)
        less = (np.sum(null <= observed + tolerance) + extra) / (len(null) + extra)
        return float(min(1.0, 2 * min(greater, less)))

    def subset(self, stratum: int) -> PairedCounts:
        """The samples of one stratum alone, in their clusters."""
        keep = self.strata == stratum
        table = np.concatenate([self.table[: self.n][keep], self.table[self.n :][keep]])
        clusters = np.unique(self.clusters[keep], return_inverse=True)[1]
        return PairedCounts(self.columns, table, np.zeros(int(keep.sum()), dtype=int), clusters)


def paired_difference(
    baseline: Sequence[Mapping], system: Sequence[Mapping], metric: str, *, n_resamples: int = 2000, seed: int = 0
) -> Interval:
    """``metric`` of ``system`` minus that of ``baseline`` (chair_details records of the same images, in the same
    order), with a 95% bootstrap CI resampling images."""
    if metric not in RATIOS:
        raise InputDataError(f"no paired difference for {metric!r}; available: {', '.join(RATIOS)}")
    if [d["image_id"] for d in baseline] != [d["image_id"] for d in system]:
        raise InputDataError("paired difference needs the same images in the same order for both systems")
    paired = PairedCounts.build([caption_counts(d) for d in baseline], [caption_counts(d) for d in system])
    return paired.difference(*RATIOS[metric], n_resamples=n_resamples, seed=seed)


# ----- what must agree between runs --------------------------------------------------------------------------------
def _get(manifest: Mapping[str, Any], dotted: str) -> Any:
    value: Any = manifest
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _picker(*keys: str) -> Callable[[Mapping[str, Any]], str]:
    def pick(manifest: Mapping[str, Any]) -> str:
        values = {key: _get(manifest, key) for key in keys}
        return ", ".join(f"{k.split('.')[-1]}={json.dumps(v)}" for k, v in values.items() if v is not None) or "-"

    return pick


# What two runs' manifests should share for a difference to measure the method alone (the model may be the method).
ASPECTS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "model": _picker("model"),
    "image set": _picker("images.name", "images.n_images", "images.image_dir", "n_questions"),
    "prompt": _picker("prompt", "suffix"),
    "token budget": _picker("settings.max_new_tokens"),
    "protocol": _picker(
        "chair_mode", "strict", "settings.do_sample", "settings.num_beams", "settings.temperature", "seed"
    ),
}


def manifest_differences(manifests: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per aspect in which the runs' manifests (by run name) differ, naming each run's value."""
    lines = []
    for aspect, pick in ASPECTS.items():
        values = {name: pick(manifest) for name, manifest in manifests.items()}
        if len(set(values.values())) > 1:
            lines.append(f"{aspect}: " + "; ".join(f"{name}: {value}" for name, value in values.items()))
    return lines


# ----- comparing two run directories -------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricDifference:
    """One metric of runs A and B on their shared samples, B - A with its CI, and the paired test's p-value."""

    metric: str
    a: float
    b: float
    difference: Interval
    p_value: float
    test: str  # "mcnemar" or "permutation"

    def to_dict(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return None if math.isnan(v) else v

        return {"metric": self.metric, "a": clean(self.a), "b": clean(self.b), "difference": self.difference.to_dict(),
                "p_value": clean(self.p_value), "test": self.test}  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """Runs A and B compared on the samples both scored (images or questions) and what may make them incomparable."""

    job: str
    run_a: str
    run_b: str
    unit: str
    n_shared: int
    n_images: int  # the resampled units: one per shared CHAIR image, the images of the shared POPE questions
    n_only_a: int
    n_only_b: int
    warnings: tuple[str, ...]
    n_resamples: int
    seed: int
    rows: tuple[MetricDifference, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN written as None)."""
        return {
            **{k: v for k, v in asdict(self).items() if k not in ("rows", "warnings")},
            "warnings": list(self.warnings),
            "confidence": 0.95,
            "tests": {
                "mcnemar": "exact McNemar (binomial test of discordant pairs)",
                "permutation": "paired permutation test of the metric (A/B swapped per image)",
            },
            "metrics": [row.to_dict() for row in self.rows],
        }


def _manifest(path: Path) -> dict[str, Any]:
    if not Path(path).is_dir():
        raise InputDataError(f"run directory {str(path)!r} does not exist")
    if (Path(path) / "protocol_summary.json").exists() and not (Path(path) / "manifest.json").exists():
        raise InputDataError(
            f"{str(path)!r} holds a protocol's splits, not one run; compare two split directories (e.g. split1-seed0)"
        )
    manifest = RunStore.open(Path(path)).manifest
    if not isinstance(manifest, dict):
        raise InputDataError(f"{Path(path) / 'manifest.json'} must hold a JSON object")
    return manifest


def _artefact(path: Path, name: str, key: str) -> list[dict[str, Any]]:
    file = Path(path) / name
    if not file.is_file():
        raise InputDataError(
            f"run {str(path)!r} has no {name} (written when the run finishes scoring); finish or resume it first"
        )
    records = read_json(file)
    if not isinstance(records, list) or not all(isinstance(r, dict) and key in r for r in records):
        raise InputDataError(f"{file} must hold a JSON array of objects with a {key!r}")
    return records


def _chair_samples(path: Path) -> dict[Any, dict[str, Any]]:
    records = _artefact(path, _DETAILS, "image_id")
    try:
        return {int(r["image_id"]): {**r, "counts": caption_counts(r)} for r in records}
    except (KeyError, TypeError, ValueError) as exc:
        raise InputDataError(f"{Path(path) / _DETAILS} has a record without {exc} as chair scoring writes it") from None


def _pope_samples(path: Path) -> dict[Any, dict[str, Any]]:
    """Scored answers by (split, question id), with the question's image and text when pope_questions.json has it."""
    listed = _artefact(path, _QUESTIONS, "question_id") if (Path(path) / _QUESTIONS).is_file() else []
    asked = {(str(q.get("split") or "all"), q["question_id"]): q for q in listed}
    samples: dict[Any, dict[str, Any]] = {}
    try:
        for r in _artefact(path, _SCORED, "question_id"):
            key = (str(r.get("split") or "all"), int(r["question_id"]))
            if key in samples:
                raise InputDataError(f"{Path(path) / _SCORED} scores question {key[0]}/{key[1]} twice")
            question = asked.get(key, {})
            samples[key] = {**r, "asked": (question.get("image"), question.get("text")), "counts": answer_counts(r)}
    except (KeyError, TypeError, ValueError) as exc:
        raise InputDataError(f"{Path(path) / _SCORED} has a record without {exc} as POPE scoring writes it") from None
    return samples


# job -> (reader of its per-sample records by key, the samples' name, the metric names)
_JOBS: dict[str, tuple[Callable[[Path], dict[Any, dict[str, Any]]], str, tuple[str, ...]]] = {
    "chair": (_chair_samples, "images", tuple(RATIOS)),
    "pope": (_pope_samples, "questions", tuple(POPE_RATIOS)),
}


def _chosen(job: str, metrics: Sequence[str] | None) -> list[str]:
    valid = _JOBS[job][2]
    for name in metrics or ():
        if name not in valid:
            lowered = {v.lower(): v for v in valid}  # "chair_i" -> CHAIR_i
            close = difflib.get_close_matches(name.lower(), lowered, n=1)
            hint = f" (did you mean {lowered[close[0]]!r}?)" if close else ""
            raise ConfigError(f"unknown {job} metric {name!r}{hint}; choose from: {', '.join(valid)}")
    return [m for m in valid if not metrics or m in metrics]


def _content_checks(job: str, keys: Sequence[Any], a: Mapping, b: Mapping) -> list[str]:
    """Refuse POPE questions that differ between the runs; warn about CHAIR images with other ground truth."""
    if job == "pope":
        for key in keys:
            asked, labels = (a[key]["asked"], b[key]["asked"]), (bool(a[key]["label"]), bool(b[key]["label"]))
            known = None not in (asked[0][0], asked[1][0])  # both runs wrote pope_questions.json
            if (known and asked[0] != asked[1]) or labels[0] != labels[1]:
                raise InputDataError(
                    f"question {key[0]}/{key[1]} differs between the runs (A: {asked[0]}, label {labels[0]}; B: "
                    f"{asked[1]}, label {labels[1]}): they answered different POPE question files or label sets; "
                    "compare runs of the same questions and labels"
                )
        return []
    other = [key for key in keys if sorted(a[key]["gt_objects"]) != sorted(b[key]["gt_objects"])]
    if not other:
        return []
    return [f"{len(other)} of {len(keys)} shared images have other ground-truth objects in the two runs (e.g. image "
            f"{other[0]}): they were scored against different annotations"]  # fmt: skip


def compare_runs(
    run_a: Path, run_b: Path, *, metrics: Sequence[str] | None = None, n_resamples: int = 2000, seed: int = 0
) -> Comparison:
    """Each metric of two CHAIR (or two POPE) run directories on their shared samples, with B - A's bootstrap 95% CI
    and the paired test's p-value; ``metrics`` picks some (default: all)."""
    if n_resamples < _MIN_RESAMPLES:
        raise ConfigError(f"--resamples {n_resamples} is too few for a 95% interval; use at least {_MIN_RESAMPLES}")
    manifests = {"A": _manifest(run_a), "B": _manifest(run_b)}
    jobs = [str(m.get("job")) for m in manifests.values()]
    if jobs[0] != jobs[1] or jobs[0] not in _JOBS:
        raise InputDataError(
            f"halluc compare compares two CHAIR runs or two POPE runs; {run_a} is a {jobs[0]!r} run and {run_b} a "
            f"{jobs[1]!r} run"
        )
    job = jobs[0]
    names = _chosen(job, metrics)
    read, unit, _ = _JOBS[job]
    a, b = read(Path(run_a)), read(Path(run_b))
    shared = [key for key in a if key in b]  # in A's order: POPE's splits in file order
    if not shared:
        raise InputDataError(
            f"{run_a} ({len(a)} {unit}) and {run_b} ({len(b)} {unit}) share no {unit}; compare runs of the same {unit}"
        )
    notes = manifest_differences(manifests) + _content_checks(job, shared, a, b)
    rows: list[MetricDifference] = []
    if job == "chair":
        paired = PairedCounts.build([a[k]["counts"] for k in shared], [b[k]["counts"] for k in shared])
        rows = [_row(name, paired, RATIOS[name], _BINARY.get(name), n_resamples, seed) for name in names]
    else:
        splits = list(dict.fromkeys(key[0] for key in shared))
        images = [a[k]["asked"][0] or b[k]["asked"][0] for k in shared]
        if None in images:
            images = None
            notes.append(
                "resampling unit: no pope_questions.json names the questions' images, so questions are resampled "
                "as if independent and the intervals are too narrow"
            )
        paired = PairedCounts.build(
            [a[k]["counts"] for k in shared], [b[k]["counts"] for k in shared], [splits.index(k[0]) for k in shared],
            images,
        )  # fmt: skip
        groups = [(split, paired.subset(i)) for i, split in enumerate(splits)]
        for group, counts in groups + ([("mean", paired)] if len(splits) > 1 else []):
            rows += [_row(f"{group} {name}", counts, POPE_RATIOS[name], _BINARY.get(name), n_resamples, seed)
                     for name in names]  # fmt: skip
    return Comparison(
        job, str(run_a), str(run_b), unit, len(shared), paired.n_clusters, len(a) - len(shared),
        len(b) - len(shared), tuple(notes), n_resamples, seed, tuple(rows),
    )  # fmt: skip


def _row(
    name: str, paired: PairedCounts, ratio: tuple[str, str], outcome: str | None, n_resamples: int, seed: int
) -> MetricDifference:
    value_a, value_b = paired.values(*ratio)
    difference = paired.difference(*ratio, n_resamples=n_resamples, seed=seed)
    if outcome is not None and paired.n_clusters == paired.n:  # McNemar needs independent samples
        p_value = paired.mcnemar(outcome, within=None if outcome == "hallucinated_caption" else "parsed")
        return MetricDifference(name, value_a, value_b, difference, p_value, "mcnemar")
    p_value = paired.permutation(*ratio, n_resamples=n_resamples, seed=seed)
    return MetricDifference(name, value_a, value_b, difference, p_value, "permutation")
