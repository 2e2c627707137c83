"""The demo's result tables stay readable in an 80-column terminal: nothing cut, nothing wrapped."""

from __future__ import annotations

from collections import defaultdict

from rich.console import Console

from benchmarks.suite import SuiteRow
from halluc.cli import demo_tables

POPE = {split: {"accuracy": 0.883} for split in ("random", "popular", "adversarial")} | {"mean": {"f1": 0.835}}


def test_demo_tables_fit_80_columns_uncut() -> None:
    chair = defaultdict(lambda: 0.514, mentions_per_caption=13.25, degenerate_share=0.18)  # 18% degenerate: flagged
    rows = [
        SuiteRow(system, images, chair, POPE)
        for images in ("toy:val", "toy:shift")
        for system in ("baseline", "pai", "token_emphasis", "vhr")
    ]
    console = Console(width=80, record=True)
    for table in demo_tables(rows):
        console.print(table)
    text = console.export_text()
    assert "…" not in text and max(len(line.rstrip()) for line in text.splitlines()) <= 80
    lines = text.splitlines()
    assert sum("token_emphasis" in line for line in lines) == 2  # one table per image set, one line per system
    baseline = next(line for line in lines if line.startswith("baseline"))
    assert baseline.split() == ["baseline", "51.4", "51.4", "51.4", "51.4", "13.2", "18!", "88.3/88.3/88.3", "83.5"]
