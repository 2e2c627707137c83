"""CrossCheck page: reference-free ranking of (model, intervention) systems and their per-sentence scores."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import artifacts, charts, data, ui

__all__: list[str] = []

# verdict of an object in a sentence -> highlight class
_STATUS_CLASS = {"hallucinated": "halluc", "unsupported": "halluc", "present": "grounded", "supported": "grounded"}


def _sentences(result: artifacts.CrossCheck) -> None:
    names = sorted({str(s.get("system")) for s in result.sentences})
    chosen = st.multiselect("systems", names, default=names, key="cc-systems")
    shown = sorted(
        (s for s in result.sentences if str(s.get("system")) in chosen),
        key=lambda s: s["score"],
        reverse=result.lower_is_better,
    )
    st.caption(f"{len(shown)} sentences, least consistent first (50 shown). Objects are coloured by their verdict.")
    for sentence in shown[:50]:
        objects = [o for o in sentence.get("objects", []) if isinstance(o, dict)]
        classes = {str(o.get("object")): _STATUS_CLASS.get(str(o.get("status")), "object") for o in objects}
        st.markdown(f"**{sentence['score']:.2f}** · {sentence.get('system')} · image {sentence.get('image_id', '?')}")
        st.html(ui.mark_objects(sentence["sentence"], classes))


def render(scan: data.Scan) -> None:
    run = ui.pick_run_with(
        scan, artifacts.CROSSCHECK, what="CrossCheck ranking", command="halluc crosscheck --out <runs dir>/<name>"
    )
    if run is None:
        return
    result = artifacts.crosscheck(run)
    order = "lower is better" if result.lower_is_better else "higher is better"
    st.subheader("System ranking")
    cards = st.columns(1 + len(result.correlations))
    best = result.systems[0]
    cards[0].metric(f"best system (score, {order})", best["system"], f"{best['score']:.3f}", delta_color="off")
    for card, (name, value) in zip(cards[1:], result.correlations.items(), strict=True):
        card.metric(name, f"{value:.3f}")
    st.dataframe(pd.DataFrame(result.systems), hide_index=True)
    rows = [{"system": s["system"], "score": s["score"], "rank": str(s["rank"])} for s in result.systems]
    st.altair_chart(charts.grouped_bars(rows, x="system", value="score", colour="rank", title=f"score ({order})"))
    if result.sentences:
        st.subheader("Per-sentence scores")
        _sentences(result)
    else:
        st.info("This CrossCheck output has no per-sentence scores.")


ui.page("CrossCheck", render)
