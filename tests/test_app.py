"""Every dashboard page under Streamlit's AppTest, on the fixture runs and on broken, empty and running runs dirs."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import data
from benchmarks.compare import compare_runs
from halluc.errors import ConfigError, InputDataError

MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
FIXTURES = Path(__file__).parent / "fixtures" / "runs"
PAGES = ["runs", "compare", "samples", "pope", "heads", "pairs", "crosscheck"]


def _page(name: str, **query: str) -> AppTest:
    """Run the app, switch to page ``name`` with the given URL query, and return the finished AppTest."""
    at = AppTest.from_file(str(MAIN), default_timeout=60).run()
    at.switch_page(f"views/{name}.py")
    at.query_params.update(query)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _html(at: AppTest) -> str:
    return "\n".join(e.proto.body for e in at.get("html"))


def _charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _metrics(run: str) -> dict:
    return json.loads((FIXTURES / run / "metrics.json").read_text())


@pytest.fixture
def fixture_runs(monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(data.RUNS_ENV, str(FIXTURES))
    return FIXTURES


@pytest.fixture
def runs_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable copy of the fixture runs that a test may break."""
    root = tmp_path / "runs"
    shutil.copytree(FIXTURES, root, ignore=shutil.ignore_patterns("*.py"))
    monkeypatch.setenv(data.RUNS_ENV, str(root))
    return root


def test_runs_page_lists_runs_with_key_metrics_and_filters(fixture_runs: Path) -> None:
    at = _page("runs")
    table = at.dataframe[0].value
    expected = {p.name for p in fixture_runs.iterdir() if (p / "manifest.json").exists()}
    assert set(table["run"]) == expected
    row = table.set_index("run").loc["chair-baseline"]
    assert row["CHAIR_i"] == pytest.approx(_metrics("chair-baseline")["CHAIR_i"])
    assert row["job"] == "chair" and row["dataset"] == "toy:val" and row["status"] == "finished"
    assert table.set_index("run").loc["pope-baseline", "POPE f1"] == pytest.approx(
        _metrics("pope-baseline")["mean"]["f1"]
    )
    at.multiselect(key="filter-job").set_value(["pope"]).run()
    assert list(at.dataframe[0].value["run"]) == ["pope-baseline"]


def test_runs_page_shows_a_protocols_mean_and_std_over_its_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks.protocols import SUMMARY_FILE, get_protocol, summarise_splits

    assert data.PROTOCOL_SUMMARY == SUMMARY_FILE
    rows = []
    for seed, fixture in enumerate(("chair-baseline", "chair-vhr-2")):
        shutil.copytree(FIXTURES / fixture, tmp_path / "vhr" / f"split{seed + 1}-seed{seed}")
        rows.append({"seed": seed, "run": f"split{seed + 1}-seed{seed}", "metrics": _metrics(fixture)})
    summary = summarise_splits(get_protocol("vhr"), rows)
    (tmp_path / "vhr" / SUMMARY_FILE).write_text(json.dumps(summary))
    (tmp_path / "broken").mkdir()
    shutil.copytree(FIXTURES / "chair-baseline", tmp_path / "broken" / "split1-seed0")
    (tmp_path / "broken" / SUMMARY_FILE).write_text("{not json")
    monkeypatch.setenv(data.RUNS_ENV, str(tmp_path))
    at = _page("runs")
    assert at.subheader[0].value == "Protocol vhr: vhr"
    table = at.dataframe[1].value.set_index("metric")
    chair_i = summary["metrics"]["CHAIR_i"]
    assert table.loc["CHAIR_i", "mean ± std"] == f"{chair_i['mean']:.3f} ± {chair_i['std']:.3f}"
    assert table.loc["CHAIR_i", ["split 1", "split 2"]].tolist() == pytest.approx(chair_i["values"])
    assert "2 of 5 splits" in _texts(at.caption) and "incomplete" in _texts(at.caption)
    assert "broken/protocol_summary.json is not valid JSON" in _texts(at.warning)


def test_compare_page_metrics_deltas_and_charts(fixture_runs: Path) -> None:
    at = _page("compare")
    base, other = _metrics("chair-baseline"), _metrics("chair-vhr-2")
    at.multiselect(key="compare-runs-chair").set_value(["chair-baseline", "chair-vhr-2"]).run()
    at.selectbox(key="base-chair").set_value("chair-baseline").run()
    cards = {(m.label, m.value) for m in at.metric}
    assert ("CHAIR_i", f"{base['CHAIR_i']:.3f}") in cards and ("CHAIR_i", f"{other['CHAIR_i']:.3f}") in cards
    deltas = [m.proto.delta for m in at.metric if m.label == "recall" and m.proto.delta]
    assert deltas == [f"{other['recall'] - base['recall']:+.3f}"]
    table = at.dataframe[0].value
    assert table.loc["CHAIR_s", "Δ chair-vhr-2"] == pytest.approx(other["CHAIR_s"] - base["CHAIR_s"])
    paired = at.dataframe[1].value  # what `halluc compare chair-baseline chair-vhr-2` reports
    expected = {r.metric: r for r in compare_runs(fixture_runs / "chair-baseline", fixture_runs / "chair-vhr-2").rows}
    for metric in ("CHAIR_s", "CHAIR_i", "recall"):
        row = expected[metric]
        assert paired.loc[metric, "difference"] == pytest.approx(row.difference.estimate)
        assert paired.loc[metric, ["CI low", "CI high"]].tolist() == pytest.approx(
            [row.difference.low, row.difference.high]
        )
        assert paired.loc[metric, "p"] == pytest.approx(row.p_value) and paired.loc[metric, "test"] == row.test
    specs = [json.loads(c.proto.spec) for c in _charts(at)]
    assert len(specs) == 2 and any("layer" in s for s in specs)  # bars + layered trade-off scatter
    at.radio(key="compare-job").set_value("pope").run()
    assert ("mean f1", f"{_metrics('pope-baseline')['mean']['f1']:.3f}") in {(m.label, m.value) for m in at.metric}


def _hallucinated_sample(run: str) -> tuple[dict, dict]:
    """The first caption of a fixture run with a hallucinated mention, and that mention."""
    for detail in json.loads((FIXTURES / run / "chair_details.json").read_text()):
        for mention in detail["mentions"]:
            if mention["hallucinated"]:
                return detail, mention
    pytest.fail(f"fixture {run} has no hallucinated mention; regenerate it with the trained toy model")


def test_samples_page_highlights_hallucinated_mentions(fixture_runs: Path) -> None:
    detail, mention = _hallucinated_sample("chair-baseline")
    at = _page("samples", run="chair-baseline", image=str(detail["image_id"]))
    assert at.subheader[0].value.startswith(f"image {detail['image_id']}")
    word = detail["caption"][mention["start"] : mention["end"]]
    assert f'<mark class="halluc" title="{mention["category"]}: hallucinated"' in _html(at)
    assert f">{word}</mark>" in _html(at)
    assert len(at.get("imgs")) + len(at.get("image")) == 1
    shown = _texts(at.markdown)
    assert ", ".join(detail["gt_objects"]) in shown and mention["category"] in shown


def test_samples_page_navigation_search_and_side_by_side(fixture_runs: Path) -> None:
    records = [json.loads(line) for line in (FIXTURES / "chair-baseline" / "samples.jsonl").read_text().splitlines()]
    at = _page("samples", run="chair-baseline")
    assert at.subheader[0].value.startswith(f"image {records[0]['image_id']} (1 of {len(records)})")
    assert at.button[0].disabled and not at.button[1].disabled  # prev, next
    at.button[1].click().run()
    assert at.subheader[0].value.startswith(f"image {records[1]['image_id']}")
    assert not at.button[0].disabled
    assert at.query_params["image"] == str(records[1]["image_id"])
    at.text_input(key="sample-search").set_value(str(records[-1]["image_id"])).run()
    assert at.subheader[0].value.startswith(f"image {records[-1]['image_id']}")
    at.text_input(key="sample-search").set_value("no-such-id").run()
    assert "no-such-id" in _texts(at.warning)
    at.selectbox(key="sample-other").set_value("chair-vhr-2").run()
    other = [json.loads(x) for x in (FIXTURES / "chair-vhr-2" / "samples.jsonl").read_text().splitlines()]
    html = _html(at)
    assert html.count('<div class="caption"') == 2
    assert "**chair-vhr-2**" in _texts(at.markdown)
    assert {r["image_id"]: r for r in other}[records[-1]["image_id"]]["response"][:10] in html


def test_pope_page_per_split_metrics_confusion_and_answers(fixture_runs: Path) -> None:
    at = _page("pope", run="pope-baseline")
    metrics = _metrics("pope-baseline")
    values = [m.value for m in at.metric if m.label == "accuracy"]
    assert values == [f"{metrics[s]['accuracy']:.3f}" for s in ("random", "popular", "adversarial", "mean")]
    table = at.dataframe[0].value.set_index("split")
    assert list(table.index) == ["random", "popular", "adversarial", "mean"]
    assert table.loc["adversarial", "yes_ratio"] == pytest.approx(metrics["adversarial"]["yes_ratio"])
    confusion = json.loads(_charts(at)[1].proto.spec)
    assert len(confusion["hconcat"]) == 3
    answers = at.dataframe[1].value
    assert len(answers) == sum(metrics[s]["n"] for s in ("random", "popular", "adversarial"))
    at.checkbox(key="pope-wrong").check().run()
    assert (at.dataframe[1].value["correct"] == False).all()  # noqa: E712 (pandas element-wise)


def test_heads_page_draws_one_heatmap_per_matrix(fixture_runs: Path) -> None:
    at = _page("heads")
    heads = json.loads((FIXTURES / "heads-toy" / "heads.json").read_text())
    specs = [json.loads(c.proto.spec) for c in _charts(at)]
    assert sorted(s["title"] for s in specs) == ["image_attention", "vhd"]
    assert f"{len(heads['vhd'])} layers x {len(heads['vhd'][0])} heads" in _texts(at.caption)
    best = max((v, layer, h) for layer, row in enumerate(heads["vhd"]) for h, v in enumerate(row))
    assert f"L{best[1]}H{best[2]}" in _texts(at.markdown)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pairs_page_marks_objects_and_filters_by_type(fixture_runs: Path) -> None:
    pairs = _jsonl(FIXTURES / "sentinel-demo" / "pairs.jsonl")
    assert pairs, "fixture sentinel-demo has no pairs; regenerate it with tests/fixtures/runs/make_fixtures.py"
    at = _page("pairs")
    html = _html(at)
    first = pairs[0]
    assert f'<mark class="halluc" title="{first["lose_hallucinated"][0]}"' in html
    assert f'<mark class="grounded" title="{first["win_objects"][0]}"' in html
    assert f"{len(pairs)} of {len(pairs)} pairs" in _texts(at.caption)
    kind = sorted({p["type"] for p in pairs})[-1]
    chosen = [p for p in pairs if p["type"] == kind]
    at.multiselect(key="pairs-type").set_value([kind]).run()
    assert f"{len(chosen)} of {len(pairs)} pairs" in _texts(at.caption)
    assert f'<mark class="halluc" title="{chosen[0]["lose_hallucinated"][0]}"' in _html(at)
    at.text_input(key="pairs-search").set_value("no such words").run()
    assert f"0 of {len(pairs)} pairs" in _texts(at.caption)


def test_crosscheck_page_ranking_and_sentences(fixture_runs: Path) -> None:
    report = json.loads((FIXTURES / "crosscheck-demo" / "crosscheck.json").read_text())
    by_score = sorted(report["systems"], key=lambda row: row["score"])  # lowest inconsistency first
    at = _page("crosscheck")
    ranking = at.dataframe[0].value
    assert list(ranking["system"]) == [row["system"] for row in by_score]
    assert list(ranking["rank"]) == list(range(1, len(by_score) + 1))
    metrics = {(m.label, m.value) for m in at.metric}
    assert all((name, f"{value:.3f}") in metrics for name, value in report["correlations"].items())
    unsupported = next(
        o["object"] for row in report["sentences"] for o in row["objects"] if o["status"] == "unsupported"
    )
    assert f'<mark class="halluc" title="{unsupported}"' in _html(at)
    best = by_score[0]["system"]
    at.multiselect(key="cc-systems").set_value([best]).run()
    n_best = sum(row["system"] == best for row in report["sentences"])
    assert f"{n_best} sentences" in _texts(at.caption)


@pytest.mark.parametrize("name", PAGES)
def test_every_page_explains_an_empty_runs_dir(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data.RUNS_ENV, str(tmp_path))
    at = _page(name)
    assert f"No runs in {tmp_path.resolve()}" in _texts(at.info)


@pytest.mark.parametrize(
    ("name", "file"), [("heads", "heads.json"), ("pairs", "pairs.jsonl"), ("crosscheck", "crosscheck.json")]
)
def test_pages_of_unbuilt_jobs_explain_what_is_missing(name: str, file: str, runs_copy: Path) -> None:
    for run in ("heads-toy", "sentinel-demo", "crosscheck-demo"):
        shutil.rmtree(runs_copy / run)
    at = _page(name)
    assert not at.error
    assert f"`{file}`" in _texts(at.info) and "app/README.md" in _texts(at.info)


@pytest.mark.parametrize(
    ("name", "removed", "command"),
    [("pope", ("pope-baseline",), "halluc pope"), ("samples", ("chair-baseline", "chair-vhr-2"), "halluc chair")],
)
def test_pages_without_a_run_of_their_job_name_the_command(
    name: str, removed: tuple[str, ...], command: str, runs_copy: Path
) -> None:
    for run in removed:
        shutil.rmtree(runs_copy / run)
    at = _page(name)
    assert not at.error
    assert f"`{command}`" in _texts(at.info)


def test_running_run_shows_progress_and_unscored_samples(runs_copy: Path) -> None:
    run = runs_copy / "chair-baseline"
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.update(status="running", finished_at=None)
    (run / "manifest.json").write_text(json.dumps(manifest))
    # a live writer holds the run's lock (without one the run is "interrupted": tests/test_faults.py)
    (run / "writer.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    lines = (run / "samples.jsonl").read_text().splitlines()
    (run / "samples.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])  # torn last record
    (run / "metrics.json").unlink()
    (run / "chair_details.json").unlink()
    at = _page("runs")
    assert any(f"chair-baseline is running: 2 of {len(lines)}" in str(p.proto.text) for p in at.get("progress"))
    at = _page("samples", run="chair-baseline")
    assert f"chair-baseline is running: 2 of {len(lines)} samples" in _texts(at.warning)
    assert "Not scored yet" in _texts(at.caption) and at.subheader[0].value.endswith("(1 of 2)")


def test_malformed_files_give_messages_not_tracebacks(runs_copy: Path) -> None:
    (runs_copy / "chair-vhr-2" / "manifest.json").write_text("{not json")
    (runs_copy / "pope-baseline" / "metrics.json").write_text("[1, 2")
    n_samples = len((runs_copy / "chair-baseline" / "samples.jsonl").read_text().splitlines())
    with (runs_copy / "chair-baseline" / "samples.jsonl").open("a") as fh:
        fh.write("{broken\n")
    (runs_copy / "heads-toy" / "heads.json").write_text(json.dumps({"vhd": [[1, 2], [3]]}))
    (runs_copy / "crosscheck-demo" / "crosscheck.json").write_text(json.dumps({"systems": [{"system": "x"}]}))
    n_pairs = len((runs_copy / "sentinel-demo" / "pairs.jsonl").read_text().splitlines())
    with (runs_copy / "sentinel-demo" / "pairs.jsonl").open("a") as fh:
        fh.write('{"y_win": 3}\n')
    at = _page("runs")
    warnings = _texts(at.warning)
    assert "chair-vhr-2" in warnings and "not valid JSON" in warnings
    assert "chair-vhr-2" not in set(at.dataframe[0].value["run"])
    assert "pope-baseline" in _texts(_page("pope", run="pope-baseline").warning)
    assert f"samples.jsonl:{n_samples + 1}: torn last line skipped (not valid JSON" in _texts(
        _page("samples", run="chair-baseline").warning
    )
    assert "rectangular array" in _texts(_page("heads").error)
    assert "numeric 'score'" in _texts(_page("crosscheck").error)
    assert f"pairs.jsonl record {n_pairs + 1}" in _texts(_page("pairs").warning)


def test_runs_outside_the_runs_dir_are_refused(runs_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "secret-run"
    shutil.copytree(runs_copy / "chair-vhr-2", outside)
    (runs_copy / "linked").symlink_to(outside, target_is_directory=True)
    (runs_copy / "chair-baseline" / "heads.json").symlink_to(runs_copy / "heads-toy" / "heads.json")
    scan = data.scan_runs(runs_copy)
    assert "linked" not in {r.id for r in scan.runs} and any("links outside" in p for p in scan.problems)
    with pytest.raises(InputDataError, match="outside its run directory"):
        data.run_file(scan.by_id("chair-baseline"), "heads.json")
    with pytest.raises(ConfigError, match="valid runs"):
        scan.by_id("../elsewhere/secret-run")
    at = _page("samples", run="../elsewhere/secret-run")
    assert at.selectbox(key="pick-run").value != "../elsewhere/secret-run"


def test_assets_fallback_and_intervention_labels(tmp_path: Path) -> None:
    scan = data.scan_runs(FIXTURES)
    run = scan.by_id("chair-baseline")
    image_dir = run.manifest["images"]["image_dir"]
    found = data.locate(run, FIXTURES, Path(image_dir) / "world_val_000002000001.png")
    assert found is not None and found.is_file()
    assert data.locate(run, FIXTURES, "/nowhere/none.png") is None
    assert data.intervention_label(None) == "none"
    assert data.intervention_label({"name": "vhr", "alpha": 2.0}) == "vhr(alpha=2.0)"
    assert data.intervention_label([{"name": "vhr"}, {"name": "pai", "alpha": 0.5}]) == "vhr+pai(alpha=0.5)"
    assert data.intervention_strength({"name": "pai", "cfg": True, "gamma": 1.1, "alpha": 0.5}) == ("pai", 0.5)
    assert data.intervention_strength({"name": "token_emphasis", "local": 0.7, "spatial": 0.3}) == (
        "token_emphasis",
        0.7,
    )
    composite = {"name": "composite", "parts": [{"name": "vhr", "alpha": 2.0}, {"name": "pai"}]}
    assert data.intervention_strength(composite) == ("vhr(alpha=2.0)+pai", None)
    torn = tmp_path / "x.jsonl"
    torn.write_text('{"a": 1}\n[2]\n')
    assert data.read_jsonl(torn) == (
        [{"a": 1}],
        [f"{torn}:2: torn last line skipped (expected a JSON object, got list)"],
    )
    torn.write_text('{"a": 1}\n[2]\n{"b"')
    assert data.read_jsonl(torn) == ([], [f"{torn}:2: expected a JSON object, got list"])


def test_cli_dashboard_rejects_a_missing_runs_dir(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from halluc.cli import app

    result = CliRunner().invoke(app, ["dashboard", "--runs", str(tmp_path / "nope")])
    assert isinstance(result.exception, InputDataError) and "nope" in str(result.exception)


def test_cli_dashboard_runs_this_app_on_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast twin of tests/test_app_e2e.py (marked slow): ``halluc dashboard`` starts streamlit on this app."""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from halluc.cli import app

    calls: list[tuple[list[str], dict[str, str]]] = []

    class Server:  # the dashboard command owns its server process (started with Popen, stopped with it)
        def __init__(self, command: list[str], env: dict[str, str]) -> None:
            calls.append((command, env))

        def wait(self, timeout: float | None = None) -> int:
            return 0

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Server)
    result = CliRunner().invoke(app, ["dashboard", "--runs", str(FIXTURES), "--port", "8765"])
    assert result.exit_code == 0, result.output
    [(command, env)] = calls
    assert command[:5] == [sys.executable, "-m", "streamlit", "run", str(MAIN)]
    options = dict(zip(command[5::2], command[6::2], strict=True))
    assert options["--server.address"] == "127.0.0.1" and options["--server.port"] == "8765"
    assert options["--server.headless"] == "true"
    assert env[data.RUNS_ENV] == str(FIXTURES.resolve())
