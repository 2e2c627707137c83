"""Samples page: one image at a time with ground-truth and detector boxes, its caption with hallucinated mentions
highlighted, the ground-truth objects, prev/next and search by image id, and a second run's caption beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from app import artifacts, data, ui

__all__: list[str] = []

_INDEX, _SEARCH, _MISS = "sample-index", "sample-search", "sample-miss"  # session-state keys


def _caption_html(sample: dict[str, Any], detail: dict[str, Any] | None) -> str:
    """The response with CHAIR mentions marked: red when hallucinated, green when in the ground truth."""
    text = str(sample.get("response", ""))
    if detail is None or detail.get("caption") != text:
        return ui.highlight(text, [])
    spans = [
        (
            int(m["start"]),
            int(m["end"]),
            "halluc" if m.get("hallucinated") else "grounded",
            f"{m.get('category')}: {'hallucinated' if m.get('hallucinated') else 'in the image'}",
        )
        for m in detail.get("mentions", [])
    ]
    return ui.highlight(text, spans)


def _detail(details: dict[int, dict] | None, sample: dict[str, Any] | None) -> dict[str, Any] | None:
    """The CHAIR details of a sample's image, if scored (CHAIR image ids are integers)."""
    image_id = str((sample or {}).get("image_id", ""))
    return (details or {}).get(int(image_id)) if image_id.isdigit() else None


def _show_caption(run: data.Run, sample: dict[str, Any] | None) -> None:
    """A run's caption for the image, highlighted, or why there is none."""
    st.markdown(f"**{run.id}** · intervention: {run.intervention}")
    details = data.chair_details(run)
    if sample is None:
        st.info(f"{run.id} has no sample for this image.")
    elif "error" in sample:
        st.error(f"generation failed for this image: {sample['error']}")
    else:
        st.html(_caption_html(sample, _detail(details, sample)))
        if details is None:
            st.caption("Not scored yet: mentions are highlighted once the run writes chair_details.json.")


@st.cache_resource(show_spinner=False, max_entries=8)
def _boxes(path: str, stamp: float) -> dict[int, list]:
    """Ground-truth boxes of a COCO instances file, cached per file version (COCO's files are large)."""
    return data.gt_boxes(Path(path))


def _image(run: data.Run, root: Path, sample: dict[str, Any]) -> None:
    images = run.manifest.get("images") or {}
    name = str(sample.get("image") or "")
    recorded = Path(name) if Path(name).is_absolute() else Path(str(images.get("image_dir", ""))) / name
    path = data.locate(run, root, recorded)
    if path is None:
        st.warning(f"image {name!r} not found in {images.get('image_dir')!r} nor in an assets/ folder")
        return
    instances = data.locate(run, root, images.get("instances"))
    image_id = str(sample.get("image_id"))
    gt = _boxes(str(instances), instances.stat().st_mtime) if instances else {}
    gt = gt.get(int(image_id), []) if image_id.isdigit() else []
    dets = artifacts.detections(run).get(image_id, [])
    legend = "green: ground truth" + (", orange: detector" if dets else "")
    st.image(ui.draw_boxes(path, gt, dets), caption=f"{name} ({legend})", output_format="PNG")
    if instances is None:
        st.caption("No COCO instances file found for this run, so no ground-truth boxes.")


def _step(delta: int, count: int) -> None:
    """Button callback: move ``delta`` images, staying inside the run (runs before the page is redrawn)."""
    st.session_state[_INDEX] = max(0, min(count - 1, st.session_state[_INDEX] + delta))


def _search(ids: list[str]) -> None:
    """Search-box callback: jump to the typed image id, or remember it as not found."""
    query = st.session_state[_SEARCH].strip()
    st.session_state[_MISS] = query if query and query not in ids else None
    if query in ids:
        st.session_state[_INDEX] = ids.index(query)


def _navigate(ids: list[str]) -> int:
    """Prev/next buttons and an image-id search; returns the index of the image to show."""
    if _INDEX not in st.session_state:  # a new session starts at ?image= when the link has one
        wanted = st.query_params.get("image")
        st.session_state[_INDEX] = ids.index(wanted) if wanted in ids else 0
    index = st.session_state[_INDEX] = min(st.session_state[_INDEX], len(ids) - 1)
    prev, nxt, search = st.columns([1, 1, 4], vertical_alignment="bottom")
    prev.button("◀ prev", disabled=index == 0, on_click=_step, args=(-1, len(ids)))
    nxt.button("next ▶", disabled=index >= len(ids) - 1, on_click=_step, args=(1, len(ids)))
    search.text_input("go to image id", key=_SEARCH, on_change=_search, args=(ids,))
    if st.session_state.get(_MISS):
        st.warning(f"image id {st.session_state[_MISS]!r} is not in this run; ids run from {ids[0]} to {ids[-1]}")
    st.query_params["image"] = ids[index]
    return index


def _objects(detail: dict[str, Any] | None) -> None:
    if detail is None:
        return
    hallucinated = sorted({m["category"] for m in detail.get("mentions", []) if m.get("hallucinated")})
    st.markdown("**Ground-truth objects:** " + (", ".join(detail.get("gt_objects", [])) or "none"))
    st.markdown("**Hallucinated objects:** " + (", ".join(hallucinated) or "none"))


def render(scan: data.Scan) -> None:
    runs = scan.with_job("chair")
    run = ui.pick_run_or_explain(runs, "No CHAIR run yet: the Samples page shows the captions of `halluc chair` runs.")
    if run is None:
        return
    records, problems = data.samples(run)
    ui.show_problems(problems, what="Some sample records could not be read")
    if not records:
        st.info(f"{run.id} has no samples yet.")
        return
    by_id = {str(r.get("image_id")): r for r in records}
    ids = list(by_id)
    index = _navigate(ids)
    sample = by_id[ids[index]]
    others = [r.id for r in runs if r.id != run.id]
    other_id = st.selectbox("compare with", ["(none)", *others], key="sample-other") if others else "(none)"
    st.subheader(f"image {ids[index]} ({index + 1} of {len(ids)})")
    left, right = st.columns([2, 3])
    with left:
        _image(run, scan.root, sample)
    with right:
        st.markdown(f"**Prompt:** {sample.get('prompt', '')}")
        _objects(_detail(data.chair_details(run), sample))
    captions = st.columns(2 if other_id != "(none)" else 1)
    with captions[0]:
        _show_caption(run, sample)
    if other_id != "(none)":
        other = scan.by_id(other_id)
        match = {str(r.get("image_id")): r for r in data.samples(other)[0]}.get(ids[index])
        with captions[1]:
            _show_caption(other, match)


ui.page("Samples", render)
