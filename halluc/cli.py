"""The ``halluc`` command line: one thin subcommand per job; the work lives in the library.

This is the one core module allowed to import the higher layers (benchmarks, interventions, detectors), and it
does so lazily inside each command so ``halluc --help`` stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from halluc.errors import HallucError

__all__ = ["app", "main"]

app = typer.Typer(
    help="Measure and reduce object hallucination in vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
runs_app = typer.Typer(help="Browse the run store.", no_args_is_help=True)
world_app = typer.Typer(help="The embedded synthetic world (COCO format).", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(world_app, name="world")
console = Console()

# Options shared by every job, declared once so they read the same everywhere.
ModelOpt = Annotated[str, typer.Option("--model", help="Model id or local path; default: the shipped toy LLaVA.")]
InterventionOpt = Annotated[
    list[str] | None,
    typer.Option("--intervention", help="Intervention spec, e.g. 'vhr:alpha=2'; repeat to compose."),
]
ImagesOpt = Annotated[str, typer.Option("--images", help="toy:val, toy:shift, or a directory of images.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Run directory (default: runs/<job>-<timestamp>).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per generation batch.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (sampling, subsets).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, mps ...")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow code shipped with the model (off).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N images of the set.")]
IdsOpt = Annotated[Path | None, typer.Option("--image-ids", help="File of image ids to use, one per line.")]
AnnOpt = Annotated[Path | None, typer.Option("--annotations", help="COCO instances JSON of the images.")]
CapsOpt = Annotated[Path | None, typer.Option("--captions", help="COCO captions JSON (CHAIR ground truth).")]
RunsDirOpt = Annotated[Path, typer.Option("--runs", help="Directory holding run directories.")]


def _not_built(job: str, issue: str) -> None:
    console.print(f"[yellow]halluc {job}[/]: not built yet ({issue}); nothing was run.")
    raise typer.Exit(code=3)


def _load_model(model: str, device: str, dtype: str, trust_remote_code: bool):
    from halluc.defaults import default_model
    from halluc.models import load_lvlm

    return load_lvlm(model or default_model(), device=device, dtype=dtype, trust_remote_code=trust_remote_code)


def _intervention(specs: list[str] | None):
    """Parse repeated --intervention specs into one (composed) intervention, or None."""
    if not specs:
        return None
    from interventions import compose, parse_intervention

    return compose(*[parse_intervention(spec) for spec in specs])


def _out_dir(out: Path | None, job: str) -> Path:
    import datetime as dt

    return out or Path("runs") / f"{job}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


@app.command()
def chair(
    model: ModelOpt = "",
    intervention: InterventionOpt = None,
    images: ImagesOpt = "toy:val",
    annotations: AnnOpt = None,
    captions: CapsOpt = None,
    gt_file: Annotated[Path | None, typer.Option("--gt-file", help="Precomputed {image_id: [objects]} JSON.")] = None,
    image_ids: IdsOpt = None,
    limit: LimitOpt = None,
    prompt: Annotated[str, typer.Option("--prompt")] = "Please describe this image in detail.",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 512,
    corrected: Annotated[bool, typer.Option("--corrected", help="Fix the reference CHAIR quirks.")] = False,
    out: OutOpt = None,
    batch_size: BatchOpt = 16,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    resume: ResumeOpt = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Describe images and score the descriptions with CHAIR (CHAIR_s, CHAIR_i, recall, precision, F1)."""
    from benchmarks.jobs import run_chair
    from benchmarks.runner import GenerationSettings
    from halluc.imagesets import resolve_images

    image_set = resolve_images(images, instances=annotations, captions=captions, ids_file=image_ids, limit=limit)
    lvlm = _load_model(model, device, dtype, trust_remote_code)
    result = run_chair(
        lvlm,
        image_set,
        _out_dir(out, "chair"),
        settings=GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size),
        intervention=_intervention(intervention),
        prompt=prompt,
        gt_file=gt_file,
        mode="corrected" if corrected else "reference",
        seed=seed,
        resume=resume,
    )
    _report(result)


@app.command()
def pope(
    model: ModelOpt = "",
    intervention: InterventionOpt = None,
    images: ImagesOpt = "toy:val",
    annotations: AnnOpt = None,
    questions: Annotated[
        list[Path] | None, typer.Option("--questions", help="Official POPE question file(s); repeat per split.")
    ] = None,
    n_images: Annotated[int, typer.Option("--n-images", min=1, help="Images when building questions.")] = 500,
    strict: Annotated[bool, typer.Option("--strict", help="Count unparseable answers instead of 'yes'.")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 8,
    out: OutOpt = None,
    batch_size: BatchOpt = 32,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    resume: ResumeOpt = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Answer POPE yes/no object questions (random, popular, adversarial) and score them."""
    from benchmarks.jobs import run_pope
    from benchmarks.pope import load_questions
    from benchmarks.runner import GenerationSettings
    from halluc.imagesets import resolve_images

    image_set = resolve_images(images, instances=annotations)
    loaded = [q for path in questions for q in load_questions(path)] if questions else None
    lvlm = _load_model(model, device, dtype, trust_remote_code)
    result = run_pope(
        lvlm,
        image_set,
        _out_dir(out, "pope"),
        questions=loaded,
        n_images=n_images,
        settings=GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size),
        intervention=_intervention(intervention),
        strict=strict,
        seed=seed,
        resume=resume,
    )
    _report(result)


def _report(result) -> None:
    """Print where the run went, its headline metrics and the error count."""
    console.print(f"run: [bold]{result.store.path}[/]")
    console.print_json(json.dumps(result.metrics, default=str))
    if result.summary.errors:
        console.print(f"[yellow]{result.summary.errors} samples failed (error records in samples.jsonl)[/]")


def _demo_systems() -> dict[str, object]:
    """Baseline plus every registered intervention at its paper-default strength."""
    systems: dict[str, object] = {"baseline": None}
    try:
        from interventions import default_configs
    except ImportError:
        console.print("[yellow]interventions: not built yet; the demo runs the baseline only[/]")
        return systems
    systems.update(default_configs())
    return systems


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Directory for the demo's runs.")] = Path("runs/demo"),
    chair_images: Annotated[int, typer.Option("--chair-images", min=1)] = 100,
    pope_images: Annotated[int, typer.Option("--pope-images", min=1)] = 50,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "cpu",
) -> None:
    """Main job on the embedded default: baseline vs every intervention, CHAIR and POPE on toy val and shift."""
    from benchmarks.suite import run_suite

    lvlm = _load_model("", device, "auto", False)
    rows = run_suite(
        lvlm,
        _demo_systems(),
        ["toy:val", "toy:shift"],
        out,
        chair_images=chair_images,
        pope_images=pope_images,
        batch_size=batch_size,
    )
    table = Table("system", "images", "CHAIR_s", "CHAIR_i", "recall", "POPE rand", "POPE pop", "POPE adv", "POPE F1")
    for row in rows:
        f = row.flat()
        table.add_row(
            f["system"],
            f["images"],
            *(f"{100 * f[k]:.1f}" for k in ("CHAIR_s", "CHAIR_i", "recall")),
            *(f"{100 * f[f'pope_{s}_acc']:.1f}" for s in ("random", "popular", "adversarial")),
            f"{100 * f['pope_f1']:.1f}",
        )
    console.print(table)
    console.print(f"runs written under [bold]{out}[/]; browse them with: halluc dashboard --runs {out}")


@app.command()
def heads(model: ModelOpt = "", images: ImagesOpt = "toy:val", out: OutOpt = None) -> None:
    """Per-(layer, head) vision-aware head divergence and image-attention mass, with a heatmap."""
    _not_built("heads", "head analysis lands with the interventions issue")


@app.command()
def crosscheck(out: OutOpt = None) -> None:
    """Reference-free CrossCheck consistency ranking of several (model, intervention) systems."""
    _not_built("crosscheck", "lands with the detectors/CrossCheck issue")


@app.command()
def sentinel(out: OutOpt = None) -> None:
    """SENTINEL sentence-level, detector-validated preference-pair generation."""
    _not_built("sentinel", "lands with the SENTINEL issue")


@app.command()
def dpo(out: OutOpt = None) -> None:
    """Context-aware DPO training on SENTINEL pairs (extra: dpo)."""
    _not_built("dpo", "lands with the SENTINEL issue")


@app.command()
def dashboard(runs: RunsDirOpt = Path("runs"), port: int = 8501) -> None:
    """Streamlit dashboard over a runs directory, bound to 127.0.0.1."""
    _not_built("dashboard", "lands with the dashboard issue")


@world_app.command("build")
def world_build(
    split: Annotated[str, typer.Option("--split", help="train, val or shift.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (COCO files + images/<split>/).")],
    seed: SeedOpt = 0,
    image_size: Annotated[int, typer.Option("--image-size", min=32)] = 64,
) -> None:
    """Build one split of the synthetic world in exact COCO format."""
    from halluc.world import build_split

    paths = build_split(split, n, out, seed=seed, image_size=image_size)
    console.print(f"wrote {n} images: {paths.instances}, {paths.captions}, {paths.images}")


@runs_app.command("list")
def runs_list(runs: RunsDirOpt = Path("runs")) -> None:
    """Table of runs: job, model, intervention, images, status and key metrics."""
    from halluc.runs import list_runs

    table = Table("run", "job", "model", "intervention", "images", "status", "metrics")
    for run in list_runs(runs):
        m = run.manifest
        metrics = run.metrics() or {}
        headline = ", ".join(f"{k}={v:.3f}" for k, v in _headline(metrics).items())
        table.add_row(
            str(run.path.relative_to(runs)),
            str(m.get("job", "")),
            Path(str(m.get("model", ""))).name,
            str(m.get("intervention") or "none"),
            str((m.get("images") or {}).get("name", "")),
            str(m.get("status", "")),
            headline,
        )
    console.print(table)


@runs_app.command("show")
def runs_show(run: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """Manifest and metrics of one run."""
    from halluc.runs import RunStore

    store = RunStore.open(run)
    console.print_json(json.dumps({"manifest": store.manifest, "metrics": store.metrics()}, default=str))


def _headline(metrics: dict) -> dict[str, float]:
    keys = ("CHAIR_s", "CHAIR_i", "recall", "f1", "accuracy")
    return {k: float(metrics[k]) for k in keys if isinstance(metrics.get(k), int | float)}


def main() -> None:
    """Console entry point: user-facing errors become one line and exit status 2."""
    try:
        app()
    except HallucError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
