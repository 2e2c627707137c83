"""The ``halluc`` command line: one thin subcommand per job; the work lives in the library.

This is the one core module allowed to import the higher layers (benchmarks, interventions, detectors), and it
does so lazily inside each command so ``halluc --help`` stays instant.
"""

from __future__ import annotations

import errno
import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from halluc.defaults import DESCRIBE_PROMPT, default_model
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
BeamsOpt = Annotated[int, typer.Option("--num-beams", min=1, help="Beam search width (1: greedy).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, mps ...")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow code shipped with the model (off).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Use only the first N images of the set.")]
IdsOpt = Annotated[Path | None, typer.Option("--image-ids", help="File of image ids to use, one per line.")]
AnnOpt = Annotated[Path | None, typer.Option("--annotations", help="COCO instances JSON of the images.")]
CapsOpt = Annotated[Path | None, typer.Option("--captions", help="COCO captions JSON (CHAIR ground truth).")]
PromptOpt = Annotated[str, typer.Option("--prompt", help="Instruction given with each image.")]
RunsDirOpt = Annotated[Path, typer.Option("--runs", help="Directory holding run directories.")]
ProtocolOpt = Annotated[
    str | None,
    typer.Option(
        "--protocol",
        help="Named protocol (vhr: 5 random 500-image splits, pai: PAI's 500 images) fixing the image sample, prompt, "
        "max new tokens and decoding; it samples from --images (COCO val2014, or toy:val offline); one run per split "
        "under --out plus protocol_summary.json (mean ± std).",
    ),
]
SplitsOpt = Annotated[int | None, typer.Option("--splits", min=1, help="Run the protocol's first N splits (all).")]


def _print_table(table: Table) -> None:
    """Print a results table at least 120 columns wide, so it stays readable when piped (rich then assumes 80).

    A console of that width, since ``console.print(width=...)`` can only narrow the output below the console's width.
    """
    Console(width=max(console.width, 120)).print(table)


def _load_model(model: str, device: str, dtype: str, trust_remote_code: bool):
    from halluc.models import load_lvlm

    return load_lvlm(model or default_model(), device=device, dtype=dtype, trust_remote_code=trust_remote_code)


def _intervention(specs: list[str] | None, num_beams: int = 1):
    """Parse repeated --intervention specs into one (composed) intervention, or None; check it can decode so."""
    if not specs:
        return None
    from interventions import Composite, check_decoding, parse_intervention

    parsed = [parse_intervention(spec) for spec in specs]
    config = parsed[0] if len(parsed) == 1 else Composite(tuple(parsed))
    check_decoding(config, num_beams)
    return config


def _out_dir(out: Path | None, job: str) -> Path:
    import datetime as dt

    return out or Path("runs") / f"{job}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


@app.command()
def chair(
    ctx: typer.Context,
    model: ModelOpt = "",
    intervention: InterventionOpt = None,
    images: ImagesOpt = "toy:val",
    annotations: AnnOpt = None,
    captions: CapsOpt = None,
    gt_file: Annotated[Path | None, typer.Option("--gt-file", help="Precomputed {image_id: [objects]} JSON.")] = None,
    image_ids: IdsOpt = None,
    limit: LimitOpt = None,
    prompt: PromptOpt = DESCRIBE_PROMPT,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 512,
    corrected: Annotated[bool, typer.Option("--corrected", help="Fix the reference CHAIR quirks.")] = False,
    out: OutOpt = None,
    batch_size: BatchOpt = 16,
    num_beams: BeamsOpt = 1,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    resume: ResumeOpt = False,
    trust_remote_code: TrustOpt = False,
    protocol: ProtocolOpt = None,
    splits: SplitsOpt = None,
) -> None:
    """Describe images and score the descriptions with CHAIR (CHAIR_s, CHAIR_i, recall, precision, F1)."""
    from benchmarks.jobs import chair_ground_truth, run_chair
    from benchmarks.runner import GenerationSettings
    from halluc.imagesets import resolve_images
    from halluc.runs import RunStore

    if protocol is not None or splits is not None:
        return _chair_protocol(
            ctx, protocol, splits, model=model, intervention=intervention, images=images, annotations=annotations,
            captions=captions, gt_file=gt_file, corrected=corrected, out=out, batch_size=batch_size, device=device,
            dtype=dtype, resume=resume, trust_remote_code=trust_remote_code,
        )  # fmt: skip
    # every input is checked before the model loads: a typo must not cost a 7B model load
    image_set = resolve_images(images, instances=annotations, captions=captions, ids_file=image_ids, limit=limit)
    spec = _intervention(intervention, num_beams)
    mode = "corrected" if corrected else "reference"
    gt = chair_ground_truth(image_set, gt_file, mode)
    run_dir = _out_dir(out, "chair")
    RunStore.check_output(run_dir, resume=resume)
    lvlm = _load_model(model, device, dtype, trust_remote_code)
    result = run_chair(
        lvlm,
        image_set,
        run_dir,
        settings=GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, num_beams=num_beams),
        intervention=spec,
        prompt=prompt,
        gt_file=gt_file,
        mode=mode,
        seed=seed,
        resume=resume,
        ground_truth=gt,
    )
    _report(result)


def _explicit(ctx: typer.Context, options: dict[str, str]) -> dict[str, object]:
    """``{flag: value}`` of the options the user gave (command line or environment), not left at their defaults."""
    given = {}
    for flag, name in options.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            value = ctx.params[name]
            given[flag] = str(value) if isinstance(value, Path) else value
    return given


def _chair_protocol(
    ctx: typer.Context, name: str | None, splits: int | None, *, model: str, intervention: list[str] | None,
    images: str, annotations: Path | None, captions: Path | None, gt_file: Path | None, corrected: bool,
    out: Path | None, batch_size: int, device: str, dtype: str, resume: bool, trust_remote_code: bool,
) -> None:  # fmt: skip
    """``halluc chair --protocol``: check everything (conflicting options first), then run each split."""
    from dataclasses import replace

    from benchmarks.jobs import chair_ground_truth
    from benchmarks.protocols import check_conflicts, get_protocol, protocol_splits, run_chair_protocol, split_dir
    from halluc.errors import ConfigError
    from halluc.imagesets import resolve_images
    from halluc.runs import RunStore

    if name is None:
        raise ConfigError(f"--splits {splits} needs --protocol (e.g. --protocol vhr)")
    protocol = get_protocol(name)
    fixed = {"--prompt": "prompt", "--max-new-tokens": "max_new_tokens", "--num-beams": "num_beams",
             "--seed": "seed", "--limit": "limit", "--image-ids": "image_ids"}  # fmt: skip
    check_conflicts(protocol, _explicit(ctx, fixed))
    image_set = resolve_images(images, instances=annotations, captions=captions)
    chosen = protocol_splits(protocol, image_set, splits)
    spec = _intervention(intervention, protocol.num_beams)
    mode = "corrected" if corrected else "reference"
    sampled = tuple(sorted({i for _, split in chosen for i in split.image_ids}, key=str))
    gt = chair_ground_truth(replace(image_set, image_ids=sampled), gt_file, mode)
    run_dir = _out_dir(out, f"chair-{protocol.name}")
    for index, (seed, _) in enumerate(chosen):
        RunStore.check_output(split_dir(run_dir, index, seed), resume=resume)
    lvlm = _load_model(model, device, dtype, trust_remote_code)
    result = run_chair_protocol(
        lvlm, protocol, chosen, run_dir, gt, batch_size=batch_size, intervention=spec, mode=mode, gt_file=gt_file,
        resume=resume,
    )  # fmt: skip
    table = Table("metric", "mean", "std", *(f"seed {s}" for s, _ in chosen), title=f"protocol {protocol.name}")
    for key, row in result.summary.get("metrics", {}).items():
        std = "-" if row["std"] is None else f"{row['std']:.4f}"
        table.add_row(key, f"{row['mean']:.4f}", std, *(f"{v:.4f}" for v in row["values"]))
    _print_table(table)
    console.print(f"runs under [bold]{run_dir}[/]; summary: {result.path}")


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
    num_beams: BeamsOpt = 1,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    resume: ResumeOpt = False,
    trust_remote_code: TrustOpt = False,
    label_set: Annotated[
        list[Path] | None,
        typer.Option(
            "--label-set",
            help="Alternative labels in POPE's format, e.g. RePOPE's coco_repope_{split}.json: questions it leaves "
            "out are dropped; repeat per split.",
        ),
    ] = None,
) -> None:
    """Answer POPE yes/no object questions (random, popular, adversarial) and score them."""
    from benchmarks.jobs import pope_questions, run_pope
    from benchmarks.pope import load_questions
    from benchmarks.runner import GenerationSettings
    from halluc.imagesets import resolve_images
    from halluc.runs import RunStore

    image_set = resolve_images(images, instances=annotations)
    loaded = [q for path in questions for q in _labelled(path, load_questions(path))] if questions else None
    loaded, files = _pope_files(questions or [], loaded, label_set or [])
    checked = pope_questions(image_set, loaded, n_images=n_images, seed=seed)
    spec = _intervention(intervention, num_beams)
    run_dir = _out_dir(out, "pope")
    RunStore.check_output(run_dir, resume=resume)
    lvlm = _load_model(model, device, dtype, trust_remote_code)
    result = run_pope(
        lvlm,
        image_set,
        run_dir,
        questions=checked,
        n_images=n_images,
        settings=GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, num_beams=num_beams),
        intervention=spec,
        strict=strict,
        seed=seed,
        resume=resume,
        extra=files,
    )
    _report(result)


def _pope_files(paths: list[Path], loaded: list | None, label_set: list[Path]) -> tuple[list | None, dict]:
    """The questions (relabelled by ``label_set`` when given) and the manifest entry naming the question files,
    the official version each split matches and the label set's effect."""
    from benchmarks.outputs import sha256
    from benchmarks.pope import apply_label_set, load_questions
    from benchmarks.protocols import detect_pope_version
    from halluc.errors import ConfigError

    if loaded is None:
        if label_set:
            raise ConfigError("--label-set relabels question files: pass the POPE files it belongs to with --questions")
        return None, {}
    described = [{"path": str(p.resolve()), "sha256": sha256(p)} for p in [*paths, *label_set]]
    entry = {"question_files": described[: len(paths)], "question_versions": detect_pope_version(loaded)}
    if label_set:
        labels = [q for path in label_set for q in load_questions(path)]
        loaded, effect = apply_label_set(loaded, labels, name="--label-set")
        entry["label_set"] = {"files": described[len(paths) :], "versions": detect_pope_version(labels), **effect}
    for found in entry["question_versions"]:
        console.print(f"POPE {found['split']}: {found['n_questions']} questions, version {found['version']}")
    return loaded, entry


def _labelled(path: Path, questions: list) -> list:
    """The questions of one POPE file, refused when any lacks its yes/no label (scoring needs every one)."""
    from halluc.errors import InputDataError

    unlabelled = [q.question_id for q in questions if q.label is None]
    if unlabelled:
        raise InputDataError(
            f"{str(path)!r}: {len(unlabelled)} of {len(questions)} questions have no 'label' (yes/no), e.g. "
            f"question_id {unlabelled[:3]}; POPE scoring needs a labelled question file"
        )
    return questions


@app.command()
def mme(
    model: ModelOpt = "",
    intervention: InterventionOpt = None,
    images: ImagesOpt = "toy:val",
    limit: LimitOpt = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 8,
    out: OutOpt = None,
    batch_size: BatchOpt = 32,
    num_beams: BeamsOpt = 1,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    resume: ResumeOpt = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """MME-style existence/count/position/colour yes/no pairs on the embedded world (acc, acc+, score of 800)."""
    from benchmarks.qa_jobs import mme_set, run_mme
    from benchmarks.runner import GenerationSettings
    from halluc.imagesets import resolve_images
    from halluc.runs import RunStore

    image_set = resolve_images(images, limit=limit)
    questions = mme_set(image_set, seed)
    spec = _intervention(intervention, num_beams)
    run_dir = _out_dir(out, "mme")
    RunStore.check_output(run_dir, resume=resume)
    lvlm = _load_model(model, device, dtype, trust_remote_code)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, num_beams=num_beams)
    _report(run_mme(lvlm, image_set, run_dir, questions=questions, settings=settings, intervention=spec, seed=seed,
                    resume=resume))  # fmt: skip


@app.command()
def amber(
    model: ModelOpt = "",
    intervention: InterventionOpt = None,
    images: Annotated[
        str, typer.Option("--images", help="toy:val (AMBER-format set built from the world) or the AMBER images.")
    ] = "toy:val",
    amber_data: Annotated[
        Path | None, typer.Option("--amber-data", help="The official AMBER data/ folder (with real AMBER images).")
    ] = None,
    limit: LimitOpt = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="For the descriptions.")] = 512,
    answer_tokens: Annotated[int, typer.Option("--answer-tokens", min=1, help="For the yes/no answers.")] = 8,
    out: OutOpt = None,
    batch_size: BatchOpt = 16,
    num_beams: BeamsOpt = 1,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    resume: ResumeOpt = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """AMBER: describe images and answer its yes/no queries; scored as the official code does."""
    from benchmarks.amber import load_amber_data
    from benchmarks.qa_jobs import amber_requests, run_amber, world_amber_data
    from benchmarks.runner import GenerationSettings
    from halluc.errors import ConfigError
    from halluc.imagesets import resolve_images
    from halluc.runs import RunStore

    spec = _intervention(intervention, num_beams)
    run_dir = _out_dir(out, "amber")
    if amber_data is None:
        image_set = resolve_images(images, limit=limit)
        RunStore.check_output(run_dir, resume=resume)
        data, image_dir = world_amber_data(image_set, run_dir / "amber_data", seed), image_set.image_dir
        requests, described = amber_requests(data, image_dir), image_set.describe()
    else:
        if images.startswith("toy:"):
            raise ConfigError("--amber-data is the official set: pass its images folder with --images DIR")
        data, image_dir = load_amber_data(amber_data), Path(images)
        requests, described = amber_requests(data, image_dir, limit), {"name": "amber", "image_dir": images}
        RunStore.check_output(run_dir, resume=resume)
    lvlm = _load_model(model, device, dtype, trust_remote_code)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size, num_beams=num_beams)
    _report(run_amber(lvlm, data, requests, run_dir, settings=settings, answer_tokens=answer_tokens,
                      intervention=spec, seed=seed, resume=resume, extra={"images": described}))  # fmt: skip


def _report(result) -> None:
    """Print where the run went, its headline metrics and the error count."""
    console.print(f"run: [bold]{result.store.path}[/]")
    console.print_json(json.dumps(result.metrics, default=str))
    if result.summary.errors:
        console.print(f"[yellow]{result.summary.errors} samples failed (error records in samples.jsonl)[/]")


def _demo_systems() -> dict[str, object]:
    """Baseline plus every registered intervention at its paper-default strength."""
    from interventions import paper_defaults

    return {"baseline": None, **paper_defaults()}


def demo_tables(rows: list) -> list[Table]:
    """One table per image set, each within 80 columns: CHAIR (with the repetition checks) and POPE, in %."""
    from benchmarks.chair import degenerate_setting

    tables: dict[str, Table] = {}
    for row in rows:
        f = row.flat()
        if f["images"] not in tables:
            tables[f["images"]] = Table(
                "system", "CHs", "CHi", "CHi-d", "recall", "men/cap", "degen%", "POPE r/p/a", "F1",
                title=f"{f['images']}: CHAIR and POPE accuracy (r/p/a) in %",
                box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True,
            )  # fmt: skip
        tables[f["images"]].add_row(
            f["system"],
            *(f"{100 * f[k]:.1f}" for k in ("CHAIR_s", "CHAIR_i", "CHAIR_i_distinct", "recall")),
            f"{f['mentions_per_caption']:.1f}",
            f"{100 * f['degenerate_share']:.0f}" + ("!" if degenerate_setting(f) else ""),
            "/".join(f"{100 * f[f'pope_{s}_acc']:.1f}" for s in ("random", "popular", "adversarial")),
            f"{100 * f['pope_f1']:.1f}",
        )
    return list(tables.values())


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Directory for the demo's runs.")] = Path("runs/demo"),
    chair_images: Annotated[int, typer.Option("--chair-images", min=1)] = 100,
    pope_images: Annotated[int, typer.Option("--pope-images", min=1)] = 50,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "cpu",
) -> None:
    """Main job on the embedded default: baseline vs every intervention, CHAIR and POPE on toy val and shift."""
    from benchmarks.chair import REPETITION_LEGEND
    from benchmarks.suite import run_suite
    from halluc.runs import RunStore

    RunStore.check_output(out, resume=True)  # before the model loads: an unwritable --out fails at once
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
    for table in demo_tables(rows):
        console.print(table)
    console.print(REPETITION_LEGEND)
    console.print(f"runs written under [bold]{out}[/]; browse them with: halluc dashboard --runs {out}")


@app.command()
def heads(
    model: ModelOpt = "",
    images: ImagesOpt = "toy:val",
    annotations: AnnOpt = None,
    image_ids: IdsOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Number of images to average over.")] = 32,
    prompt: PromptOpt = DESCRIBE_PROMPT,
    out: OutOpt = None,
    batch_size: BatchOpt = 8,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    trust_remote_code: TrustOpt = False,
) -> None:
    """Per-(layer, head) vision-aware head divergence and image-attention mass: heads.json + heads.png."""
    from benchmarks.heads import HEATMAP, REPORT, run_heads
    from halluc.imagesets import resolve_images
    from halluc.runs import RunStore

    image_set = resolve_images(images, instances=annotations, ids_file=image_ids, limit=limit)
    run_dir = _out_dir(out, "heads")
    RunStore.check_output(run_dir)
    lvlm = _load_model(model, device, dtype, trust_remote_code)
    result = run_heads(lvlm, image_set, run_dir, prompt=prompt, batch_size=batch_size, seed=seed)
    console.print(f"run: [bold]{result.store.path}[/] ({REPORT}, {HEATMAP})")


@app.command()
def crosscheck(
    systems: Annotated[
        list[str],
        typer.Option(
            "--systems",
            help="A system: 'baseline', an intervention spec such as 'vhr:alpha=2', or '<model>@<either>'; repeat.",
        ),
    ],
    model: ModelOpt = "",
    images: ImagesOpt = "toy:val",
    annotations: AnnOpt = None,
    captions: CapsOpt = None,
    image_ids: IdsOpt = None,
    limit: LimitOpt = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Sampled evidence passages per image.")] = 4,
    temperature: Annotated[float, typer.Option("--temperature", min=0.01, help="Evidence sampling temperature.")] = 0.7,
    weight_temperature: Annotated[
        float, typer.Option("--weight-temperature", min=0.001, help="T of softmax(-self-inconsistency / T).")
    ] = 0.1,
    prompt: PromptOpt = DESCRIBE_PROMPT,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 128,
    out: OutOpt = None,
    batch_size: BatchOpt = 16,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    resume: ResumeOpt = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Reference-free CrossCheck consistency ranking of several (model, intervention) systems."""
    from benchmarks.crosscheck import FILE, CrossCheckSettings, parse_system, run_crosscheck
    from halluc.imagesets import resolve_images

    parsed = [parse_system(spec) for spec in systems]
    image_set = resolve_images(images, instances=annotations, captions=captions, ids_file=image_ids, limit=limit)
    settings = CrossCheckSettings(
        n_samples=samples, sample_temperature=temperature, weight_temperature=weight_temperature,
        max_new_tokens=max_new_tokens, batch_size=batch_size, prompt=prompt, seed=seed,
    )  # fmt: skip
    run_dir = _out_dir(out, "crosscheck")
    result = run_crosscheck(
        parsed,
        image_set,
        run_dir,
        lambda name: _load_model(name or model, device, dtype, trust_remote_code),
        settings=settings,
        resume=resume,
    )
    table = Table("rank", "system", "explicit", "implicit", "CHAIR_i", "CHi-d", "degen")
    for row in sorted(result["systems"], key=lambda r: r["rank_explicit"]):
        cells = [row["explicit"], row["implicit"], row["CHAIR_i"], row["CHAIR_i_distinct"], row["degenerate_share"]]
        table.add_row(str(row["rank_explicit"]), row["system"], *("-" if v is None else f"{v:.3f}" for v in cells))
    _print_table(table)
    for name in result["unscored"]:
        console.print(f"[yellow]{name}[/]: no sentence of its descriptions names an object; not ranked")
    for name, value in result["correlations"].items():
        console.print(f"{name}: {value:.3f}")
    console.print(f"run: [bold]{run_dir}[/] ({FILE})")


score_app = typer.Typer(help="Score outputs you already have (no model); each file -> a run.", no_args_is_help=True)
app.add_typer(score_app, name="score")
ScoredFileArg = Annotated[Path, typer.Argument(help="JSONL, JSON array or pretty-printed JSON; .gz or not.")]
SystemOpt = Annotated[str | None, typer.Option("--model", help="Name of the system that wrote FILE (recorded).")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace the scoring run already in --out (scoring does not resume).")
]


@score_app.command("chair")
def score_chair(
    file: ScoredFileArg,
    annotations: AnnOpt = None,
    captions: CapsOpt = None,
    gt_file: Annotated[Path | None, typer.Option("--gt-file", help="Precomputed {image_id: [objects]} JSON.")] = None,
    images: Annotated[str | None, typer.Option("--images", help="toy:val or toy:shift as ground truth.")] = None,
    id_key: Annotated[
        str | None, typer.Option("--id-key", help="Image id or file name field (default: image_id, image, id).")
    ] = None,
    text_key: Annotated[
        str | None, typer.Option("--text-key", help="Caption field (default: caption, text, ...).")
    ] = None,
    corrected: Annotated[bool, typer.Option("--corrected", help="Fix the reference CHAIR quirks.")] = False,
    model: SystemOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """CHAIR of existing captions against COCO files, a --gt-file or the toy world."""
    from benchmarks.score import score_chair_file

    result = score_chair_file(
        file, _out_dir(out, "score-chair"), gt_file=gt_file, instances=annotations, captions=captions,
        images=images, id_key=id_key, text_key=text_key, mode="corrected" if corrected else "reference", model=model,
        overwrite=overwrite,
    )  # fmt: skip
    _report_score(result)


@score_app.command("pope")
def score_pope(
    file: ScoredFileArg,
    questions: Annotated[list[Path], typer.Option("--questions", help="POPE question file(s) answered; repeat.")],
    labels: Annotated[
        list[Path] | None, typer.Option("--labels", help="Labelled POPE files for questions without labels; repeat.")
    ] = None,
    question_id_key: Annotated[
        str | None, typer.Option("--question-id-key", help="Default: question_id, qid, id.")
    ] = None,
    answer_key: Annotated[str | None, typer.Option("--answer-key", help="Default: text, answer, ...")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Count unparseable answers instead of 'yes'.")] = False,
    model: SystemOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """POPE of existing answers, paired with their questions by question id."""
    from benchmarks.score import score_pope_file

    result = score_pope_file(
        file, _out_dir(out, "score-pope"), questions=questions, labels=labels or [],
        question_id_key=question_id_key, answer_key=answer_key, strict=strict, model=model, overwrite=overwrite,
    )  # fmt: skip
    _report_score(result)


@score_app.command("amber")
def score_amber(
    file: ScoredFileArg,
    amber_data: Annotated[
        Path,
        typer.Option("--amber-data", help="The official AMBER data/ folder (annotations.json, relation.json, ...)."),
    ],
    id_key: Annotated[str | None, typer.Option("--id-key", help="Query id field (default: id, question_id).")] = None,
    text_key: Annotated[
        str | None, typer.Option("--text-key", help="Response field (default: ... response ...).")
    ] = None,
    parse_answers: Annotated[
        bool, typer.Option("--parse-answers", help="Map yes/no answers starting with yes/no to 'Yes'/'No' first.")
    ] = False,
    model: SystemOpt = None,
    out: OutOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """AMBER of existing responses: generative CHAIR/Cover/Hal/Cog and yes/no questions, as officially scored."""
    from benchmarks.score import score_amber_file

    result = score_amber_file(
        file, _out_dir(out, "score-amber"), amber_data=amber_data, id_key=id_key, text_key=text_key,
        parse_answers=parse_answers, model=model, overwrite=overwrite,
    )  # fmt: skip
    _report_score(result)


def _report_score(result) -> None:
    """Where the scoring run went, the POPE file versions, its metrics and its error records by kind."""
    console.print(f"run: [bold]{result.store.path}[/]")
    for found in result.store.manifest.get("question_versions", []):
        console.print(f"POPE {found['split']}: {found['n_questions']} questions, version {found['version']}")
    console.print_json(json.dumps(result.metrics, default=str))
    if result.errors:
        kinds = ", ".join(f"{n} {kind}" for kind, n in result.errors.items())
        console.print(f"[yellow]{sum(result.errors.values())} error records ({kinds}) in samples.jsonl[/]")


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="Run directory A (e.g. the baseline).")],
    run_b: Annotated[Path, typer.Argument(help="Run directory B; differences are B - A.")],
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="Metric to compare, e.g. CHAIR_i or f1; repeat (all).")
    ] = None,
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples and test permutations.")] = 2000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the resampling.")] = 0,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the comparison to this file.")] = None,
) -> None:
    """B - A of each CHAIR (or POPE) metric on the samples both runs scored: paired 95% bootstrap CI and p-value."""
    from benchmarks.compare import compare_runs
    from halluc.errors import OutputLocationError
    from halluc.runs import atomic_write_json

    if json_file is not None and not json_file.parent.is_dir():
        raise OutputLocationError(f"--json {str(json_file)!r}: folder {str(json_file.parent)!r} does not exist")
    result = compare_runs(run_a, run_b, metrics=metric, n_resamples=resamples, seed=seed)
    console.print(f"A: {result.run_a}\nB: {result.run_b}", highlight=False)
    by_image = result.unit != "images" and result.n_images < result.n_shared
    images = f" of {result.n_images} images (resampled by image)" if by_image else ""
    console.print(
        f"{result.n_shared} shared {result.unit}{images}; left out: {result.n_only_a} only in A, "
        f"{result.n_only_b} only in B",
        highlight=False,
    )
    for line in result.warnings:
        console.print(f"[yellow]warning:[/] the runs differ in {line}", highlight=False)
    console.print(comparison_table(result))
    if json_file is not None:
        atomic_write_json(json_file, result.to_dict())
        console.print(f"written: {json_file}", highlight=False)


def comparison_table(result) -> Table:
    """The metrics of A and B, B - A with its 95% CI and the paired test's p-value, in %, within 80 columns."""

    def points(value: float, sign: str = "") -> str:
        return "-" if math.isnan(value) else f"{100 * value:{sign}.1f}"  # NaN: undefined (a zero denominator)

    table = Table(
        "metric", "A", "B", "B-A", "95% CI", "p", "test",
        title=f"B - A on {result.n_shared} shared {result.unit}, in %",
        caption=f"McNemar: exact test; perm: paired permutation test, swaps per image ({result.n_resamples} draws)",
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True,
    )  # fmt: skip
    for row in result.rows:
        d, p = row.difference, row.p_value
        ci = "-" if math.isnan(d.low) else f"[{points(d.low, '+')}, {points(d.high, '+')}]"
        shown = "-" if math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"
        test = "McNemar" if row.test == "mcnemar" else "perm"
        table.add_row(row.metric, points(row.a), points(row.b), points(d.estimate, "+"), ci, shown, test)
    return table


sentinel_app = typer.Typer(help="SENTINEL sentence-level, detector-validated preference pairs.", no_args_is_help=True)
dpo_app = typer.Typer(help="Context-aware DPO training on SENTINEL pairs (extra: dpo).", no_args_is_help=True)
app.add_typer(sentinel_app, name="sentinel")
app.add_typer(dpo_app, name="dpo")


@sentinel_app.command("generate")
def sentinel_generate(
    images: Annotated[
        str, typer.Option("--images", help="Train-distribution image directory (halluc world build --split train).")
    ],
    model: ModelOpt = "",
    annotations: AnnOpt = None,
    image_ids: IdsOpt = None,
    limit: LimitOpt = None,
    detector: Annotated[
        list[str] | None,
        typer.Option("--detector", help="Detector spec; give exactly two (default: toy-yolov8, toy-yolo11)."),
    ] = None,
    question: Annotated[
        str, typer.Option("--question", help="The instruction whose answer is grown.")
    ] = DESCRIBE_PROMPT,
    n_samples: Annotated[int, typer.Option("--n-samples", min=1, help="Samples per sentence.")] = 10,
    temperature: Annotated[float, typer.Option("--temperature", min=0.01)] = 0.7,
    max_sentence_tokens: Annotated[int, typer.Option("--max-sentence-tokens", min=1)] = 48,
    max_sentences: Annotated[int, typer.Option("--max-sentences", min=1)] = 12,
    pair_type: Annotated[
        list[str] | None, typer.Option("--pair-type", help="coherent (default) and/or exploratory; repeat.")
    ] = None,
    out: OutOpt = None,
    batch_size: BatchOpt = 4,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "auto",
    resume: ResumeOpt = False,
    trust_remote_code: TrustOpt = False,
) -> None:
    """Grow descriptions sentence by sentence and write detector-validated preference pairs (pairs.jsonl)."""
    from benchmarks.detector_chair import load_validator
    from benchmarks.sentinel import run_sentinel
    from halluc.imagesets import resolve_images
    from halluc.sentinel import SentinelConfig

    specs = detector or ["toy-yolov8", "toy-yolo11"]
    config = SentinelConfig(
        question=question,
        n_samples=n_samples,
        temperature=temperature,
        max_sentence_tokens=max_sentence_tokens,
        max_sentences=max_sentences,
        batch_images=batch_size,
        pair_types=tuple(pair_type or ("coherent",)),
        seed=seed,
    )
    image_set = resolve_images(images, instances=annotations, ids_file=image_ids, limit=limit)
    run_dir = _out_dir(out, "sentinel")
    validator = load_validator(specs, cache_path=run_dir / "crosscheck_cache.jsonl")
    lvlm = _load_model(model, device, dtype, trust_remote_code)
    result = run_sentinel(lvlm, validator, image_set, run_dir, config=config, detectors=specs, resume=resume)
    console.print(f"run: [bold]{result.store.path}[/]  ({result.generated} images generated, {result.skipped} resumed)")
    stats = result.stats
    console.print(f"{stats['n_pairs']} pairs from {stats['n_images']} images {stats['pairs_by_type']}")
    table = Table("sentence", "images", "sentences with objects", "hallucinated", "rate", "pairs")
    for row in stats["by_position"]:
        rate = row["hallucination_rate"]
        table.add_row(
            str(row["step"] + 1), str(row["images"]), str(row["sentences_with_objects"]), str(row["hallucinated"]),
            "-" if rate is None else f"{100 * rate:.1f}%", str(row["pairs"]),
        )  # fmt: skip
    _print_table(table)


@dpo_app.command("train")
def dpo_train(
    pairs: Annotated[list[Path], typer.Option("--pairs", help="SENTINEL run directory or pairs.jsonl; repeatable.")],
    model: ModelOpt = "",
    out: OutOpt = None,
    pair_type: Annotated[
        list[str] | None, typer.Option("--pair-type", help="Train only on these pair types (default: all).")
    ] = None,
    beta: Annotated[float, typer.Option("--beta", min=0.0)] = 0.1,
    lr: Annotated[float, typer.Option("--lr", min=0.0)] = 2e-4,
    epochs: Annotated[float, typer.Option("--epochs", min=0.0)] = 1.0,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Overrides --epochs.")] = None,
    batch_size: BatchOpt = 8,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1)] = 1,
    lora_r: Annotated[int, typer.Option("--lora-r", min=1)] = 16,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", min=1)] = 32,
    bf16: Annotated[bool, typer.Option("--bf16", help="bfloat16 autocast (GPU).")] = False,
    seed: SeedOpt = 0,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda (all GPUs under accelerate launch).")] = "cpu",
    dtype: Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16 weights.")] = "float32",
) -> None:
    """LoRA context-aware DPO (only the next sentence scored, beta 0.1); saves the adapter and a merged model."""
    from halluc.dpo import DpoSettings, load_pairs, train_dpo

    settings = DpoSettings(
        beta=beta, learning_rate=lr, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
        grad_accum=grad_accum, lora_r=lora_r, lora_alpha=lora_alpha, bf16=bf16, seed=seed,
    )  # fmt: skip
    loaded = load_pairs(pairs, pair_types=pair_type)
    result = train_dpo(
        model or default_model(),
        loaded,
        _out_dir(out, "dpo"),
        settings=settings,
        device=device,
        dtype=dtype,
        model_info={"pairs": [str(p) for p in pairs]},
    )
    console.print(f"run: [bold]{result.store.path}[/]; merged model: [bold]{result.merged}[/]")
    console.print_json(json.dumps(result.metrics, default=str))


@app.command()
def dashboard(
    runs: RunsDirOpt = Path("runs"),
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port on 127.0.0.1.")] = 8501,
) -> None:
    """Streamlit dashboard over a runs directory, bound to 127.0.0.1."""
    import os

    from halluc.errors import ConfigError, InputDataError

    root = runs.resolve()
    if not root.is_dir():
        raise InputDataError(f"runs directory {str(runs)!r} does not exist; pass --runs DIR, a folder of runs")
    entry = Path(__file__).resolve().parent.parent / "app" / "main.py"
    if not entry.is_file():
        raise ConfigError(f"the dashboard app is missing ({entry}); run halluc from a source checkout of the project")
    command = [
        sys.executable, "-m", "streamlit", "run", str(entry),
        "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
    ]  # fmt: skip
    console.print(f"dashboard over {root}: http://127.0.0.1:{port} (Ctrl-C stops it)")
    raise typer.Exit(_serve(command, {**os.environ, "HALLUC_RUNS_DIR": str(root)}))


class _Stop(Exception):
    """SIGTERM or SIGINT reached the dashboard command."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def _serve(command: list[str], env: dict[str, str]) -> int:
    """Run the Streamlit server as this command's child and stop it when this command is stopped (SIGTERM/SIGINT)."""
    import signal
    import subprocess

    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    server = None
    try:
        server = subprocess.Popen(command, env=env)
        return server.wait()
    except _Stop:
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


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


@world_app.command("amber")
def world_amber(
    out: Annotated[Path, typer.Option("--out", help="Directory for the AMBER-format files (data/ layout).")],
    images: ImagesOpt = "toy:val",
    limit: LimitOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Write the world's AMBER-format metadata and queries (for halluc score amber; images stay in the world)."""
    from benchmarks.qa_jobs import world_amber_data
    from halluc.imagesets import resolve_images

    image_set = resolve_images(images, limit=limit)
    data = world_amber_data(image_set, out, seed)
    console.print(f"wrote {len(data.annotations)} AMBER queries for {len(image_set.image_ids)} images to {out}")
    console.print(f"images: {image_set.image_dir}")


@runs_app.command("list")
def runs_list(runs: RunsDirOpt = Path("runs")) -> None:
    """Table of runs: job, model, intervention, images, status and key metrics."""
    from halluc.runs import list_runs, resume_command, run_status

    table = Table("run", "job", "model", "intervention", "images", "status", "metrics")
    interrupted: list[tuple[Path, str | None]] = []
    for run in list_runs(runs):
        m = run.manifest
        status = run_status(run.path, m)
        if status == "interrupted":
            interrupted.append((run.path, resume_command(run.path, m)))
        metrics = run.metrics() or {}
        headline = ", ".join(f"{k}={v:.3f}" for k, v in _headline(metrics).items())
        table.add_row(
            str(run.path.relative_to(runs)),
            str(m.get("job", "")),
            Path(str(m.get("model", ""))).name,
            str(m.get("intervention") or "none"),
            str((m.get("images") or {}).get("name", "")),
            status,
            headline,
        )
    _print_table(table)
    for path, command in interrupted:  # the writer of these died: say how to continue them
        how = command or "its command plus --resume"
        console.print(f"{path} was interrupted; resume it with: {how}", soft_wrap=True, highlight=False)


@runs_app.command("show")
def runs_show(run: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """Manifest and metrics of one run."""
    from halluc.runs import RunStore

    store = RunStore.open(run)
    console.print_json(json.dumps({"manifest": store.manifest, "metrics": store.metrics()}, default=str))


def _headline(metrics: dict) -> dict[str, float]:
    keys = ("CHAIR_s", "CHAIR_i", "CHAIR_i_distinct", "recall", "f1", "degenerate_share", "accuracy")
    return {k: float(metrics[k]) for k in keys if isinstance(metrics.get(k), int | float)}


def main() -> None:
    """Console entry point: user-facing errors become one line and exit status 2."""
    try:
        app()
    except HallucError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        Console(stderr=True, soft_wrap=True).print(
            f"[bold red]error:[/] {exc.strerror}{where}; free some space (or choose another --out) and rerun "
            "with --resume",
            highlight=False,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
