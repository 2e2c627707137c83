"""Heads page: per layer x head maps of vision-aware head divergence (VHD) and image-attention mass."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import artifacts, charts, data, ui

__all__: list[str] = []


def render(scan: data.Scan) -> None:
    run = ui.pick_run_with(scan, artifacts.HEADS, what="head analysis", command="halluc heads --out <runs dir>/<name>")
    if run is None:
        return
    matrices = artifacts.heads(run)
    first = next(iter(matrices.values()))  # all matrices share one shape (checked by the reader)
    n_layers, n_heads = len(first), len(first[0])
    st.caption(f"{n_layers} layers x {n_heads} heads. Brighter = larger value; hover a cell for its number.")
    columns = st.columns(2)
    for i, name in enumerate(data.ordered(matrices, ["vhd", "image_attention"])):
        matrix = matrices[name]
        rows = [{"head": h, "layer": layer, name: v} for layer, row in enumerate(matrix) for h, v in enumerate(row)]
        with columns[i % 2]:
            chart = charts.heatmap(rows, x="head", y="layer", value=name, title=name).properties(
                height=28 * n_layers + 20
            )
            st.altair_chart(chart, width="stretch")
            top = pd.DataFrame(rows).nlargest(5, name)
            st.markdown(f"Top heads by {name}: " + ", ".join(f"L{r.layer}H{r.head}" for r in top.itertuples()))


ui.page("Heads", render)
