"""Streamlit building blocks shared by the pages: page frame, run picker, highlighted text, images with boxes."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import streamlit as st
from PIL import Image, ImageDraw

from app import data
from app.artifacts import Detection
from halluc.errors import HallucError
from halluc.imagesets import load_image
from halluc.objects import extract_mentions

__all__ = [
    "Span",
    "draw_boxes",
    "highlight",
    "mark_objects",
    "page",
    "pick_run",
    "pick_run_with",
    "show_problems",
]

Span = tuple[int, int, str, str]  # [start, end) in the text, CSS class, tooltip
_MARK_STYLE = {
    "halluc": "background:#ffc9c9;color:#a00000;border:1px solid #e03131",
    "grounded": "background:#d3f9d8;color:#1b5e20",
    "object": "background:#e7f5ff;color:#1c4f80",
}
_GT_COLOUR = (46, 160, 67)
_DET_COLOUR = (255, 140, 0)
_DISPLAY_SIDE = 384  # images are scaled so their longest side is this many pixels


def page(title: str, body: Callable[[data.Scan], None]) -> None:
    """Frame every page the same way: title, the scanned runs dir, an empty-dir note, and errors as one message."""
    st.title(title)
    scan = data.scan_runs(data.runs_root())
    show_problems(scan.problems)
    if not scan.runs:
        st.info(
            f"No runs in {scan.root}. Create one with `halluc chair --out {scan.root}/<name>` (or `halluc pope`), "
            "or point the dashboard elsewhere with `halluc dashboard --runs DIR`."
        )
        return
    try:
        body(scan)
    except HallucError as exc:
        st.error(str(exc))


def show_problems(problems: Sequence[str], *, what: str = "Some files could not be read") -> None:
    """One warning listing unreadable runs, files or lines (at most 20 shown)."""
    if problems:
        listed = "\n".join(f"- {p}" for p in problems[:20])
        more = f"\n- ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        st.warning(f"{what}:\n{listed}{more}")


def pick_run_or_explain(runs: Sequence[data.Run], explanation: str) -> data.Run | None:
    """The picked run of ``runs``; with none, show ``explanation`` (what would produce one) and return None."""
    if runs:
        return pick_run(runs)
    st.info(explanation)
    return None


def pick_run_with(scan: data.Scan, file: str, *, what: str, command: str) -> data.Run | None:
    """The picked run among those holding ``file``; with none, explain which command writes it and return None."""
    return pick_run_or_explain(
        scan.with_file(file),
        f"No run in this directory has `{file}` yet, so there is no {what} to show. "
        f"It is written by `{command}`; the expected format is described in app/README.md.",
    )


def pick_run(runs: Sequence[data.Run], *, label: str = "Run", key: str = "run") -> data.Run:
    """A run selector that remembers its choice in the URL (``?run=<id>``) so pages can be linked to."""
    ids = [run.id for run in runs]
    wanted = st.query_params.get(key)
    index = ids.index(wanted) if wanted in ids else 0
    chosen = st.selectbox(label, ids, index=index, format_func=lambda i: runs[ids.index(i)].label, key=f"pick-{key}")
    st.query_params[key] = chosen
    run = runs[ids.index(chosen)]
    if run.status != "finished":
        st.warning(f"Run {run.id} is {run.status}: {run.n_samples} of {run.n_requests or '?'} samples so far.")
    if run.status == "interrupted" and run.resume_command:
        st.info(f"Resume it with `{run.resume_command}`")
    show_problems(run.problems)
    return run


def highlight(text: str, spans: Sequence[Span]) -> str:
    """HTML of ``text`` with each span wrapped in ``<mark class=...>``; a span overlapping an earlier one is dropped."""
    parts, pos = [], 0
    for start, end, css, tip in sorted(spans):
        if start < pos or end > len(text):
            continue
        style = _MARK_STYLE.get(css, "")
        parts.append(html.escape(text[pos:start]))
        parts.append(
            f'<mark class="{css}" title="{html.escape(tip)}" style="{style};border-radius:3px;padding:0 2px">'
            f"{html.escape(text[start:end])}</mark>"
        )
        pos = end
    parts.append(html.escape(text[pos:]))
    return f'<div class="caption" style="line-height:1.7">{"".join(parts)}</div>'


def mark_objects(text: str, classes: Mapping[str, str]) -> str:
    """HTML of ``text`` with mentions of the given COCO categories marked, found by halluc's shared extractor."""
    try:
        mentions = extract_mentions(text) if classes else []
    except HallucError as exc:  # NLTK data missing: show the text unmarked and say why
        st.caption(f"objects not highlighted: {exc}")
        mentions = []
    spans = [(m.start, m.end, classes[m.category], m.category) for m in mentions if m.category in classes]
    return highlight(text, spans)


def draw_boxes(
    path: Path,
    gt: Sequence[tuple[str, tuple[float, float, float, float]]] = (),
    dets: Sequence[Detection] = (),
) -> Image.Image:
    """The image scaled up for display, with ground-truth boxes (green, COCO xywh) and detector boxes (orange)."""
    image = load_image(path)
    scale = _DISPLAY_SIDE / max(image.size)
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample)
    draw = ImageDraw.Draw(image)
    for name, (x, y, w, h) in gt:  # thick and labelled above, so detector boxes drawn on top leave it visible
        _box(draw, (x * scale, y * scale, (x + w) * scale, (y + h) * scale), name, _GT_COLOUR, width=4, above=True)
    for det in dets:
        x1, y1, x2, y2 = (v * scale for v in det.box)
        _box(draw, (x1, y1, x2, y2), f"{det.label} {det.score:.2f}", _DET_COLOUR, width=2, above=False)
    return image


def _box(
    draw: ImageDraw.ImageDraw, box: tuple[float, ...], text: str, colour: tuple, *, width: int, above: bool
) -> None:
    """A rectangle with its label on a filled strip just above it (or inside its bottom edge)."""
    draw.rectangle(box, outline=colour, width=width)
    left, top = box[0], max(0.0, box[1] - 12) if above else box[3] - 12
    draw.rectangle(draw.textbbox((left, top), text), fill=colour)
    draw.text((left, top), text, fill=(255, 255, 255))
