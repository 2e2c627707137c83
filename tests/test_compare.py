"""halluc compare: paired differences of two runs on their shared samples, checked against independent computations."""

import itertools
import json
import math
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import pope
from benchmarks.compare import PairedCounts, compare_runs
from halluc.errors import ConfigError, InputDataError

MANIFEST = {"model": "toy", "images": {"name": "toy:shift"}, "prompt": "Describe.", "settings": {"max_new_tokens": 64}}


def _run(path: Path, job: str, records: list[dict], questions: list[dict] | None = None, **manifest) -> Path:
    """A finished run directory as the CHAIR or POPE job writes it (manifest plus its scored artefact)."""
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({**MANIFEST, "job": job, "status": "finished", **manifest}))
    (path / ("chair_details.json" if job == "chair" else "pope_scored.json")).write_text(json.dumps(records))
    if questions is not None:
        (path / "pope_questions.json").write_text(json.dumps(questions))
    return path


def _caption(image_id: int, hallucinated: int, grounded: int, gt: int = 3) -> dict:
    """A chair_details record: ``grounded`` mentions of ground-truth objects and ``hallucinated`` of absent ones."""
    truth = [f"g{i}" for i in range(gt)]
    said = [(truth[i % gt], False) for i in range(grounded)] + [(f"h{i}", True) for i in range(hallucinated)]
    mentions = [{"word": c, "category": c, "start": 0, "end": 1, "hallucinated": h} for c, h in said]
    return {
        "image_id": image_id,
        "caption": "",
        "mentions": mentions,
        "gt_objects": truth,
        "hallucinated": hallucinated > 0,
    }


def _chair_runs(tmp_path: Path, n: int, seed: int = 0, **b_manifest) -> tuple[Path, Path, list, list]:
    rng = random.Random(seed)
    a = [_caption(i, rng.choice([0, 0, 1, 2]), rng.randint(1, 4)) for i in range(n)]
    b = [_caption(i, rng.choice([0, 0, 0, 1]), rng.randint(1, 3)) for i in range(n)]
    return _run(tmp_path / "a", "chair", a), _run(tmp_path / "b", "chair", b, **b_manifest), a, b


def _chair_i(records: list[dict]) -> float:
    mentions = [m for r in records for m in r["mentions"]]
    return sum(m["hallucinated"] for m in mentions) / len(mentions)


def _mcnemar(a: list[bool], b: list[bool]) -> float:
    """Two-sided exact McNemar p-value from the binomial sum, written out."""
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n = only_a + only_b
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n) if n else 1.0


def _percentile_ci(values: np.ndarray) -> tuple[float, float]:
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def test_chair_values_ci_and_p_values_against_independent_computations(tmp_path: Path) -> None:
    run_a, run_b, a, b = _chair_runs(tmp_path, 120)
    result = compare_runs(run_a, run_b, n_resamples=10_000, seed=1)
    rows = {r.metric: r for r in result.rows}
    assert list(rows) == ["CHAIR_s", "CHAIR_i", "CHAIR_i_distinct", "recall"]
    assert (result.n_shared, result.n_only_a, result.n_only_b, result.unit) == (120, 0, 0, "images")
    row = rows["CHAIR_i"]
    assert (row.a, row.b) == pytest.approx((_chair_i(a), _chair_i(b)))
    assert row.difference.estimate == pytest.approx(_chair_i(b) - _chair_i(a))
    # the CI: a bootstrap written here (another generator, another seed) agrees within Monte Carlo error
    rng = np.random.default_rng(12345)
    hallucinated = np.array([[sum(m["hallucinated"] for m in r["mentions"]) for r in x] for x in (a, b)])
    mentions = np.array([[len(r["mentions"]) for r in x] for x in (a, b)])
    draws = rng.integers(0, 120, size=(20_000, 120))
    gaps = (hallucinated[1][draws].sum(1) / mentions[1][draws].sum(1)) - (
        hallucinated[0][draws].sum(1) / mentions[0][draws].sum(1)
    )
    low, high = _percentile_ci(gaps)
    assert row.difference.low == pytest.approx(low, abs=0.006) and row.difference.high == pytest.approx(high, abs=0.006)
    # CHAIR_s: a mean of paired differences, so its CI is close to the normal one; McNemar by the binomial sum
    said_a, said_b = [r["hallucinated"] for r in a], [r["hallucinated"] for r in b]
    d = np.array(said_b, dtype=float) - np.array(said_a, dtype=float)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    s = rows["CHAIR_s"]
    assert s.difference.estimate == pytest.approx(d.mean())
    assert s.difference.low == pytest.approx(d.mean() - half, abs=0.015)
    assert s.difference.high == pytest.approx(d.mean() + half, abs=0.015)
    assert s.test == "mcnemar" and s.p_value == pytest.approx(_mcnemar(said_a, said_b))
    assert s.p_value < 0.05 and s.difference.high < 0  # B hallucinates in fewer captions, clearly


def test_permutation_p_value_is_the_exact_enumeration_for_few_images(tmp_path: Path) -> None:
    run_a, run_b, a, b = _chair_runs(tmp_path, 10, seed=3)
    row = next(r for r in compare_runs(run_a, run_b, n_resamples=2000).rows if r.metric == "CHAIR_i")
    pairs = list(zip(a, b, strict=True))  # 2**10 = 1024 swaps <= 2000: scipy enumerates them all
    observed = _chair_i(b) - _chair_i(a)
    null = []
    for swap in itertools.product((False, True), repeat=len(pairs)):
        first = [y if s else x for (x, y), s in zip(pairs, swap, strict=True)]
        second = [x if s else y for (x, y), s in zip(pairs, swap, strict=True)]
        null.append(_chair_i(second) - _chair_i(first))
    null = np.array(null)
    expected = min(1.0, 2 * min(np.mean(null >= observed - 1e-12), np.mean(null <= observed + 1e-12)))
    assert row.test == "permutation" and row.p_value == pytest.approx(expected)
    assert row.p_value == pytest.approx(_scipy_permutation(a, b, 2000))


def _scipy_permutation(a: list[dict], b: list[dict], n_resamples: int) -> float:
    """scipy.stats.permutation_test's paired test of the CHAIR_i difference (slow for many images)."""
    from scipy import stats

    counts = np.array([[sum(m["hallucinated"] for m in r["mentions"]), len(r["mentions"])] for r in (*a, *b)])

    def statistic(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        (top_x, bottom_x), (top_y, bottom_y) = np.moveaxis(counts[x], -1, 0), np.moveaxis(counts[y], -1, 0)
        return top_y.sum(-1) / bottom_y.sum(-1) - top_x.sum(-1) / bottom_x.sum(-1)

    rows = np.arange(len(a))
    test = stats.permutation_test(
        (rows, rows + len(a)), statistic, permutation_type="samples", vectorized=True, n_resamples=n_resamples, rng=0
    )
    return float(test.pvalue)


def test_random_permutation_p_value_agrees_with_scipy(tmp_path: Path) -> None:
    rng = random.Random(5)
    a, b = ([_caption(i, rng.choice([0, 0, 1, 2]), rng.randint(1, 4)) for i in range(80)] for _ in "ab")
    run_a, run_b = _run(tmp_path / "a", "chair", a), _run(tmp_path / "b", "chair", b)
    row = next(r for r in compare_runs(run_a, run_b, n_resamples=20_000).rows if r.metric == "CHAIR_i")
    assert 0.01 < row.p_value < 0.5  # a case where the p-value is not at either end
    assert row.p_value == pytest.approx(_scipy_permutation(a, b, 20_000), abs=0.015)


def _pope_records(rng: random.Random, n: int, accuracy: float) -> tuple[list[dict], list[dict]]:
    """(scored answers, questions) of three splits; each answer right with probability ``accuracy``."""
    scored, questions = [], []
    for split in pope.SPLITS:
        for qid in range(1, n + 1):
            label = qid % 2 == 0
            prediction = label if rng.random() < accuracy else not label
            scored.append({"question_id": qid, "split": split, "label": label, "prediction": prediction,
                           "correct": prediction == label})  # fmt: skip
            questions.append({"question_id": qid, "split": split, "image": f"{qid}.jpg", "text": f"Is there a {qid}?",
                              "label": "yes" if label else "no"})  # fmt: skip
    return scored, questions


def test_pope_values_are_pope_metrics_and_accuracy_gets_mcnemar(tmp_path: Path) -> None:
    rng = random.Random(0)
    (sa, qa), (sb, _) = _pope_records(rng, 150, 0.7), _pope_records(rng, 150, 0.85)
    sb = [{**r, "label": a["label"]} for r, a in zip(sb, sa, strict=True)]  # same labels
    sb = [{**r, "correct": r["prediction"] == r["label"]} for r in sb]
    result = compare_runs(_run(tmp_path / "a", "pope", sa, qa), _run(tmp_path / "b", "pope", sb, qa), n_resamples=2000)
    rows = {r.metric: r for r in result.rows}
    assert result.unit == "questions" and result.n_shared == 450
    expected = pope.aggregate(sa), pope.aggregate(sb)  # scikit-learn's metrics, per split and their mean
    for group in (*pope.SPLITS, "mean"):
        for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
            row = rows[f"{group} {key}"]
            assert (row.a, row.b) == pytest.approx((expected[0][group][key], expected[1][group][key])), (group, key)
    right = [[r["correct"] for r in s if r["split"] == "popular"] for s in (sa, sb)]
    assert rows["popular accuracy"].test == "mcnemar"
    assert rows["popular accuracy"].p_value == pytest.approx(_mcnemar(*right))
    d = np.array(right[1], dtype=float) - np.array(right[0], dtype=float)  # accuracy: a mean of paired differences
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    ci = rows["popular accuracy"].difference
    assert (ci.low, ci.high) == pytest.approx((d.mean() - half, d.mean() + half), abs=0.015)
    assert rows["mean f1"].test == "permutation" and rows["mean f1"].difference.low > 0


def test_shared_samples_left_out_and_manifest_differences(tmp_path: Path) -> None:
    a = [_caption(i, i % 2, 2) for i in range(10)]
    b = [_caption(i, 0, 2) for i in range(5, 15)]
    other = {"model": "big", "prompt": "Say it.", "settings": {"max_new_tokens": 512}}
    result = compare_runs(_run(tmp_path / "a", "chair", a), _run(tmp_path / "b", "chair", b, **other), n_resamples=200)
    assert (result.n_shared, result.n_only_a, result.n_only_b) == (5, 5, 5)
    assert result.rows[0].a == pytest.approx(sum(i % 2 for i in range(5, 10)) / 5)
    shown = "\n".join(result.warnings)
    assert 'model: A: model="toy"; B: model="big"' in shown and "prompt" in shown and "token budget" in shown
    assert "image set" not in shown
    assert compare_runs(tmp_path / "a", tmp_path / "b", metrics=["recall"], n_resamples=200).rows[0].metric == "recall"


def test_bad_input_is_a_clear_error_naming_the_value(tmp_path: Path) -> None:
    run_a, run_b, a, _ = _chair_runs(tmp_path, 5)
    scored, questions = _pope_records(random.Random(0), 4, 0.8)
    pope_a = _run(tmp_path / "pa", "pope", scored, questions)
    relabelled = [{**r, "label": not r["label"]} if r["question_id"] == 2 else r for r in scored]
    pope_b = _run(tmp_path / "pb", "pope", relabelled, questions)
    elsewhere = _run(tmp_path / "far", "chair", [_caption(99, 1, 1)])
    unscored = tmp_path / "unscored"
    unscored.mkdir()
    (unscored / "manifest.json").write_text(json.dumps({"job": "chair"}))
    (tmp_path / "proto").mkdir()
    (tmp_path / "proto" / "protocol_summary.json").write_text("{}")
    cases = [
        ((run_a, pope_a), {}, InputDataError, "two CHAIR runs or two POPE runs"),
        ((run_a, elsewhere), {}, InputDataError, "share no images"),
        ((run_a, tmp_path / "missing"), {}, InputDataError, "missing"),
        ((run_a, tmp_path), {}, InputDataError, "not a run directory"),
        ((run_a, tmp_path / "proto"), {}, InputDataError, "split directories"),
        ((run_a, unscored), {}, InputDataError, "no chair_details.json"),
        ((pope_a, pope_b), {}, InputDataError, "question random/2 differs"),
        ((run_a, run_b), {"metrics": ["chair_i"]}, ConfigError, "'chair_i' (did you mean 'CHAIR_i'?)"),
        ((run_a, run_b), {"metrics": ["f1"]}, ConfigError, "unknown chair metric 'f1'"),
        ((run_a, run_b), {"n_resamples": 10}, ConfigError, "--resamples 10"),
    ]
    for runs, options, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            compare_runs(*runs, **options)


def test_cli_prints_a_table_within_80_columns_and_writes_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from halluc.cli import main

    run_a, run_b, _, _ = _chair_runs(tmp_path, 30, prompt="Other prompt.")
    out = tmp_path / "cmp.json"
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(
        sys, "argv", ["halluc", "compare", str(run_a), str(run_b), "--resamples", "500", "--json", str(out)]
    )
    with pytest.raises(SystemExit) as exited:
        main()
    printed = capsys.readouterr().out
    assert exited.value.code == 0, printed
    assert max(len(line) for line in printed.splitlines()) <= 80, printed
    assert "30 shared images; left out: 0 only in A, 0 only in B" in printed and "differ in prompt" in printed
    saved = json.loads(out.read_text())
    chair_i = next(m for m in saved["metrics"] if m["metric"] == "CHAIR_i")
    assert f"{100 * chair_i['difference']['estimate']:+.1f}" in printed
    assert saved["n_shared"] == 30 and saved["n_resamples"] == 500 and chair_i["test"] == "permutation"
    monkeypatch.setattr(sys, "argv", ["halluc", "compare", str(run_a), str(tmp_path / "nope")])
    with pytest.raises(SystemExit) as exited:
        main()
    stderr = capsys.readouterr().err
    assert exited.value.code == 2 and "nope" in stderr and len(stderr.strip().splitlines()) == 1, stderr


def _clustered_pope(path: Path, images: int, per_image: int, right: dict[str, list[bool]]) -> tuple[Path, Path]:
    """Runs A and B of one split, ``per_image`` questions per image; ``right[run][image]``: all its answers right."""
    questions = [{"question_id": q, "split": "random", "image": f"{q // per_image}.jpg", "text": f"Is there a {q}?",
                  "label": "yes" if q % 2 else "no"} for q in range(images * per_image)]  # fmt: skip
    runs = []
    for name in ("a", "b"):
        scored = []
        for q in questions:
            label = q["label"] == "yes"
            prediction = label if right[name][int(q["image"].split(".")[0])] else not label
            scored.append({"question_id": q["question_id"], "split": "random", "label": label,
                           "prediction": prediction, "correct": prediction == label})  # fmt: skip
        runs.append(_run(path / name, "pope", scored, questions))
    return runs[0], runs[1]


def test_pope_resamples_and_swaps_whole_images_not_single_questions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    right = {run: (rng.random(40) < p).tolist() for run, p in (("a", 0.6), ("b", 0.8))}
    result = compare_runs(*_clustered_pope(tmp_path / "big", 40, 5, right), n_resamples=4000)
    row = {r.metric: r for r in result.rows}["random accuracy"]
    assert result.unit == "questions" and (result.n_shared, result.n_images) == (200, 40)
    assert row.test == "permutation"  # McNemar would treat an image's 5 answers as independent
    d = np.array(right["b"], dtype=float) - np.array(right["a"], dtype=float)  # per image: all 5 answers move alike
    draws = rng.integers(0, 40, (20000, 40))
    low, high = np.percentile(d[draws].mean(axis=1), [2.5, 97.5])  # an independent bootstrap over images
    assert (row.difference.low, row.difference.high) == pytest.approx((low, high), abs=0.026)  # one step: 1/40
    single = np.repeat(d, 5)[rng.integers(0, 200, (20000, 200))].mean(axis=1)  # questions as if independent
    assert high - low > 1.8 * (np.percentile(single, 97.5) - np.percentile(single, 2.5))

    few = {"a": [True, False, True, True, False, True, False, True], "b": [True] * 7 + [False]}
    result = compare_runs(*_clustered_pope(tmp_path / "few", 8, 3, few), n_resamples=2000)
    d = np.array(few["b"], dtype=float) - np.array(few["a"], dtype=float)
    null = np.array([np.dot(signs, d) for signs in itertools.product((1, -1), repeat=8)])  # each image swapped or not
    observed = d.sum()
    exact = min(1.0, 2 * min(np.mean(null >= observed - 1e-9), np.mean(null <= observed + 1e-9)))
    assert {r.metric: r for r in result.rows}["random accuracy"].p_value == pytest.approx(exact)


def test_cli_says_by_image_only_when_images_hold_several_questions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from halluc.cli import main

    right = {"a": [True, False] * 4, "b": [True] * 8}
    cases = ((3, "24 shared questions of 8 images (resampled by image);"), (1, "8 shared questions;"))
    for per_image, expected in cases:
        runs = _clustered_pope(tmp_path / str(per_image), 8, per_image, right)
        monkeypatch.setattr(sys, "argv", ["halluc", "compare", *map(str, runs), "--resamples", "200"])
        with pytest.raises(SystemExit) as exited:
            main()
        printed = capsys.readouterr().out
        assert exited.value.code == 0 and expected in printed, printed


def test_paired_counts_refuse_labels_of_another_length() -> None:
    counts = [{"hit": 1}, {"hit": 0}]
    for options, name in (({"strata": [0]}, "strata"), ({"clusters": ["x", "y", "z"]}, "clusters")):
        with pytest.raises(InputDataError, match=f"one of {name} per sample"):
            PairedCounts.build(counts, counts, **options)
