"""CHAIR/POPE jobs and the CLI end to end on a tiny random LLaVA and a tiny world: errors, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import build_tiny

from benchmarks.jobs import run_chair, run_pope
from benchmarks.runner import GenerationSettings
from benchmarks.suite import finished_metrics
from halluc.errors import OutputLocationError
from halluc.imagesets import resolve_images
from halluc.world import build_split

CLI = [sys.executable, "-m", "halluc.cli"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    build_split("val", 40, root, seed=3)
    return root


def _image_args(world: Path) -> list[str]:
    return [
        "--images",
        str(world / "images" / "val"),
        "--annotations",
        str(world / "instances_val.json"),
        "--captions",
        str(world / "captions_val.json"),
    ]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env=env)


def _val_images(world: Path, limit: int):
    """The first ``limit`` images of the test world's val split, with its instances and captions."""
    folder = world / "images" / "val"
    return resolve_images(
        str(folder), instances=world / "instances_val.json", captions=world / "captions_val.json", limit=limit
    )


def test_chair_and_pope_jobs_write_complete_runs(world: Path, tmp_path: Path) -> None:
    lvlm = build_tiny("llava")
    images = _val_images(world, limit=5)
    settings = GenerationSettings(max_new_tokens=6, batch_size=4)
    chair = run_chair(lvlm, images, tmp_path / "chair", settings=settings, progress=False)
    assert chair.metrics["n_captions"] == 5 and chair.store.manifest["status"] == "finished"
    assert len(json.loads((tmp_path / "chair" / "chair_details.json").read_text())) == 5
    pope = run_pope(lvlm, images, tmp_path / "pope", n_images=4, settings=settings, progress=False)
    assert set(pope.metrics) >= {"random", "popular", "adversarial", "mean"}
    assert pope.metrics["random"]["n"] == 24
    # identical (image, question) pairs across splits (the positives at least) are generated once
    questions = json.loads((tmp_path / "pope" / "pope_questions.json").read_text())
    assert len(questions) == 72
    assert len(pope.store.samples()) == len({(q["image"], q["text"]) for q in questions}) <= 48


def test_a_finished_run_is_reused_only_for_the_weights_that_made_it(world: Path, tmp_path: Path) -> None:
    """A suite cell finished by other weights (a retrained model in the same --out) must not pass for this one."""
    lvlm = build_tiny("llava")
    images = resolve_images(str(world / "images" / "val"), instances=world / "instances_val.json", limit=2)
    settings = GenerationSettings(max_new_tokens=4, batch_size=2)
    chair = run_chair(lvlm, images, tmp_path / "chair", settings=settings, progress=False)
    assert finished_metrics(tmp_path / "chair", lvlm) == chair.metrics
    metrics_path = tmp_path / "chair" / "metrics.json"
    metrics_path.write_text(json.dumps({k: v for k, v in chair.metrics.items() if k != "degenerate_share"}))
    assert finished_metrics(tmp_path / "chair", lvlm) is None  # scored before the repetition checks: rescore it
    rescored = run_chair(lvlm, images, tmp_path / "chair", settings=settings, resume=True, progress=False)
    assert rescored.metrics == chair.metrics and rescored.summary.generated == 0
    manifest_path = tmp_path / "chair" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "weights_sha256": "0123456789abcdef"}))
    with pytest.raises(OutputLocationError, match="0123456789abcdef.*choose another --out"):
        finished_metrics(tmp_path / "chair", lvlm)


def _bad_invocations(world: Path, tmp_path: Path, tiny_dir: Path) -> list[tuple[list[str], str]]:
    """(CLI arguments, the bad value stderr must name): each must exit with status 2 and one line, no traceback."""
    bad_ann = tmp_path / "bad.json"
    bad_ann.write_text("{not json")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    corrupt = ["--images", str(world / "images" / "val"), "--annotations", str(bad_ann)]
    return [
        (["chair", "--model", str(tmp_path / "no-such-model"), *_image_args(world), "--out", str(tmp_path / "r")],
         "no-such-model"),
        (["chair", "--model", str(tiny_dir), *corrupt, "--out", str(tmp_path / "r2")], "bad.json"),
        (["chair", "--model", str(tiny_dir), *_image_args(world), "--out", str(blocker / "run")], "cannot write"),
        (["crosscheck", "--out", str(tmp_path / "r3")], "--systems"),  # a required option left out
        (["crosscheck", "--systems", "vhr:alpha=-1", "--out", str(tmp_path / "r4")], "alpha must be >= 0, got -1.0"),
    ]  # fmt: skip


def test_cli_errors_are_one_clear_line_in_process(
    world: Path, tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The fast twin of the subprocess test below: the console entry point ``main`` called in this process."""
    from halluc.cli import main

    for args, named in _bad_invocations(world, tmp_path, tiny_dir):
        monkeypatch.setattr(sys, "argv", ["halluc", *args])
        with pytest.raises(SystemExit) as exited:  # any other exception (a traceback) fails the test
            main()
        stderr = capsys.readouterr().err
        assert exited.value.code == 2 and named in stderr and "Traceback" not in stderr, (args, stderr)


@pytest.mark.slow
def test_cli_errors_are_one_clear_line(world: Path, tmp_path: Path, tiny_dir: Path) -> None:
    for args, named in _bad_invocations(world, tmp_path, tiny_dir):
        done = _cli(*args)
        assert done.returncode == 2 and named in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)


def _chair_cmd(world: Path, tiny_dir: Path, out: Path, *extra: str) -> list[str]:
    common = ["--batch-size", "1", "--max-new-tokens", "24", "--out", str(out)]
    return [*CLI, "chair", "--model", str(tiny_dir), *_image_args(world), *common, *extra]


def test_resume_after_a_torn_write_equals_uninterrupted_run(world: Path, tmp_path: Path) -> None:
    """The fast twin of the SIGKILL test below: a run cut mid-record, in this process, resumes to the same run."""
    lvlm = build_tiny("llava")
    images = _val_images(world, limit=6)
    settings = GenerationSettings(max_new_tokens=8, batch_size=1)
    reference = run_chair(lvlm, images, tmp_path / "ref", settings=settings, progress=False)
    out = tmp_path / "cut"
    run_chair(lvlm, images, out, settings=settings, progress=False)
    samples = out / "samples.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # killed while writing the 4th record
    (out / "metrics.json").unlink()
    resumed = run_chair(lvlm, images, out, settings=settings, resume=True, progress=False)
    assert resumed.summary.skipped == 3 and resumed.summary.generated == 3
    assert samples.read_text() == (tmp_path / "ref" / "samples.jsonl").read_text()
    assert resumed.metrics == reference.metrics
    assert json.loads((out / "metrics.json").read_text()) == json.loads((tmp_path / "ref" / "metrics.json").read_text())


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(world: Path, tmp_path: Path, tiny_dir: Path) -> None:
    reference = subprocess.run(_chair_cmd(world, tiny_dir, tmp_path / "ref"), capture_output=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(_chair_cmd(world, tiny_dir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = out / "samples.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if samples.exists() and samples.read_text().count("\n") >= 10:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed halfway"
    assert samples.read_text().count("\n") < 40
    resumed = subprocess.run(_chair_cmd(world, tiny_dir, out, "--resume"), capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    def rows(path: Path) -> list[dict]:
        return [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]

    assert rows(out) == rows(tmp_path / "ref")
    assert json.loads((out / "metrics.json").read_text()) == json.loads((tmp_path / "ref" / "metrics.json").read_text())


@pytest.mark.slow  # fast twin: tests/test_runs.py::test_sharded_run_equals_single_process_run
def test_two_process_accelerate_run_equals_one_process_run(world: Path, tmp_path: Path, tiny_dir: Path) -> None:
    single = subprocess.run(_chair_cmd(world, tiny_dir, tmp_path / "one"), capture_output=True, timeout=300)
    assert single.returncode == 0, single.stderr
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "-m", "halluc.cli"]
    cmd = [*launch, *_chair_cmd(world, tiny_dir, tmp_path / "two")[len(CLI) :]]
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one_rows = (tmp_path / "one" / "samples.jsonl").read_text()
    assert (tmp_path / "two" / "samples.jsonl").read_text() == one_rows
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "one" / "metrics.json").read_text())
