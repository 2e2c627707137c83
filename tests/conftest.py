"""Test-session setup: offline NLTK resources from ../shared when NLTK_DATA is not set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

_SHARED_NLTK = Path(__file__).resolve().parents[1].parent / "shared" / "nltk_data"
if "NLTK_DATA" not in os.environ and _SHARED_NLTK.is_dir():
    os.environ["NLTK_DATA"] = str(_SHARED_NLTK)

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight LLaVA saved with save_pretrained, for tests that load a model by path (CLI, jobs)."""
    from tiny_models import tiny_parts

    path = tmp_path_factory.mktemp("tiny-llava")
    model, processor = tiny_parts("llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
