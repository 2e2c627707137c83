"""Strength sweeps (benchmarks.sweep): labels, the Pareto front without degenerate settings, resumable runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chair import degenerate_setting
from benchmarks.runner import GenerationSettings
from benchmarks.sweep import SWEEP_METRICS, pareto_front, run_sweep, setting_dir, setting_label
from halluc.imagesets import resolve_images
from halluc.models import load_lvlm
from halluc.world import build_split
from interventions import PAI, VHR


def test_setting_labels_and_dirs(tmp_path: Path) -> None:
    assert setting_label(None) == "baseline"
    assert setting_label(VHR(alpha=2.0)) == "vhr(alpha=2.0)"
    assert setting_label(PAI(alpha=0.5, cfg=True)) == "pai(alpha=0.5,cfg=True)"
    assert setting_label(PAI(alpha=1.0, cfg=False)) == "pai(alpha=1.0)"  # a False flag is left out
    assert setting_dir(tmp_path, "pai(alpha=0.5,cfg=True)") == tmp_path / "pai_alpha_0.5_cfg_True_"


def test_pareto_front_leaves_out_degenerate_settings() -> None:
    def point(label: str, chair_i: float, recall: float, degenerate_share: float) -> dict:
        return {"label": label, "CHAIR_i": chair_i, "recall": recall, "degenerate_share": degenerate_share}

    points = [
        point("baseline", 0.50, 0.40, 0.0),
        point("vhr(alpha=2)", 0.45, 0.40, 0.0),  # beats the baseline
        point("pai(alpha=2)", 0.30, 0.45, 0.65),  # would beat every point, but its captions loop
        point("pai(alpha=1)", 0.48, 0.42, 0.04),  # a few looping captions: below the 5% mark, kept
        point("vhr(alpha=3)", 0.45, 0.40, 0.0),  # ties vhr(alpha=2): neither beats the other
    ]
    assert pareto_front(points) == ["vhr(alpha=2)", "pai(alpha=1)", "vhr(alpha=3)"]


@pytest.fixture(scope="module")
def val_images(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("world")
    paths = build_split("val", 3, root, seed=5)
    return resolve_images(str(paths.images), instances=paths.instances, captions=paths.captions)


def test_run_sweep_runs_each_setting_once_and_resumes(tiny_dir: Path, val_images, tmp_path: Path) -> None:
    lvlm = load_lvlm(tiny_dir)
    settings = GenerationSettings(max_new_tokens=6, batch_size=3)
    plan = {"vhr": [VHR(alpha=2.0)]}
    sweep = run_sweep(lvlm, val_images, tmp_path / "sweep", plan, settings=settings, progress=False)
    assert [(p["label"], p["method"]) for p in sweep["points"]] == [("baseline", "baseline"), ("vhr(alpha=2.0)", "vhr")]
    assert all(set(SWEEP_METRICS) <= p.keys() for p in sweep["points"])
    assert sweep["pareto"] == pareto_front(sweep["points"])
    assert sweep["degenerate"] == [p["label"] for p in sweep["points"] if degenerate_setting(p)]
    samples = setting_dir(tmp_path / "sweep", "vhr(alpha=2.0)") / "samples.jsonl"
    written = samples.stat().st_mtime_ns
    assert run_sweep(lvlm, val_images, tmp_path / "sweep", plan, settings=settings, progress=False) == sweep
    assert samples.stat().st_mtime_ns == written  # the finished runs were reused, not generated again
