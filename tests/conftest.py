"""Test-session setup: offline NLTK resources from ../shared when NLTK_DATA is not set."""

from __future__ import annotations

import os
from pathlib import Path

import torch

_SHARED_NLTK = Path(__file__).resolve().parents[1].parent / "shared" / "nltk_data"
if "NLTK_DATA" not in os.environ and _SHARED_NLTK.is_dir():
    os.environ["NLTK_DATA"] = str(_SHARED_NLTK)

torch.set_num_threads(min(2, torch.get_num_threads()))
