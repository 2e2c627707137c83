"""Fault probes: how each fault a user can hit ends (issue 19's measure).

    python scripts/measure_faults.py --out /tmp/fault-probes [--torchrun]

Each probe calls the ``halluc`` console entry point (``halluc.cli.main``, in this process, with stdout and stderr
captured) or a library reader, on a 12-image world built in ``--out`` and the embedded toy model, and is sorted:

    clear error      exit 2, exactly one ``error:`` line naming the expected value, no traceback
    error record     exit 0, the bad input kept as an error record in samples.jsonl
    correct result   exit 0 and the result checks out (e.g. equals an uninterrupted run)
    WRONG            anything else: a traceback, another exit code, a wrong or missing error, a wrong result

Probes that must fail before the model loads pass ``--model`` a path that does not exist, so a check made too late
shows up as the wrong error. Prints one row per probe and a JSON summary; exits 1 if any probe is WRONG.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

NO_MODEL = "/nonexistent/model-that-must-not-load"
ROOT = Path(__file__).resolve().parents[1]  # the dashboard's ``app`` package is not installed; it is read from here
_HOLDER = """
import sys, time
from halluc.runs import RunStore
store = RunStore.create(sys.argv[1], {"job": "chair", "config_hash": "x"})
print("locked", flush=True)
time.sleep(600)
"""


def cli(*args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``halluc ARGS`` run through the console entry point in this process."""
    from halluc.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["halluc", *args]
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:  # noqa: BLE001 - a probe records a traceback instead of dying on it
        code, err = "traceback", io.StringIO(err.getvalue() + f"\nTraceback: {type(exc).__name__}: {exc}")
    finally:
        sys.argv = saved
    return (code if isinstance(code, int) else -1 if code != "traceback" else -99), out.getvalue(), err.getvalue()


def clear_error(args: list[str], *named: str) -> tuple[str, str]:
    code, _, err = cli(*args)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if code == 2 and "Traceback" not in err and len(errors) == 1 and all(w in errors[0] for w in named):
        return "clear error", errors[0][:150]
    return "WRONG", f"exit {code}: {err.strip()[-300:]}"


def result(ok: bool, detail: str) -> tuple[str, str]:
    return ("correct result" if ok else "WRONG"), detail


class Probes:
    """The world, the reference run and the probes, each returning (outcome, detail)."""

    def __init__(self, root: Path) -> None:
        from halluc.world import build_split

        self.root = root
        build_split("val", 12, root / "world", seed=5)
        self.images = ["--images", str(root / "world" / "images" / "val")]
        self.ann = ["--annotations", str(root / "world" / "instances_val.json")]
        self.caps = ["--captions", str(root / "world" / "captions_val.json")]
        self.small = ["--limit", "3", "--max-new-tokens", "12", "--batch-size", "3"]
        self.n = 0

    def out(self) -> str:
        self.n += 1
        return str(self.root / f"run-{self.n}")

    def chair(self, out: str, *extra: str) -> tuple[int, str, str]:
        return cli("chair", *self.images, *self.ann, *self.caps, *self.small, "--out", out, *extra)

    def reference(self) -> Path:
        ref = self.root / "reference"
        if not (ref / "metrics.json").exists():
            assert self.chair(str(ref))[0] == 0
        return ref

    # --- 1. one writer per run ------------------------------------------------------------------------------------
    def second_writer(self) -> tuple[str, str]:
        run = self.out()
        holder = subprocess.Popen([sys.executable, "-c", _HOLDER, run], stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            return clear_error(["chair", "--model", NO_MODEL, *self.images, *self.ann, "--out", run, "--resume"],
                               "being written by another process", str(holder.pid))  # fmt: skip
        finally:
            holder.kill()
            holder.wait()

    def killed_writer_then_resume(self) -> tuple[str, str]:
        from halluc.runs import LOCK, RunStore, run_status

        ref, run = self.reference(), Path(self.out())
        shutil.copytree(ref, run)
        lines = (run / "samples.jsonl").read_text().splitlines(keepends=True)
        (run / "samples.jsonl").write_text("".join(lines[:1]))
        (run / "metrics.json").unlink()
        manifest = json.loads((run / "manifest.json").read_text())
        (run / "manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        (run / LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
        status = run_status(run, RunStore.open(run).manifest)
        code, out, _ = cli("runs", "list", "--runs", str(run.parent))
        listed = "interrupted" in out and "--resume" in out
        resumed = self.chair(str(run), "--resume")[0]
        same = (run / "samples.jsonl").read_text() == (ref / "samples.jsonl").read_text()
        return result(status == "interrupted" and listed and resumed == 0 and same,
                      f"status {status}, runs list shows it: {listed}, resumed identical: {same}")  # fmt: skip

    def duplicate_samples(self) -> tuple[str, str]:
        ref, run = self.reference(), Path(self.out())
        shutil.copytree(ref, run)
        (run / "samples.jsonl").write_text((run / "samples.jsonl").read_text() * 2)
        (run / "metrics.json").unlink()
        code, _, err = self.chair(str(run), "--resume")
        same = json.loads((run / "metrics.json").read_text()) == json.loads((ref / "metrics.json").read_text())
        return result(code == 0 and same and "duplicate" in err, f"exit {code}, metrics equal the reference: {same}")

    def conflicting_samples(self) -> tuple[str, str]:
        ref, run = self.reference(), Path(self.out())
        shutil.copytree(ref, run)
        first = json.loads((run / "samples.jsonl").read_text().splitlines()[0])
        with (run / "samples.jsonl").open("a") as fh:
            fh.write(json.dumps({**first, "response": "a giraffe and a zebra"}) + "\n")
        (run / "metrics.json").unlink()
        return clear_error(["chair", *self.images, *self.ann, *self.caps, *self.small, "--out", str(run), "--resume"],
                           "conflicting records")  # fmt: skip

    def torchrun(self) -> tuple[str, str]:
        ref = self.reference()
        run = self.out()
        args = ["chair", *self.images, *self.ann, *self.caps, *self.small, "--out", run]
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "halluc.cli"]
        done = subprocess.run([*launch, *args], capture_output=True, text=True, check=False)
        same = done.returncode == 0 and (Path(run) / "samples.jsonl").read_text() == (ref / "samples.jsonl").read_text()
        return result(same, f"exit {done.returncode}, samples equal a one-process run: {same}")

    # --- 2. inputs checked before the model loads ------------------------------------------------------------------
    def inputs(self) -> dict[str, Callable[[], tuple[str, str]]]:
        broken = self.root / "broken.json"
        broken.write_text('{"images": [')
        unlabelled = self.root / "coco_pope_random.json"
        unlabelled.write_text(json.dumps({"question_id": 1, "image": "x.png", "text": "Is there a dog?"}) + "\n")
        blocker = self.root / "a-file"
        blocker.write_text("x")
        base = ["--model", NO_MODEL, *self.images, *self.ann]
        cases = {
            "missing --captions file": (["chair", *base, "--captions", "/nope/caps.json"], ["caps.json"]),
            "malformed --captions file": (["chair", *base, "--captions", str(broken)], ["broken.json"]),
            "missing --gt-file": (["chair", "--model", NO_MODEL, *self.images, "--gt-file", "/nope/gt.json"],
                                  ["gt.json"]),
            "no ground truth at all": (["chair", "--model", NO_MODEL, *self.images], ["--gt-file"]),
            "intervention typo": (["chair", *base, "--intervention", "vhr:alpah=2"], ["alpah"]),
            "vhr:alpha=inf": (["chair", *base, "--intervention", "vhr:alpha=inf"], ["alpha"]),
            "vhr:alpha=1e400": (["chair", *base, "--intervention", "vhr:alpha=1e400"], ["alpha"]),
            "vhr:alpha=nan": (["chair", *base, "--intervention", "vhr:alpha=nan"], ["alpha"]),
            "pai:alpha=inf": (["chair", *base, "--intervention", "pai:alpha=inf"], ["alpha"]),
            "unwritable --out": (["chair", *base, "--out", str(blocker / "run")], ["cannot write"]),
            "toy images + --annotations": (["chair", "--model", NO_MODEL, "--images", "toy:val", *self.ann],
                                           ["--annotations", "toy:val"]),
            "toy images + --captions": (["chair", "--model", NO_MODEL, "--images", "toy:val", "--captions",
                                         "/nope/caps.json"], ["--captions", "toy:val"]),
            "POPE questions without labels": (["pope", *base, "--questions", str(unlabelled)], ["label"]),
            "POPE question file missing": (["pope", *base, "--questions", "/nope/q.json"], ["q.json"]),
            "unknown toy split": (["chair", "--model", NO_MODEL, "--images", "toy:vall"], ["'vall'", "toy:val"]),
            "missing image directory": (["chair", "--model", NO_MODEL, "--images", "/nope/imgs"], ["/nope/imgs"]),
        }  # fmt: skip
        probes: dict[str, Callable[[], tuple[str, str]]] = {}
        for name, (args, named) in cases.items():
            extra = [] if "--out" in args else ["--out", str(self.root / "never-written")]
            probes[name] = lambda args=args, named=named, extra=extra: clear_error([*args, *extra], *named)
        return probes

    def existing_run_without_resume(self) -> tuple[str, str]:
        return clear_error(["chair", "--model", NO_MODEL, *self.images, *self.ann, "--out", str(self.reference())],
                           "already holds a run", "--resume")  # fmt: skip

    def resume_with_smaller_batch(self) -> tuple[str, str]:
        ref, run = self.reference(), Path(self.out())
        shutil.copytree(ref, run)
        (run / "metrics.json").unlink()
        code, _, err = self.chair(str(run), "--resume", "--batch-size", "1")
        same = code == 0 and json.loads((run / "metrics.json").read_text()) == json.loads(
            (ref / "metrics.json").read_text()
        )
        return result(same, f"exit {code}, metrics equal the reference: {same}")

    def resume_with_other_budget(self) -> tuple[str, str]:
        ref, run = self.reference(), Path(self.out())
        shutil.copytree(ref, run)
        return clear_error(["chair", *self.images, *self.ann, *self.caps, "--limit", "3", "--max-new-tokens", "20",
                            "--out", str(run), "--resume"], "settings.max_new_tokens: 12 -> 20")  # fmt: skip

    # --- 4. weights and disk ---------------------------------------------------------------------------------------
    def truncated_weights(self) -> tuple[str, str]:
        from halluc.defaults import default_model

        model = self.root / "truncated-model"
        shutil.copytree(default_model(), model)
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return clear_error(["chair", "--model", str(model), *self.images, *self.ann, "--out", self.out()],
                           "cannot load model")  # fmt: skip

    def full_disk(self) -> tuple[str, str]:
        run = Path(self.out())
        run.mkdir()
        (run / f".chair_details.json.tmp-{os.getpid()}").symlink_to("/dev/full")
        outcome = clear_error(
            ["chair", *self.images, *self.ann, *self.caps, *self.small, "--out", str(run)], "No space left on device"
        )
        leftovers = [p.name for p in run.iterdir() if ".tmp" in p.name]
        return outcome if not leftovers else ("WRONG", f"left {leftovers}")

    def corrupt_image(self) -> tuple[str, str]:
        folder = self.root / "images-with-a-corrupt-one"
        shutil.copytree(self.root / "world" / "images" / "val", folder)
        victim = sorted(folder.iterdir())[0]
        victim.write_bytes(b"not a png")
        run = Path(self.out())
        code, _, err = cli("chair", "--images", str(folder), *self.ann, *self.caps, *self.small, "--out", str(run))
        errors = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()] if code == 0 else []
        recorded = [r for r in errors if "error" in r]
        ok = code == 0 and len(recorded) == 1 and victim.name in recorded[0]["error"]
        return ("error record", recorded[0]["error"][:120]) if ok else ("WRONG", f"exit {code}: {err[-300:]}")

    # --- 5. dashboard ---------------------------------------------------------------------------------------------
    def nested_runs(self) -> tuple[str, str]:
        sys.path.insert(0, str(ROOT))
        from app import data
        from benchmarks.suite import cell_dir

        root = self.root / "demo-like"
        shutil.copytree(self.reference(), cell_dir(root, "baseline", "toy:val") / "chair")
        ids = [run.id for run in data.scan_runs(root).runs]
        return result(ids == ["baseline__toy-val/chair"], f"dashboard finds {ids}")

    def image_outside(self) -> tuple[str, str]:
        sys.path.insert(0, str(ROOT))
        from app import data

        secret = self.root / "secret.png"
        secret.write_bytes(b"x")
        runs = self.root / "runs-for-dashboard"
        shutil.copytree(self.reference(), runs / "chair")
        found = data.locate(data.scan_runs(runs).by_id("chair"), runs, secret)
        return result(found is None, f"a sample naming {secret.name} outside resolves to {found}")


def main() -> int:
    """Run every probe and print how each ended."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (emptied first)")
    parser.add_argument("--torchrun", action="store_true", help="also probe torchrun --nproc_per_node 2 (slow)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    p = Probes(args.out)
    probes: dict[str, Callable[[], tuple[str, str]]] = {
        "second writer on a running run": p.second_writer,
        "writer killed, then runs list + --resume": p.killed_writer_then_resume,
        "every sample recorded twice": p.duplicate_samples,
        "conflicting duplicate sample": p.conflicting_samples,
        **p.inputs(),
        "existing run without --resume": p.existing_run_without_resume,
        "resume with a smaller --batch-size": p.resume_with_smaller_batch,
        "resume with another --max-new-tokens": p.resume_with_other_budget,
        "truncated model.safetensors": p.truncated_weights,
        "disk full while writing results": p.full_disk,
        "corrupt image file": p.corrupt_image,
        "dashboard over the demo's nested runs": p.nested_runs,
        "sample image outside runs/dataset folders": p.image_outside,
    }
    if args.torchrun:
        probes["torchrun --nproc_per_node 2 on CPU"] = p.torchrun
    rows = []
    for name, probe in probes.items():
        outcome, detail = probe()
        rows.append({"probe": name, "outcome": outcome, "detail": detail})
        print(f"{name:<44} {outcome:<15} {detail}", flush=True)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    print(json.dumps({"probes": len(rows), **counts}))
    (args.out / "report.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if counts.get("WRONG") else 0


if __name__ == "__main__":
    sys.exit(main())
