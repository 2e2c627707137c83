"""Dashboard entry point for ``streamlit run app/main.py``; ``halluc dashboard`` starts it with the runs dir set.

The runs directory comes from ``$HALLUC_RUNS_DIR`` (default ./runs). Each page lives in ``app/views/`` and is
reachable by URL path, e.g. ``/samples?run=<run-id>&image=<image-id>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

__all__ = ["PAGES"]

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)  # `streamlit run` puts only app/ on the path; the pages import the `app` package

# (file in views/, title, icon); the first is the home page, the URL path is the file's stem.
PAGES = [
    ("runs.py", "Runs", ":material/table_rows:"),
    ("compare.py", "Compare", ":material/compare_arrows:"),
    ("samples.py", "Samples", ":material/image:"),
    ("pope.py", "POPE", ":material/quiz:"),
    ("heads.py", "Heads", ":material/grid_on:"),
    ("pairs.py", "Preference pairs", ":material/thumbs_up_down:"),
    ("crosscheck.py", "CrossCheck", ":material/fact_check:"),
]

if __name__ == "__main__":
    st.set_page_config(page_title="halluc dashboard", page_icon=":material/visibility:", layout="wide")
    pages = [
        st.Page(f"views/{file}", title=title, icon=icon, url_path=Path(file).stem, default=i == 0)
        for i, (file, title, icon) in enumerate(PAGES)
    ]
    st.navigation(pages).run()
