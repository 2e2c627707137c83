"""Fault injection (issue 19): nothing ends silently wrong, in a traceback, or after the model has loaded.

Each test is one fault a user can hit: two writers on one run, a dead writer, duplicate samples, an input that is
only checked after generation, an ignored option, a resume refused for a setting that does not change results,
a non-finite intervention strength, a corrupt checkpoint, a full disk, a dashboard that cannot find the demo's
runs or leaks its server, and a samples file pointing outside the runs folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import build_tiny

from benchmarks import chair
from benchmarks.jobs import run_chair, run_pope
from benchmarks.runner import GenerationSettings, unique_samples
from halluc.errors import InputDataError, ModelLoadError, OutputLocationError
from halluc.imagesets import resolve_images
from halluc.models import load_lvlm
from halluc.runs import LOCK, RunStore, run_status
from halluc.world import build_split

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "runs"
NO_MODEL = "/nonexistent/model-that-must-not-load"  # an input error must be reported before this is tried

# A child process that takes a run's writer lock, says so, and holds it until killed (or exits without releasing).
_HOLDER = """
import os, sys, time
from halluc.runs import RunStore
store = RunStore.create(sys.argv[1], {"job": "chair", "config_hash": "x"})
store.append([{"id": "1", "response": "a"}])
print("locked", flush=True)
if sys.argv[2] == "die":
    os._exit(0)  # like kill -9: no finish, no release
time.sleep(120)
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    build_split("val", 12, root, seed=5)
    return root


def _images(world: Path) -> list[str]:
    return ["--images", str(world / "images" / "val"), "--annotations", str(world / "instances_val.json")]


def _main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run the console entry point in this process: (exit code, stderr)."""
    from halluc.cli import main

    monkeypatch.setattr(sys, "argv", ["halluc", *args])
    with pytest.raises(SystemExit) as exited:  # any other exception (a traceback) fails the test
        main()
    return exited.value.code, capsys.readouterr().err


def _one_line(code: int, stderr: str, *named: str) -> None:
    assert code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]  # progress bars may precede it
    assert "Traceback" not in stderr and len(errors) == 1, stderr
    for word in named:
        assert word in errors[0], (word, stderr)


def _hold_lock(run: Path, mode: str = "hold") -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run), mode], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


# 1. One writer per run directory ---------------------------------------------------------------------------------


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        with pytest.raises(OutputLocationError, match=f"being written by another process \\(pid {holder.pid}"):
            RunStore.create(run, {"job": "chair", "config_hash": "x"}, resume=True)
        assert run_status(run, RunStore.open(run).manifest) == "running"
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with the process: the run is now interrupted and can be resumed
    assert run_status(run, RunStore.open(run).manifest) == "interrupted"
    resumed = RunStore.create(run, {"job": "chair", "config_hash": "x"}, resume=True)
    resumed.finish()
    assert not (run / LOCK).exists()


def test_a_second_writer_on_the_cli_is_one_line_before_the_model_loads(
    tmp_path: Path, world: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        args = ["chair", "--model", NO_MODEL, *_images(world), "--limit", "2", "--out", str(run), "--resume"]
        _one_line(*_main(args, monkeypatch, capsys), "being written by another process", str(holder.pid))
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_writer_is_reported_and_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    holder = _hold_lock(run, "die")
    holder.wait()
    assert (run / LOCK).exists() and run_status(run, RunStore.open(run).manifest) == "interrupted"
    with pytest.raises(OutputLocationError, match="already holds an interrupted run; pass --resume"):
        RunStore.create(run, {"job": "chair", "config_hash": "x"})
    with caplog.at_level(logging.WARNING, logger="halluc"):
        store = RunStore.create(run, {"job": "chair", "config_hash": "x"}, resume=True)
    assert f"pid {holder.pid}" in caplog.text and "stale lock" in caplog.text
    assert json.loads((run / LOCK).read_text())["pid"] == os.getpid()
    store.close()
    assert not (run / LOCK).exists()


def test_scoring_drops_exact_duplicates_and_refuses_conflicting_ones(caplog: pytest.LogCaptureFixture) -> None:
    a = {"id": "1", "image_id": 1, "response": "a dog on a sofa"}
    b = {"id": "2", "image_id": 2, "response": "a cat"}
    with caplog.at_level(logging.WARNING, logger="halluc"):
        assert unique_samples([a, b, dict(a)], where="run") == [a, b]
    assert "1 duplicate" in caplog.text
    with pytest.raises(InputDataError, match="conflicting records for sample id '1'"):
        unique_samples([a, b, {**a, "response": "a horse"}], where="run")
    gt = {1: frozenset({"dog"}), 2: frozenset({"cat"})}
    once, _ = chair.score_records([{"image_id": 1, "caption": "a dog"}, {"image_id": 2, "caption": "a cat"}], gt)
    twice, _ = chair.score_records(
        [{"image_id": 1, "caption": "a dog"}, {"image_id": 2, "caption": "a cat"}, {"image_id": 1, "caption": "a dog"}],
        gt,
    )
    assert twice == once
    with pytest.raises(InputDataError, match="image_id 1"):
        chair.score_records([{"image_id": 1, "caption": "a dog"}, {"image_id": 1, "caption": "a car"}], gt)


def test_a_run_with_duplicated_samples_is_scored_once(world: Path, tmp_path: Path) -> None:
    """Two writers before the lock existed left every record twice: CHAIR and POPE count each sample once."""
    lvlm = build_tiny("llava")
    images = resolve_images(
        str(world / "images" / "val"),
        instances=world / "instances_val.json",
        captions=world / "captions_val.json",
        limit=3,
    )
    settings = GenerationSettings(max_new_tokens=4, batch_size=3)
    ref = run_chair(lvlm, images, tmp_path / "chair", settings=settings, progress=False)
    samples = tmp_path / "chair" / "samples.jsonl"
    samples.write_text(samples.read_text() * 2)
    (tmp_path / "chair" / "metrics.json").unlink()
    again = run_chair(lvlm, images, tmp_path / "chair", settings=settings, progress=False, resume=True)
    assert again.metrics == ref.metrics and again.metrics["n_captions"] == 3
    pope_ref = run_pope(lvlm, images, tmp_path / "pope", n_images=2, settings=settings, progress=False)
    lines = (tmp_path / "pope" / "samples.jsonl").read_text().splitlines(keepends=True)
    conflict = json.loads(lines[0])
    conflict["response"] = "yes" if conflict["response"] != "yes" else "no"
    (tmp_path / "pope" / "samples.jsonl").write_text("".join(lines) + json.dumps(conflict) + "\n")
    with pytest.raises(InputDataError, match=f"conflicting records for sample id '{conflict['id']}'"):
        run_pope(lvlm, images, tmp_path / "pope", n_images=2, settings=settings, progress=False, resume=True)
    assert pope_ref.metrics["mean"]


@pytest.mark.slow  # about 30 s: two processes each load torch and the model
def test_torchrun_on_cpu_shards_instead_of_running_two_copies(world: Path, tmp_path: Path, tiny_dir: Path) -> None:
    args = ["chair", "--model", str(tiny_dir), *_images(world), "--captions", str(world / "captions_val.json")]
    args += ["--limit", "6", "--batch-size", "2", "--max-new-tokens", "6"]
    one = subprocess.run([sys.executable, "-m", "halluc.cli", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "halluc.cli"]
    two = subprocess.run([*torchrun, *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "two" / "samples.jsonl").read_text() == (tmp_path / "one" / "samples.jsonl").read_text()
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "one" / "metrics.json").read_text())


# 2. Every input checked before the model loads --------------------------------------------------------------------


def _bad_inputs(world: Path, tmp_path: Path) -> list[tuple[list[str], list[str]]]:
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    unlabelled = tmp_path / "coco_pope_random.json"
    unlabelled.write_text(json.dumps({"question_id": 1, "image": "x.png", "text": "Is there a dog?"}) + "\n")
    done = tmp_path / "done"
    done.mkdir()
    (done / "manifest.json").write_text(json.dumps({"job": "chair", "status": "finished", "config_hash": "x"}))
    (done / "samples.jsonl").write_text('{"id": "1"}\n')
    blocker = tmp_path / "file"
    blocker.write_text("x")
    images = _images(world)
    out = ["--out", str(tmp_path / "new")]
    return [
        (["chair", *images, "--captions", str(tmp_path / "missing.json"), *out], ["missing.json"]),
        (["chair", *images, "--captions", str(broken), *out], ["broken.json"]),
        (["chair", "--images", str(world / "images" / "val"), "--gt-file", str(tmp_path / "gt.json"), *out],
         ["gt.json"]),
        (["chair", "--images", str(world / "images" / "val"), *out], ["--annotations", "--gt-file"]),
        (["chair", *images, "--intervention", "vhr:alpah=2", *out], ["alpah"]),
        (["chair", *images, "--intervention", "opera", "--num-beams", "3", *out], ["opera", "--num-beams 3"]),
        (["chair", *images, "--intervention", "opera", "--intervention", "dola", *out], ["opera", "dola"]),
        (["chair", *images, "--out", str(blocker / "run")], ["cannot write", "file"]),
        (["chair", *images, "--out", str(done)], ["already holds a run", "--resume"]),
        (["chair", "--images", "toy:val", "--captions", str(tmp_path / "missing.json"), *out],
         ["--captions", "toy:val"]),
        (["chair", "--images", "toy:val", "--annotations", str(world / "instances_val.json"), *out],
         ["--annotations", "toy:val"]),
        (["pope", *images, "--questions", str(unlabelled), *out], ["label", "coco_pope_random.json"]),
        (["pope", *images, "--questions", str(tmp_path / "nope.json"), *out], ["nope.json"]),
        (["pope", "--images", "toy:val", "--annotations", str(world / "instances_val.json"), *out],
         ["--annotations", "toy:val"]),
    ]  # fmt: skip


def test_every_input_is_checked_before_the_model_loads(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    for args, named in _bad_inputs(world, tmp_path):
        code, stderr = _main([*args, "--model", NO_MODEL], monkeypatch, capsys)
        assert "model-that-must-not-load" not in stderr, (args, stderr)
        _one_line(code, stderr, *named)
    assert not (tmp_path / "new").exists()  # no run directory is left behind by a refused command


@pytest.mark.parametrize("spec", ["vhr:alpha=inf", "vhr:alpha=1e400", "vhr:alpha=nan", "pai:alpha=inf"])
def test_non_finite_intervention_strength_is_refused(
    spec: str, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    args = ["chair", "--model", NO_MODEL, *_images(world), "--intervention", spec, "--out", str(tmp_path / "r")]
    _one_line(*_main(args, monkeypatch, capsys), "alpha")


def test_resume_ignores_batch_size_and_names_a_changed_option(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    lvlm = build_tiny("llava")
    images = resolve_images(str(world / "images" / "val"), instances=world / "instances_val.json", limit=2)
    run_chair(lvlm, images, tmp_path / "r", settings=GenerationSettings(max_new_tokens=4, batch_size=2), progress=False)
    (tmp_path / "r" / "metrics.json").unlink()
    resumed = run_chair(
        lvlm, images, tmp_path / "r", settings=GenerationSettings(max_new_tokens=4, batch_size=1),
        progress=False, resume=True,
    )  # fmt: skip
    assert resumed.metrics["n_captions"] == 2
    with pytest.raises(OutputLocationError, match=r"settings.max_new_tokens: 4 -> 5"):
        run_chair(lvlm, images, tmp_path / "r", settings=GenerationSettings(max_new_tokens=5), resume=True)
    with pytest.raises(OutputLocationError, match=r"prompt: \".*\" -> \"Say hi.\""):
        run_chair(lvlm, images, tmp_path / "r", settings=GenerationSettings(max_new_tokens=4), prompt="Say hi.",
                  resume=True)  # fmt: skip


# 3. Run status from facts -------------------------------------------------------------------------------------------


def _interrupted_run(root: Path, name: str = "chair-killed") -> tuple[Path, int]:
    """A run whose writer died without finishing (its lock names a dead pid); (run dir, that pid)."""
    shutil.copytree(FIXTURES / "chair-baseline", root / name)
    manifest = json.loads((root / name / "manifest.json").read_text())
    manifest.update(status="running", finished_at=None, command=["halluc", "chair", "--out", str(root / name)])
    (root / name / "manifest.json").write_text(json.dumps(manifest))
    (root / name / "metrics.json").unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (root / name / LOCK).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    return root / name, pid


def test_runs_list_shows_an_interrupted_run_with_its_resume_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run, _ = _interrupted_run(tmp_path)
    monkeypatch.setattr(sys, "argv", ["halluc", "runs", "list", "--runs", str(tmp_path)])
    from halluc.cli import main

    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr().out
    assert exited.value.code == 0
    assert "interrupted" in out and "running" not in out, out
    assert f"halluc chair --out {run} --resume" in " ".join(out.split()), out


def test_dashboard_shows_an_interrupted_run_as_such_with_its_resume_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    from app import data

    run, _ = _interrupted_run(tmp_path)
    monkeypatch.setenv(data.RUNS_ENV, str(tmp_path))
    assert data.scan_runs(tmp_path).by_id(run.name).status == "interrupted"
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.get("progress")  # no progress bar for a run nobody is writing
    shown = "\n".join(str(e.value) for e in [*at.warning, *at.info])
    assert "interrupted" in shown and f"halluc chair --out {run} --resume" in shown, shown


def test_compare_warns_when_runs_differ_and_offers_shared_samples_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    from app import data

    for name in ("chair-baseline", "chair-vhr-2"):
        shutil.copytree(FIXTURES / name, tmp_path / name)
    other = tmp_path / "chair-vhr-2"
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["images"]["n_images"] = 3
    manifest["settings"]["max_new_tokens"] = 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    details = json.loads((other / "chair_details.json").read_text())[:3]
    (other / "chair_details.json").write_text(json.dumps(details))
    monkeypatch.setenv(data.RUNS_ENV, str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60).run()
    at.switch_page("views/compare.py").run()
    at.multiselect(key="compare-runs-chair").set_value(["chair-baseline", "chair-vhr-2"]).run()
    warning = "\n".join(str(w.value) for w in at.warning)
    assert "image set" in warning and "token budget" in warning, warning
    at.checkbox(key="compare-shared-chair").check().run()
    assert not at.exception, [e.value for e in at.exception]
    shared = {d["image_id"] for d in details}
    base = [d for d in json.loads((tmp_path / "chair-baseline" / "chair_details.json").read_text())
            if d["image_id"] in shared]  # fmt: skip
    expected = sum(d["hallucinated"] for d in base) / len(base)
    cards = {(m.label, m.value) for m in at.metric}
    assert ("CHAIR_s", f"{expected:.3f}") in cards, cards
    assert "3 shared samples" in "\n".join(str(c.value) for c in at.caption)


# 4. One-line errors for a corrupt checkpoint and a full disk, no partial files ---------------------------------


def test_a_truncated_checkpoint_is_one_line(
    tiny_dir: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    args = ["chair", "--model", str(model), *_images(world), "--limit", "1", "--out", str(tmp_path / "r")]
    _one_line(*_main(args, monkeypatch, capsys), "cannot load model", str(model))


def test_load_lvlm_names_corrupt_weights(tiny_dir: Path, tmp_path: Path) -> None:
    """The library call, not only the CLI, turns a truncated safetensors file into a ModelLoadError."""
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="corrupt weights"):
        load_lvlm(model)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """/dev/full answers every write with ENOSPC: the file being written is pointed at it."""
    from halluc.runs import atomic_write_json

    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    target = tmp_path / "metrics.json"
    target.write_text('{"old": true}\n')
    (tmp_path / f".metrics.json.tmp-{os.getpid()}").symlink_to("/dev/full")
    with pytest.raises(OutputLocationError, match="(?i)no space left on device"):
        atomic_write_json(target, {"new": list(range(10_000))})
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temp file left behind
    # a CHAIR run whose disk fills while it writes its results ends in one line, exit 2, and is marked failed
    run = tmp_path / "run"
    run.mkdir()
    (run / f".chair_details.json.tmp-{os.getpid()}").symlink_to("/dev/full")  # _main runs in this process
    args = ["chair", "--images", "toy:val", "--limit", "1", "--max-new-tokens", "8", "--out", str(run)]
    _one_line(*_main(args, monkeypatch, capsys), "No space left on device", "chair_details.json")
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"


# 5. Demo and dashboard agree; the dashboard owns its server; image paths stay inside ------------------------------


def test_the_dashboard_finds_the_demos_nested_runs(tmp_path: Path) -> None:
    from app import data
    from benchmarks.suite import cell_dir

    nested = cell_dir(tmp_path / "demo", "baseline", "toy:val") / "chair"
    shutil.copytree(FIXTURES / "chair-baseline", nested)
    scan = data.scan_runs(tmp_path / "demo")
    assert [run.id for run in scan.runs] == ["baseline__toy-val/chair"], scan.problems
    assert scan.by_id("baseline__toy-val/chair").metrics


def test_a_sample_image_outside_the_runs_and_dataset_folders_is_refused(tmp_path: Path) -> None:
    from app import data

    outside = tmp_path / "secret.png"
    outside.write_bytes(b"not for the dashboard")
    root = tmp_path / "runs"
    shutil.copytree(FIXTURES / "chair-baseline", root / "chair")
    run = data.scan_runs(root).by_id("chair")
    assert data.locate(run, root, outside) is None
    assert data.locate(run, root, Path(run.manifest["images"]["image_dir"]) / ".." / ".." / str(outside)) is None
    inside = root / "assets" / "img.png"
    inside.parent.mkdir()
    inside.write_bytes(b"x")
    assert data.locate(run, root, inside) == inside


@pytest.mark.slow  # about 10 s: starts a Streamlit server
def test_stopping_the_dashboard_command_stops_its_server(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "halluc.cli", "dashboard", "--runs", str(FIXTURES), "--port", str(port)]
    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert time.monotonic() < deadline and proc.poll() is None, "the dashboard did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) is not None
        deadline = time.monotonic() + 10
        while _listening(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _listening(port), "the Streamlit server outlived the halluc dashboard command"
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if _group_alive(proc.pid) else None


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
