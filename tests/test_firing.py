"""Proof of firing: every method reports what it did per sample, the monitor measures the first-step change against
the unedited model, a method that changed nothing is named in a warning, and runs record it all."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from test_fidelity import IMAGES, PROMPTS
from tiny_models import build_tiny

from benchmarks.runner import GenerationSettings, Request, firing_summary, run_generation
from halluc.runs import RunStore
from interventions import PAI, VCD, VHR, VISTA, DoLa, Intervention, TokenEmphasis

torch.set_num_threads(1)

EXPECTED = {  # method -> what its report holds for a sample with an image
    "pai": lambda r: r["layers"] == [1] and r["image_keys"] > 0 and r["cfg"] is True,
    "vhr": lambda r: r["heads"] and all(isinstance(h, list) for h in r["heads"].values()),
    "token_emphasis": lambda r: r["source"] == "cls" and r["local_tokens"] > 0,
    "vcd": lambda r: r["noised_image"] is True,
    "dola": lambda r: len(r["premature_layers"]) == 3,
    "vista": lambda r: r["steered"] is True and r["sla_layers"],
}


@pytest.mark.parametrize("config", [PAI(), VHR(), TokenEmphasis(), VCD(), DoLa(), VISTA()], ids=lambda c: c.name)
def test_each_method_reports_what_it_did(config: Intervention) -> None:
    lvlm = build_tiny("llava")
    plain = lvlm.generate(IMAGES, PROMPTS, max_new_tokens=3, intervention=config)
    firing: list[dict] = []
    assert lvlm.generate(IMAGES, PROMPTS, max_new_tokens=3, intervention=config, firing=firing) == plain
    assert len(firing) == 3
    assert EXPECTED[config.name](firing[0][config.name])
    assert firing[0]["first_step_change"] > 0 and firing[2]["first_step_change"] > 0
    if config.name not in ("dola", "vista"):  # DoLa and VISTA's SLA act on text too; the others leave it alone
        assert firing[1]["first_step_change"] == 0.0


def test_a_method_that_changes_nothing_is_named(caplog: pytest.LogCaptureFixture) -> None:
    lvlm = build_tiny("llava")
    firing: list[dict] = []
    with caplog.at_level(logging.WARNING, logger="halluc"):
        lvlm.generate(IMAGES, PROMPTS, max_new_tokens=2, intervention=PAI(alpha=0.0, cfg=False), firing=firing)
    assert "pai changed nothing on this batch of 3 samples" in caplog.text
    assert [f["first_step_change"] for f in firing] == [0.0, 0.0, 0.0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="halluc"):
        lvlm.generate(IMAGES, PROMPTS, max_new_tokens=2, intervention=PAI())
    assert "changed nothing" not in caplog.text


def test_runs_record_firing_per_sample_and_summarise_it(tmp_path: Path) -> None:
    lvlm = build_tiny("llava")
    files = []
    for i, image in enumerate(IMAGES):
        if image is not None:
            image.save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png") if image is not None else None)
    requests = [Request(str(i), f, p) for i, (f, p) in enumerate(zip(files, PROMPTS, strict=True))]
    store = RunStore.create(tmp_path / "run", {"job": "test"})
    with store:
        run_generation(lvlm, requests, store, GenerationSettings(max_new_tokens=2), intervention=VHR(), progress=False)
    samples = store.samples()
    assert [bool(s["firing"]["vhr"]["heads"]) for s in samples] == [True, False, True]
    summary = firing_summary(samples)
    assert summary["samples"] == 3 and summary["changed_samples"] == 2 and summary["mean_first_step_change"] > 0
    assert firing_summary([{"id": "1", "response": "x"}]) is None  # no intervention, nothing to report
