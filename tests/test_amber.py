"""AMBER scoring: the official rule's numbers, derived by hand on a hand-made metadata set, and bad input."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from benchmarks import amber
from benchmarks.score import score_amber_file
from halluc.errors import InputDataError

DATA = Path(__file__).parent / "fixtures" / "amber_mini"
EPS = 0.001  # metrics.txt starts every denominator at 0.001, and the official figures keep it


def official(score: float, num: float) -> float:
    """One official percentage: counter / (count + 0.001), rounded to one decimal."""
    return round(score / (num + EPS) * 100, 1)


def official_f1(precision: float, recall: float, eps: float) -> float:
    return round(2 * (precision / 100) * (recall / 100) / (precision / 100 + recall / 100 + eps) * 100, 1)


# Read off the fixture by hand (tests/fixtures/amber_mini/responses.jsonl):
# 1 "The puppy is on the grass next to a frisbee.": objects puppy, grass, frisbee; puppy covers dog (relation),
#   grass covers grass, frisbee is a hallu word (cognised) and no synonym of a truth word -> hallucinated.
# 2 "A man sits on a seat under a tree. The light is on.": man is no object word; seat covers bench, tree covers
#   tree; light is a safe word (counted, never hallucinated).
# 3 "The couch is next to the puppy.": couch is a WordNet synonym of the truth word sofa (covered); puppy is
#   cognised (dog's associate) and hallucinated.
OBJECTS, HALLUCINATED, COVERED, TRUTH, COGNISED, HALLU, CLEAN, DESCRIPTIONS = 8, 2, 5, 5, 2, 4, 1, 3


def test_generative_metrics_follow_the_official_rule():
    metrics, details = amber.score_responses(_responses(), amber.load_amber_data(DATA))
    assert details[1] == {"objects": ["puppy", "grass", "frisbee"], "hallucinated": ["frisbee"], "covered": [0, 1],
                          "cognised": [0], "n_truth": 2, "n_hallu": 2}  # fmt: skip
    assert details[2]["objects"] == ["seat", "tree", "light"] and details[2]["hallucinated"] == []
    assert details[3]["covered"] == [0] and details[3]["hallucinated"] == ["puppy"]
    assert metrics["chair"] == official(HALLUCINATED, OBJECTS) == 25.0
    assert metrics["cover"] == official(COVERED, TRUTH) == 100.0
    assert metrics["hal"] == round(100 - CLEAN / (DESCRIPTIONS + EPS) * 100, 1) == 66.7
    assert metrics["cog"] == official(COGNISED, HALLU) == 50.0
    assert metrics["n_generative"] == DESCRIPTIONS


# (correct, questions, answered No and truth no, answered No, truth no, answered exactly Yes) by hand:
# existence 4 yes/Yes ok, 5 no/No ok, 6 no/Yes wrong; state 7 yes/"yes" (not an official answer: wrong), 8 no/No ok;
# number 9 no/Yes wrong; relation 10 yes/No wrong, 11 (type "relation") no/No ok.
COUNTS = {
    "existence": (2, 3, 1, 1, 2, 2),
    "state": (1, 2, 1, 1, 1, 0),
    "number": (0, 1, 0, 0, 1, 1),
    "relation": (1, 2, 1, 2, 1, 0),
}


def _expected(counts: tuple[int, ...], n_sums: int, eps: float) -> dict[str, float]:
    correct, n, no_ok, ans_no, truth_no, yes = counts
    # a group summed over k types carries k start values of 0.001 in every denominator
    precision = round(no_ok / (ans_no + n_sums * EPS) * 100, 1)
    recall = round(no_ok / (truth_no + n_sums * EPS) * 100, 1)
    return {
        "accuracy": round(correct / (n + n_sums * EPS) * 100, 1),
        "precision": precision,
        "recall": recall,
        "f1": official_f1(precision, recall, eps),
        "yes_ratio": round(yes / n * 100, 1),
    }


def _sum(*groups: str) -> tuple[int, ...]:
    return tuple(sum(COUNTS[g][k] for g in groups) for k in range(6))


def test_discriminative_metrics_follow_the_official_rule():
    metrics, details = amber.score_responses(_responses(), amber.load_amber_data(DATA))
    expected = {
        "existence": _expected(COUNTS["existence"], 1, 0.001),
        "state": _expected(COUNTS["state"], 1, 0.0001),
        "number": _expected(COUNTS["number"], 1, 0.0001),
        "relation": _expected(COUNTS["relation"], 1, 0.0001),
        "attribute": _expected(_sum("state", "number"), 3, 0.0001),  # state + number + action (empty)
        "discriminative": _expected(_sum(*COUNTS), 1, 0.0001),
    }
    for group, values in expected.items():
        assert {k: metrics[f"{group}_{k}"] for k in values} == values, group
    assert metrics["existence_accuracy"] == 66.6 and metrics["existence_f1"] == 66.6
    assert metrics["action_n"] == 0 and metrics["action_accuracy"] is None  # absent group: None, not 0.0
    assert metrics["n_unparsed_answers"] == 1 and details[7]["answer"] is None


def test_parse_answers_maps_first_word_yes_no():
    data = amber.load_amber_data(DATA)
    responses = {k: amber.official_response(data.annotations[k], v, True) for k, v in _responses().items()}
    assert responses[7] == "Yes" and responses[1] == _responses()[1]
    metrics, _ = amber.score_responses(responses, data)
    assert metrics["state_accuracy"] == official(2, 2) and metrics["n_unparsed_answers"] == 0


def test_similarity_fallback_is_wordnet_synonymy():
    assert amber.similarity_backend() == "wordnet-synonyms"  # spaCy's en_core_web_lg is not installable here
    assert amber.similar("couch", "sofa") and amber.similar("dog", "dog")
    assert not amber.similar("dog", "cat") and not amber.similar("frisbee", "grass")


def test_score_file_writes_a_run_with_error_records(tmp_path):
    lines = (DATA / "responses.jsonl").read_text().splitlines()
    extra = [
        json.dumps({"id": 4, "response": "Yes"}),  # exact repeat: dropped
        json.dumps({"id": 99, "response": "No"}),  # no such annotation
        json.dumps({"id": "x", "response": "No"}),
        json.dumps({"id": 5, "response": None}),
    ]
    (tmp_path / "r.jsonl").write_text("\n".join(lines + extra) + "\n")
    result = score_amber_file(tmp_path / "r.jsonl", tmp_path / "run", amber_data=DATA)
    assert result.errors == {"bad_id": 1, "bad_text": 1, "unknown_id": 1}
    assert result.metrics["n_duplicates_dropped"] == 1 and result.metrics["chair"] == 25.0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["job"] == "amber" and manifest["similarity"] == "wordnet-synonyms"
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == len(lines) + 3


@pytest.mark.parametrize("missing", amber.DATA_FILES)
def test_missing_metadata_file_is_named(tmp_path, missing):
    shutil.copytree(DATA, tmp_path / "data")
    (tmp_path / "data" / missing).unlink()
    with pytest.raises(InputDataError, match=missing):
        amber.load_amber_data(tmp_path / "data")


def test_unknown_object_word_and_bad_truth_are_refused(tmp_path):
    shutil.copytree(DATA, tmp_path / "data")
    path = tmp_path / "data" / "annotations.json"
    entries = json.loads(path.read_text())
    path.write_text(json.dumps([*entries[:1], {**entries[1], "truth": ["bench", "unicorn"]}, *entries[2:]]))
    with pytest.raises(InputDataError, match="'unicorn' is not a key of relation.json"):
        amber.load_amber_data(tmp_path / "data")
    path.write_text(json.dumps([*entries[:3], {**entries[3], "truth": "maybe"}, *entries[4:]]))
    with pytest.raises(InputDataError, match="id 4: truth 'maybe'"):
        amber.load_amber_data(tmp_path / "data")


def _responses() -> dict[int, str]:
    rows = [json.loads(x) for x in (DATA / "responses.jsonl").read_text().splitlines()]
    return {r["id"]: r["response"] for r in rows}


def test_cli_scores_lists_and_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    from app.data import headline, scan_runs
    from halluc.cli import main

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["halluc", "score", "amber", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        return exited.value.code

    assert run(str(DATA / "responses.jsonl"), "--amber-data", str(DATA), "--out", str(tmp_path / "runs" / "a")) == 0
    (scored,) = scan_runs(tmp_path / "runs").runs
    assert scored.job == "amber" and headline(scored)["AMBER CHAIR"] == 25.0
    capsys.readouterr()
    bad = [
        ((str(DATA / "responses.jsonl"), "--amber-data", str(tmp_path)), "has no annotations.json"),
        ((str(DATA / "responses.jsonl"), "--amber-data", str(DATA), "--id-key", "qid"), "--id-key 'qid'"),
        ((str(tmp_path / "nope.json"), "--amber-data", str(DATA)), "nope.json"),
    ]
    for n, (args, named) in enumerate(bad):
        assert run(*args, "--out", str(tmp_path / f"bad{n}")) == 2
        err = capsys.readouterr().err.strip()
        assert named in err and "Traceback" not in err and len(err.splitlines()) == 1, err
