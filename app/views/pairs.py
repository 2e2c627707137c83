"""Preference pairs page: SENTINEL pairs with context, chosen vs rejected sentence, hallucinated objects marked."""

from __future__ import annotations

import streamlit as st

from app import artifacts, data, ui

__all__: list[str] = []

_PER_PAGE = 10


def _pair(run: data.Run, root, pair: artifacts.Pair) -> None:
    with st.container(border=True):
        image, text = st.columns([1, 4])
        path = data.locate(run, root, pair.image_path)
        if path is not None:
            image.image(ui.draw_boxes(path), caption=f"image {pair.image_id}", width=160)
        else:
            image.caption(f"image {pair.image_id}: file not found")
        with text:
            st.markdown(f"**{pair.type}** · step {pair.step if pair.step is not None else '?'} · {pair.question}")
            if pair.context:
                st.caption("context (the description so far)")
                st.html(ui.mark_objects(pair.context, dict.fromkeys(pair.context_objects, "object")))
            chosen, rejected = st.columns(2)
            chosen.markdown("**chosen (y_win)**")
            with chosen:
                st.html(ui.mark_objects(pair.y_win, dict.fromkeys(pair.win_objects, "grounded")))
            rejected.markdown("**rejected (y_lose)** · hallucinated: " + (", ".join(pair.lose_hallucinated) or "none"))
            with rejected:
                st.html(ui.mark_objects(pair.y_lose, dict.fromkeys(pair.lose_hallucinated, "halluc")))


def render(scan: data.Scan) -> None:
    run = ui.pick_run_with(
        scan, artifacts.PAIRS, what="preference pairs", command="halluc sentinel --out <runs dir>/<name>"
    )
    if run is None:
        return
    pairs, problems = artifacts.pairs(run)
    ui.show_problems(problems, what="Some pairs could not be read")
    if not pairs:
        st.info(f"{run.id} has no readable preference pairs yet.")
        return
    types = sorted({p.type for p in pairs})
    left, right = st.columns(2)
    chosen = left.multiselect("type", types, default=types, key="pairs-type")
    query = right.text_input("search text or object", key="pairs-search").strip().lower()
    shown = [
        p
        for p in pairs
        if p.type in chosen
        and (not query or any(query in f.lower() for f in (p.y_win, p.y_lose, p.context, *p.lose_hallucinated)))
    ]
    st.caption(f"{len(shown)} of {len(pairs)} pairs")
    if not shown:
        return
    n_pages = (len(shown) - 1) // _PER_PAGE + 1
    page = st.number_input("page", min_value=1, max_value=n_pages, value=1, key="pairs-page") if n_pages > 1 else 1
    for pair in shown[(page - 1) * _PER_PAGE : page * _PER_PAGE]:
        _pair(run, scan.root, pair)


ui.page("Preference pairs", render)
