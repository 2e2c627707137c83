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


def test_chair_and_pope_jobs_write_complete_runs(world: Path, tmp_path: Path) -> None:
    lvlm = build_tiny("llava")
    images = resolve_images(
        str(world / "images" / "val"),
        instances=world / "instances_val.json",
        captions=world / "captions_val.json",
        limit=5,
    )
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


def test_cli_errors_are_one_clear_line(world: Path, tmp_path: Path, tiny_dir: Path) -> None:
    missing = _cli(
        "chair", "--model", str(tmp_path / "no-such-model"), *_image_args(world), "--out", str(tmp_path / "r")
    )
    assert missing.returncode == 2 and "no-such-model" in missing.stderr and "Traceback" not in missing.stderr
    bad_ann = tmp_path / "bad.json"
    bad_ann.write_text("{not json")
    args = ["--images", str(world / "images" / "val"), "--annotations", str(bad_ann)]
    corrupt = _cli("chair", "--model", str(tiny_dir), *args, "--out", str(tmp_path / "r2"))
    assert corrupt.returncode == 2 and "bad.json" in corrupt.stderr and "Traceback" not in corrupt.stderr
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    unwritable = _cli("chair", "--model", str(tiny_dir), *_image_args(world), "--out", str(blocker / "run"))
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr and "Traceback" not in unwritable.stderr
    no_systems = _cli("crosscheck", "--out", str(tmp_path / "r3"))
    assert no_systems.returncode == 2 and "--systems" in no_systems.stderr and "Traceback" not in no_systems.stderr
    bad_system = _cli("crosscheck", "--systems", "vhr:alpha=-1", "--out", str(tmp_path / "r4"))
    assert bad_system.returncode == 2 and "Traceback" not in bad_system.stderr
    assert "alpha must be >= 0, got -1.0" in bad_system.stderr


def _chair_cmd(world: Path, tiny_dir: Path, out: Path, *extra: str) -> list[str]:
    common = ["--batch-size", "1", "--max-new-tokens", "24", "--out", str(out)]
    return [*CLI, "chair", "--model", str(tiny_dir), *_image_args(world), *common, *extra]


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
