"""POPE page: per-split accuracy, precision, recall, F1 and yes-ratio, confusion matrices, and the answers."""

from __future__ import annotations

from collections import Counter
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from app import charts, data, ui
from benchmarks.pope import SPLITS
from halluc.errors import InputDataError
from halluc.runs import read_json

__all__: list[str] = []


def _scored(run: data.Run) -> list[dict[str, Any]]:
    """Judged answers (pope_scored.json), [] before scoring."""
    path = data.run_file(run, "pope_scored.json")
    if not path.exists():
        return []
    scored = read_json(path)
    if not isinstance(scored, list) or not all(isinstance(r, dict) and "label" in r for r in scored):
        raise InputDataError(f"{path} must hold a JSON array of scored answers with 'label' and 'prediction'")
    return scored


def _confusion(scored: list[dict[str, Any]], split: str) -> alt.Chart:
    """2x2 counts of (truth, answer) for one split; unparsed answers are left out."""
    mine = [r for r in scored if (r.get("split") or "all") == split and r.get("prediction") is not None]
    counts = Counter((r["label"], r["prediction"]) for r in mine)
    name = {True: "yes", False: "no"}
    rows = [{"truth": name[t], "answer": name[p], "count": counts[(t, p)]} for t in name for p in name]
    return charts.heatmap(rows, x="answer", y="truth", value="count", title=split, annotate=True).properties(
        width=180, height=180
    )


def _answers(run: data.Run, scored: list[dict[str, Any]]) -> pd.DataFrame:
    """Each question with its label, the model's answer and whether it was judged correct."""
    questions_path = data.run_file(run, "pope_questions.json")
    questions = read_json(questions_path) if questions_path.exists() else []
    text = {(q.get("split"), q.get("question_id")): q for q in questions if isinstance(q, dict)}
    answers = {(s.get("image"), s.get("question")): s.get("response", s.get("error")) for s in data.samples(run)[0]}
    rows = []
    for r in scored:
        question = text.get((r.get("split"), r.get("question_id")), {})
        rows.append(
            {
                "split": r.get("split"),
                "image": question.get("image"),
                "question": question.get("text"),
                "label": "yes" if r["label"] else "no",
                "answer": answers.get((question.get("image"), question.get("text"))),
                "correct": r.get("correct"),
            }
        )
    return pd.DataFrame(rows)


def render(scan: data.Scan) -> None:
    run = ui.pick_run_or_explain(
        scan.with_job("pope"), "No POPE run yet: run `halluc pope` to answer POPE's yes/no object questions."
    )
    if run is None:
        return
    metrics = run.metrics
    if not metrics:
        st.info(f"{run.id} is not scored yet (metrics.json is written when the run finishes).")
        return
    splits = data.ordered((k for k, v in metrics.items() if isinstance(v, dict)), [*SPLITS, "all", "mean"])
    for column, split in zip(st.columns(len(splits)), splits, strict=True):
        values = metrics[split]
        column.markdown(f"**{split}**")
        for key, label in (("accuracy", "accuracy"), ("f1", "F1"), ("yes_ratio", "yes-ratio")):
            if isinstance(values.get(key), int | float):
                column.metric(label, f"{values[key]:.3f}")
    table = pd.DataFrame([{"split": split, **metrics[split]} for split in splits])
    shown = {k: st.column_config.NumberColumn(k, format="%.3f") for k in data.POPE_KEYS}
    shown |= {k: st.column_config.NumberColumn(k, format="%d") for k in ("n", "n_unparsed")}
    st.dataframe(table, hide_index=True, column_order=["split", *shown], column_config=shown)
    st.caption("Yes is the positive class; yes-ratio is the share of answers that are yes (0.5 for balanced labels).")
    yes = [{"split": s, "yes_ratio": metrics[s]["yes_ratio"]} for s in splits if "yes_ratio" in metrics[s]]
    bars = alt.Chart(alt.Data(values=yes), title="yes-ratio").mark_bar().encode(x="split:N", y="yes_ratio:Q")
    rule = alt.Chart(alt.Data(values=[{"y": 0.5}])).mark_rule(strokeDash=[4, 4]).encode(y="y:Q")
    st.altair_chart(bars + rule, width="stretch")
    scored = _scored(run)
    if scored:
        st.subheader("Confusion matrices (rows: truth, columns: answer)")
        split_names = [s for s in splits if s != "mean"]
        st.altair_chart(alt.hconcat(*[_confusion(scored, s) for s in split_names]))
        with st.expander("Answers"):
            answers = _answers(run, scored)
            if st.checkbox("only wrong answers", key="pope-wrong"):
                answers = answers[answers["correct"] == False]  # noqa: E712 (pandas element-wise comparison)
            st.dataframe(answers, hide_index=True)


ui.page("POPE", render)
