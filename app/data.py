"""Read-only access to a runs directory: the runs, their files, and the images and annotations they point at.

Nothing here imports Streamlit, so every reader is testable alone. Bad data never crashes a page: scanning
collects problems as messages, and the per-file readers raise :class:`InputDataError` naming the file and what
is wrong, which the pages show. Run directories are found at any depth inside the runs directory (``halluc demo``
nests them as ``<system>__<images>/<job>``; a run's id is its path relative to the runs directory), but never
inside another run, and symlinks that lead outside are refused. A manifest records absolute paths of images and
COCO annotations; a file is shown only from inside the runs directory or the dataset folders the manifest records
(its ``image_dir`` and the folders of its COCO files). When such a file is missing (runs copied to another
machine, test fixtures) a file of the same name is looked up in ``<run>/assets/`` and then ``<runs dir>/assets/``
(see app/README.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from halluc.errors import ConfigError, InputDataError
from halluc.records import load_records
from halluc.runs import MANIFEST, METRICS, SAMPLES, read_json, resume_command, run_status

__all__ = [
    "ASSETS",
    "CHAIR_HEADLINE",
    "CHAIR_KEYS",
    "HEADLINE",
    "POPE_KEYS",
    "PROTOCOL_SUMMARY",
    "RUNS_ENV",
    "Run",
    "Scan",
    "chair_details",
    "dataset_roots",
    "gt_boxes",
    "headline",
    "intervention_label",
    "intervention_strength",
    "locate",
    "ordered",
    "protocol_summaries",
    "read_jsonl",
    "run_file",
    "runs_root",
    "samples",
    "scan_runs",
]

RUNS_ENV = "HALLUC_RUNS_DIR"
ASSETS = "assets"
CHAIR_KEYS = (  # as benchmarks.chair writes them
    "CHAIR_s", "CHAIR_i", "CHAIR_i_distinct", "recall", "precision", "f1", "avg_len", "mentions_per_caption",
    "degenerate_share",
)  # fmt: skip
POPE_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")  # per split, as benchmarks.pope writes them
# The CHAIR columns of the dashboard's runs and compare tables (a suite cell: benchmarks.suite.SUITE_CHAIR_METRICS)
CHAIR_HEADLINE = ("CHAIR_s", "CHAIR_i", "CHAIR_i_distinct", "recall", "f1", "degenerate_share")
# MME's score out of 800 and AMBER's generative figures and discriminative F1 (metric key -> column name)
QA_HEADLINE = {"mme": {"total_score": "MME score"},
               "amber": {"chair": "AMBER CHAIR", "cover": "AMBER Cover", "hal": "AMBER Hal", "cog": "AMBER Cog",
                         "discriminative_f1": "AMBER F1"}}  # fmt: skip
HEADLINE = (
    *CHAIR_HEADLINE,
    "POPE accuracy",
    "POPE f1",
    "POPE yes_ratio",
    *(c for h in QA_HEADLINE.values() for c in h.values()),
)
PROTOCOL_SUMMARY = "protocol_summary.json"  # benchmarks.protocols.SUMMARY_FILE (not imported: it loads CHAIR/POPE)


def runs_root() -> Path:
    """The runs directory the dashboard serves: ``$HALLUC_RUNS_DIR`` (set by ``halluc dashboard``) or ./runs."""
    return Path(os.environ.get(RUNS_ENV, "runs")).resolve()


def _inside(path: Path, base: Path) -> bool:
    return path.resolve().is_relative_to(base.resolve())


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of a JSONL file plus problem messages (:mod:`halluc.records`'s policy, reported instead of raised).

    A torn last line (the writer may still be busy) is skipped with a message; a bad line before it is an error
    naming file and line, reported as the one message with no records.
    """
    try:
        records, torn = load_records(path)
    except InputDataError as exc:
        return [], [str(exc)]
    return records, [] if torn is None else [torn]


@dataclass(frozen=True)
class Run:
    """One run directory as the dashboard sees it: manifest, metrics (None until scored) and readable problems."""

    id: str
    path: Path
    manifest: dict[str, Any]
    metrics: dict[str, Any] | None
    n_samples: int
    problems: tuple[str, ...] = ()

    @property
    def job(self) -> str:
        return str(self.manifest.get("job", "?"))

    @property
    def status(self) -> str:
        """finished, failed, running (its writer is alive) or interrupted (its writer died), from the run's lock."""
        return run_status(self.path, self.manifest)

    @property
    def resume_command(self) -> str | None:
        """The command that continues this run (its recorded command plus --resume)."""
        return resume_command(self.path, self.manifest)

    @property
    def model(self) -> str:
        """The model's last path component (local paths) or hub id."""
        model = str(self.manifest.get("model") or "?")
        return Path(model).name if Path(model).is_absolute() else model

    @property
    def dataset(self) -> str:
        return str((self.manifest.get("images") or {}).get("name", "?"))

    @property
    def n_requests(self) -> int | None:
        value = self.manifest.get("n_requests")
        return value if isinstance(value, int) else None

    @property
    def intervention(self) -> str:
        return intervention_label(self.manifest.get("intervention"))

    @property
    def label(self) -> str:
        """Short human name used in pickers and chart legends."""
        return f"{self.id} ({self.job}, {self.intervention})"


@dataclass(frozen=True)
class Scan:
    """The runs found under a root, newest first, and a message per directory that could not be read."""

    root: Path
    runs: tuple[Run, ...]
    problems: tuple[str, ...]

    def by_id(self, run_id: str) -> Run:
        """The run called ``run_id``; ConfigError listing valid ids otherwise (e.g. a stale ?run= link)."""
        for run in self.runs:
            if run.id == run_id:
                return run
        valid = ", ".join(r.id for r in self.runs) or "none"
        raise ConfigError(f"no run {run_id!r} in {self.root}; valid runs: {valid}")

    def with_job(self, job: str) -> list[Run]:
        return [run for run in self.runs if run.job == job]

    def with_file(self, name: str) -> list[Run]:
        """Runs holding the artefact ``name`` (e.g. heads.json)."""
        return [run for run in self.runs if (run.path / name).is_file()]


def _count_samples(path: Path) -> int:
    """Complete records in samples.jsonl and any per-process shard files (cheap newline count)."""
    files = [path / SAMPLES, *path.glob("samples.*.jsonl")]
    return sum(file.read_bytes().count(b"\n") for file in files if file.is_file())


def _load_run(path: Path, run_id: str | None = None) -> Run:
    """Read one run directory; raises InputDataError when its manifest is unusable."""
    manifest = read_json(run_file(path, MANIFEST))
    if not isinstance(manifest, dict):
        raise InputDataError(f"{path / MANIFEST} must hold a JSON object, got {type(manifest).__name__}")
    problems: list[str] = []
    metrics = None
    if (path / METRICS).exists():
        try:
            metrics = read_json(run_file(path, METRICS))
        except InputDataError as exc:
            problems.append(str(exc))
        if metrics is not None and not isinstance(metrics, dict):
            problems.append(f"{path / METRICS} must hold a JSON object; metrics ignored")
            metrics = None
    return Run(run_id or path.name, path, manifest, metrics, _count_samples(path), tuple(problems))


_MAX_DEPTH = 4  # <runs>/<demo>/<system>__<images>/<job> and one more level


def _scan_dir(root: Path, folder: Path, depth: int, runs: list[Run], problems: list[str]) -> None:
    """Collect the runs in ``folder`` and, below folders that are not runs, deeper ones."""
    for child in sorted(folder.iterdir()):
        if not child.is_dir() or child.name.startswith(".") or child.name == ASSETS:
            continue
        name = child.relative_to(root).as_posix()
        if not _inside(child, root):
            problems.append(f"{name}: skipped, it links outside {root}")
        elif (child / MANIFEST).exists():
            try:
                runs.append(_load_run(child, name))
            except InputDataError as exc:
                problems.append(f"{name}: {exc}")
        elif (child / SAMPLES).exists():
            problems.append(f"{name}: has {SAMPLES} but no {MANIFEST}; not shown")
        elif depth < _MAX_DEPTH:
            _scan_dir(root, child, depth + 1, runs, problems)


def scan_runs(root: Path) -> Scan:
    """Every run inside ``root`` (nested folders included), newest first; unreadable ones become messages."""
    root = Path(root).resolve()
    if not root.is_dir():
        return Scan(root, (), (f"runs directory {root} does not exist",))
    runs: list[Run] = []
    problems: list[str] = []
    _scan_dir(root, root, 1, runs, problems)
    runs.sort(key=lambda r: str(r.manifest.get("started_at", "")), reverse=True)
    return Scan(root, tuple(runs), tuple(problems))


def protocol_summaries(scan: Scan) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(folder id, content) of the protocol_summary.json beside each protocol's split runs (mean ± std over splits,
    as ``halluc chair --protocol`` writes it), and a message per unreadable one."""
    found, problems = [], []
    for folder in dict.fromkeys(run.path.parent for run in scan.runs):
        path = folder / PROTOCOL_SUMMARY
        if not path.is_file() or not _inside(path, scan.root):
            continue
        name = folder.relative_to(scan.root).as_posix()
        try:
            summary = read_json(path)
        except InputDataError as exc:
            problems.append(str(exc))
            continue
        metrics = summary.get("metrics") if isinstance(summary, dict) else None
        if not isinstance(metrics, dict) or not all(isinstance(v, dict) and "mean" in v for v in metrics.values()):
            problems.append(f"{path}: no 'metrics' of {{'mean', 'std', 'values'}} objects; not shown")
            continue
        found.append((name, summary))
    return found, problems


def run_file(run: Run | Path, name: str) -> Path:
    """Path of the file ``name`` in a run; refuses names or symlinks that lead outside the run directory."""
    base = run.path if isinstance(run, Run) else Path(run)
    path = base / name
    if not _inside(path, base):
        raise InputDataError(f"{path} leads outside its run directory {base}; refusing to read it")
    return path


def samples(run: Run) -> tuple[list[dict[str, Any]], list[str]]:
    """The run's sample records (main file then shard files) and a message per unreadable line."""
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    for file in [run_file(run, SAMPLES), *sorted(run.path.glob("samples.*.jsonl"))]:
        if file.is_file():
            got, bad = read_jsonl(file)
            records.extend(got)
            problems.extend(bad)
    return records, problems


def chair_details(run: Run) -> dict[int, dict[str, Any]] | None:
    """Per-caption CHAIR details by image id (None before scoring), as ``benchmarks.chair`` writes them."""
    path = run_file(run, "chair_details.json")
    if not path.exists():
        return None
    data = read_json(path)
    if not isinstance(data, list) or not all(isinstance(d, dict) and "image_id" in d for d in data):
        raise InputDataError(f"{path} must hold a JSON array of objects with an 'image_id'")
    return {int(d["image_id"]): d for d in data}


def dataset_roots(run: Run) -> list[Path]:
    """The dataset folders a run's manifest records: its image folder and the folders of its COCO files."""
    images = run.manifest.get("images")
    if not isinstance(images, dict):
        return []
    roots = [Path(str(images["image_dir"])).expanduser()] if images.get("image_dir") else []
    roots += [Path(str(images[key])).expanduser().parent for key in ("instances", "captions") if images.get(key)]
    return roots


def locate(run: Run, root: Path, recorded: str | Path | None) -> Path | None:
    """The file a manifest or sample records, if it lies inside the runs folder or a dataset folder the manifest
    records; else a same-named file in <run>/assets/ or <root>/assets/; else None."""
    if not recorded:
        return None
    path = Path(recorded).expanduser()
    if path.is_file() and any(_inside(path, base) for base in [Path(root), *dataset_roots(run)]):
        return path
    for base in (run.path / ASSETS, Path(root) / ASSETS):
        candidate = base / path.name
        if candidate.is_file() and _inside(candidate, base):
            return candidate
    return None


def gt_boxes(instances: Path) -> dict[int, list[tuple[str, tuple[float, float, float, float]]]]:
    """Ground-truth boxes per image id from a COCO instances file: (category name, (x, y, w, h))."""
    data = read_json(instances)
    try:
        names = {cat["id"]: cat["name"] for cat in data["categories"]}
        boxes: dict[int, list[tuple[str, tuple[float, float, float, float]]]] = {}
        for ann in data["annotations"]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes.setdefault(int(ann["image_id"]), []).append((names[ann["category_id"]], (x, y, w, h)))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputDataError(f"{instances} is not a COCO instances file ({exc!r})") from None
    return boxes


def intervention_label(spec: Any) -> str:
    """Readable name of a manifest's intervention: ``none``, ``vhr(alpha=2.0, layers=default)``, parts joined by +."""
    if not spec:
        return "none"
    if isinstance(spec, list):
        return "+".join(intervention_label(part) for part in spec)
    if isinstance(spec, dict):
        if isinstance(spec.get("parts"), list):  # interventions.Composite.to_dict()
            return intervention_label(spec["parts"])
        params = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name")
        return f"{spec.get('name', '?')}({params})" if params else str(spec.get("name", "?"))
    return str(spec)


def intervention_strength(spec: Any) -> tuple[str, float | None]:
    """(method, strength) for trade-off plots: ``alpha`` (or ``strength``), else the first numeric setting; none = 0."""
    if not spec:
        return "none", 0.0
    if isinstance(spec, dict) and not isinstance(spec.get("parts"), list):
        numbers = {k: v for k, v in spec.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        key = next((k for k in ("alpha", "strength") if k in numbers), next(iter(numbers), None))
        return str(spec.get("name", "?")), float(numbers[key]) if key is not None else None
    return intervention_label(spec), None


def ordered(names: Iterable[str], first: Sequence[str]) -> list[str]:
    """``names`` with those listed in ``first`` leading, in that order, and the others sorted after them."""
    return sorted(names, key=lambda n: (n not in first, first.index(n) if n in first else 0, n))


def headline(run: Run) -> dict[str, float]:
    """Key metrics for the runs table (names in ``HEADLINE``): CHAIR's, POPE's means over its splits, MME's or
    AMBER's."""
    metrics = run.metrics or {}
    if run.job in QA_HEADLINE:
        picked = {name: metrics.get(key) for key, name in QA_HEADLINE[run.job].items()}
    elif run.job == "pope":
        mean = metrics.get("mean") if isinstance(metrics.get("mean"), dict) else {}
        picked = {f"POPE {k}": mean.get(k) for k in ("accuracy", "f1", "yes_ratio")}
    else:
        picked = {k: metrics.get(k) for k in CHAIR_HEADLINE}
    return {k: float(v) for k, v in picked.items() if isinstance(v, int | float)}
