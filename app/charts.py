"""Altair charts (rendered natively by Streamlit) built from plain rows, so they are testable without a browser."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt

__all__ = ["grouped_bars", "heatmap", "tradeoff_scatter"]

Rows = Sequence[dict[str, Any]]


def grouped_bars(rows: Rows, *, x: str, value: str, colour: str, title: str = "") -> alt.Chart:
    """Bars of ``value`` per ``x``, one bar per ``colour`` group side by side (e.g. a metric per run)."""
    return (
        alt.Chart(alt.Data(values=list(rows)), title=title)
        .mark_bar()
        .encode(
            x=alt.X(f"{x}:N", title=None),
            xOffset=alt.XOffset(f"{colour}:N"),
            y=alt.Y(f"{value}:Q", title=value),
            color=alt.Color(f"{colour}:N", title=colour),
            tooltip=[f"{x}:N", f"{colour}:N", alt.Tooltip(f"{value}:Q", format=".3f")],
        )
    )


def tradeoff_scatter(rows: Rows) -> alt.Chart:
    """CHAIR_i against recall, one point per run, one line per intervention method ordered by strength.

    Rows need ``recall``, ``CHAIR_i``, ``method``, ``strength`` and ``run``; lower-right is better (fewer
    hallucinated mentions at the same coverage).
    """
    base = alt.Chart(alt.Data(values=list(rows)), title="Hallucination vs coverage (lower right is better)").encode(
        x=alt.X("recall:Q", title="recall", scale=alt.Scale(zero=False)),
        y=alt.Y("CHAIR_i:Q", title="CHAIR_i", scale=alt.Scale(zero=False)),
        color=alt.Color("method:N", title="intervention"),
        order=alt.Order("strength:Q"),
        tooltip=[
            "run:N",
            "method:N",
            "strength:Q",
            alt.Tooltip("recall:Q", format=".3f"),
            alt.Tooltip("CHAIR_i:Q", format=".3f"),
        ],
    )
    return (
        base.mark_line(opacity=0.5)
        + base.mark_point(size=90, filled=True)
        + base.mark_text(dx=8, dy=-8, align="left").encode(text="strength:Q")
    )


def heatmap(rows: Rows, *, x: str, y: str, value: str, title: str = "", annotate: bool = False) -> alt.Chart:
    """A colour grid of ``value`` over ``x`` by ``y`` (layer x head maps, confusion matrices), optionally labelled."""
    base = alt.Chart(alt.Data(values=list(rows)), title=title).encode(
        x=alt.X(f"{x}:O", title=x),
        y=alt.Y(f"{y}:O", title=y),
        tooltip=[f"{x}:O", f"{y}:O", alt.Tooltip(f"{value}:Q", format=".3g")],
    )
    chart = base.mark_rect().encode(color=alt.Color(f"{value}:Q", title=value, scale=alt.Scale(scheme="viridis")))
    if annotate:
        chart = chart + base.mark_text(fontSize=16, fontWeight="bold", color="white").encode(text=f"{value}:Q")
    return chart
