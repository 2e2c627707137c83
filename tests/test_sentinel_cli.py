"""`halluc sentinel generate` and `halluc dpo train` end to end on a tiny LLaVA, a tiny train split and oracles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from halluc.cli import app
from halluc.errors import ConfigError, OutputLocationError
from halluc.records import read_records
from halluc.world import build_split


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    build_split("train", 3, root, seed=11)
    return root


def _cli(*args: str) -> Result:
    """Run the CLI in-process (a HallucError stays in ``result.exception``; ``main`` turns it into exit 2)."""
    return CliRunner().invoke(app, list(args))


def test_sentinel_generate_writes_a_run(world: Path, tiny_dir: Path, tmp_path: Path) -> None:
    oracle = f"oracle:{world / 'instances_train.json'}"
    common = ["--model", str(tiny_dir), "--images", str(world / "images" / "train")]
    common += ["--annotations", str(world / "instances_train.json")]
    bad = _cli("sentinel", "generate", *common, "--detector", oracle, "--out", str(tmp_path / "bad"))
    assert isinstance(bad.exception, ConfigError) and "exactly twice" in str(bad.exception)
    out = tmp_path / "run"
    args = ["--detector", oracle, "--detector", oracle, "--n-samples", "3", "--max-sentences", "2"]
    done = _cli("sentinel", "generate", *common, *args, "--max-sentence-tokens", "8", "--out", str(out))
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["job"], manifest["status"], manifest["detectors"]) == ("sentinel", "finished", [oracle, oracle])
    assert len(read_records(out / "images.jsonl")) == 3 and (out / "pairs.jsonl").exists()
    assert "pairs from 3 images" in done.output


def test_dpo_train_saves_a_merged_model(world: Path, tiny_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("trl")
    image = sorted((world / "images" / "train").iterdir())[0]
    pair = {"image_id": 1, "image_path": str(image), "question": "Describe this image in detail.",
            "context": "A cat is sitting on a table.", "y_win": "The cat is next to a cup.",
            "y_lose": "A dog rides a bus.", "type": "coherent"}  # fmt: skip
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(pair) + "\n" + json.dumps({**pair, "y_lose": "A car."}) + "\n")
    out = tmp_path / "dpo"
    args = ["--pairs", str(pairs), "--model", str(tiny_dir), "--max-steps", "1", "--batch-size", "2"]
    done = _cli("dpo", "train", *args, "--out", str(out))
    assert done.exit_code == 0, done.output
    assert (out / "merged" / "config.json").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    again = _cli("dpo", "train", *args, "--out", str(out))
    assert isinstance(again.exception, OutputLocationError) and "already holds" in str(again.exception)
