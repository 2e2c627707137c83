"""Run store and generation runner: append-only samples, torn-tail recovery, resume, sharding, error records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.runner import GenerationSettings, Request, run_generation
from halluc.errors import InputDataError, OutputLocationError
from halluc.records import TornRecordWarning, read_records
from halluc.runs import RunStore, list_runs


class EchoModel:
    """Stands in for an LVLM: answers with the prompt and the image width, and counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, images, prompts, **kwargs):
        self.calls += 1
        return [f"{p}|{img.width if img else 0}" for img, p in zip(images, prompts, strict=True)]


@dataclass
class FakeState:
    num_processes: int
    process_index: int

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    def wait_for_everyone(self) -> None:
        pass


@pytest.fixture
def requests(tmp_path: Path) -> list[Request]:
    reqs = []
    for i in range(7):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (10 + i, 8)).save(path)
        reqs.append(Request(str(i), str(path), f"p{i}", {"image_id": i}))
    return reqs


def test_append_resume_and_torn_tail(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run", {"config_hash": "a"})
    store.append([{"id": "1", "x": 1}, {"id": "2", "x": 2}])
    with store.samples_path().open("a") as fh:
        fh.write('{"id": "3", "x"')  # a writer killed mid-record
    with pytest.warns(TornRecordWarning, match=r"samples.jsonl:3: torn last line skipped"):
        assert [r["id"] for r in read_records(store.samples_path())] == ["1", "2"]
    with pytest.warns(TornRecordWarning, match=r"samples.jsonl:3: torn last line removed"):
        resumed = RunStore.create(tmp_path / "run", {"config_hash": "a"}, resume=True)
    resumed.append([{"id": "3", "x": 3}])
    assert [r["id"] for r in resumed.samples()] == ["1", "2", "3"]
    assert resumed.manifest["resumed_at"]


def test_existing_run_needs_resume_and_same_config(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "run", {"config_hash": "a"})
    store.append([{"id": "1"}])
    with pytest.raises(OutputLocationError, match="--resume"):
        RunStore.create(tmp_path / "run", {"config_hash": "a"})
    with pytest.raises(OutputLocationError, match="config hash"):
        RunStore.create(tmp_path / "run", {"config_hash": "b"}, resume=True)


def test_unwritable_output_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputLocationError, match="cannot write to output directory"):
        RunStore.create(blocker / "run", {})


def test_metrics_are_atomic_and_listed(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path / "a" / "run", {"job": "chair"})
    store.write_metrics({"CHAIR_i": 0.1})
    store.finish()
    assert store.metrics() == {"CHAIR_i": 0.1}
    assert not list((tmp_path / "a" / "run").glob(".*tmp*"))
    assert [r.path for r in list_runs(tmp_path)] == [store.path]
    with pytest.raises(InputDataError, match="not a run directory"):
        RunStore.open(tmp_path)


def test_runner_records_bad_images_and_goes_on(tmp_path: Path, requests: list[Request]) -> None:
    Path(requests[2].image).write_bytes(b"not a png")
    bad = [*requests, Request("missing", str(tmp_path / "nope.png"), "p", {})]
    store = RunStore.create(tmp_path / "run", {})
    summary = run_generation(EchoModel(), bad, store, GenerationSettings(batch_size=3), progress=False)
    samples = {s["id"]: s for s in store.samples()}
    assert summary.errors == 2 and len(samples) == 8
    assert "cannot read image" in samples["2"]["error"] and "not found" in samples["missing"]["error"]
    assert samples["3"]["response"] == "p3|13"


def test_runner_resume_skips_finished_samples(tmp_path: Path, requests: list[Request]) -> None:
    store = RunStore.create(tmp_path / "run", {})
    run_generation(EchoModel(), requests[:4], store, GenerationSettings(batch_size=2), progress=False)
    model = EchoModel()
    summary = run_generation(model, requests, store, GenerationSettings(batch_size=2), progress=False)
    assert summary.skipped == 4 and summary.generated == 3 and model.calls == 2
    assert [s["id"] for s in store.samples()] == [r.id for r in requests]


def test_sharded_run_equals_single_process_run(tmp_path: Path, requests: list[Request]) -> None:
    single = RunStore.create(tmp_path / "single", {})
    run_generation(EchoModel(), requests, single, GenerationSettings(batch_size=2), progress=False)
    sharded = RunStore.create(tmp_path / "sharded", {})
    for rank in (1, 0):  # the main process merges after everyone has finished
        run_generation(
            EchoModel(), requests, sharded, GenerationSettings(batch_size=2), progress=False, state=FakeState(2, rank)
        )
    assert sharded.samples() == single.samples()
    assert not list(sharded.path.glob("samples.rank*.jsonl"))
    assert json.loads((sharded.path / "manifest.json").read_text())["status"] == "running"
