"""Compare page: chosen runs' metrics side by side with deltas to a baseline, paired differences with CIs and
p-values (as ``halluc compare``), bar charts, and the CHAIR trade-off."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import charts, comparing, data, ui
from benchmarks.compare import Comparison, compare_runs
from halluc.errors import HallucError, InputDataError

__all__: list[str] = []

_LOWER_IS_BETTER = {"CHAIR_s", "CHAIR_i", "CHAIR_i_distinct", "degenerate_share"}
# fractions; avg_len and mentions_per_caption are on other scales
_BARS = ("CHAIR_s", "CHAIR_i", "CHAIR_i_distinct", "recall", "precision", "f1", "degenerate_share")


def _metrics(run: data.Run) -> dict[str, float]:
    """The numbers compared for a run: CHAIR's aggregate metrics, or POPE's per-split and mean metrics."""
    metrics = run.metrics or {}
    if run.job == "pope":
        return {
            f"{split} {key}": float(values[key])
            for split, values in metrics.items()
            if isinstance(values, dict)
            for key in data.POPE_KEYS
            if isinstance(values.get(key), int | float)
        }
    return {k: float(metrics[k]) for k in data.CHAIR_KEYS if isinstance(metrics.get(k), int | float)}


def _cards(runs: list[data.Run], baseline: data.Run, keys: list[str]) -> None:
    """One column of metric cards per run, each with its delta to the baseline run."""
    base = _metrics(baseline)
    for column, run in zip(st.columns(len(runs)), runs, strict=True):
        column.markdown(f"**{run.id}**  \n{run.intervention}")
        values = _metrics(run)
        for key in keys:
            if key not in values:
                continue
            delta = None if run is baseline or key not in base else f"{values[key] - base[key]:+.3f}"
            column.metric(
                key, f"{values[key]:.3f}", delta, delta_color="inverse" if key in _LOWER_IS_BETTER else "normal"
            )


def _table(runs: list[data.Run], baseline: data.Run) -> pd.DataFrame:
    """Metric rows x run columns, plus a delta-to-baseline column per non-baseline run."""
    base = _metrics(baseline)
    table: dict[str, dict[str, float]] = {}
    for run in runs:
        values = _metrics(run)
        table[run.id] = values
        if run is not baseline:
            table[f"Δ {run.id}"] = {k: v - base[k] for k, v in values.items() if k in base}
    return pd.DataFrame(table)


@st.cache_data(show_spinner="Bootstrapping the paired differences ...", max_entries=64)
def _compare(baseline: str, run: str, stamps: tuple[float, float]) -> Comparison:
    """``compare_runs`` of two run directories, recomputed when their files change (``stamps``: latest mtimes)."""
    return compare_runs(Path(baseline), Path(run))


def _stamp(run: data.Run) -> float:
    return max((f.stat().st_mtime for f in run.path.glob("*.json")), default=0.0)


def _paired(runs: list[data.Run], baseline: data.Run) -> None:
    """Each other run minus the baseline on their shared samples: 95% bootstrap CI and the paired test's p-value."""
    others = [run for run in runs if run is not baseline]
    if not others:
        return
    st.subheader("Paired differences to the baseline")
    for run in others:
        try:
            result = _compare(str(baseline.path), str(run.path), (_stamp(baseline), _stamp(run)))
        except HallucError as exc:
            st.warning(f"{run.id}: {exc}")
            continue
        st.markdown(
            f"**{run.id}** - {baseline.id} on {result.n_shared} shared {result.unit} ({result.n_only_a} only in the "
            f"baseline, {result.n_only_b} only in {run.id})"
        )
        frame = comparing.paired_frame(result)
        numbers = [c for c in frame.columns if c not in ("p", "test")]
        st.dataframe(
            frame.style.format("{:.3f}", subset=numbers, na_rep="-").format("{:.4f}", subset=["p"], na_rep="-")
        )
    st.caption(
        "Difference = run - baseline (fractions) with its 95% percentile bootstrap CI, resampling the shared images "
        "(for POPE each image with all its questions); p: exact McNemar test (CHAIR_s) or paired permutation test "
        "swapping each image's two outputs (the others), 2,000 resamples; the same numbers as "
        "`halluc compare BASELINE RUN`."
    )


def _tradeoff(runs: list[data.Run]) -> None:
    rows = []
    for run in runs:
        method, strength = data.intervention_strength(run.manifest.get("intervention"))
        metrics = run.metrics or {}
        if isinstance(metrics.get("CHAIR_i"), int | float) and isinstance(metrics.get("recall"), int | float):
            point = {"run": run.id, "method": method, "strength": strength}
            rows.append({**point, "CHAIR_i": metrics["CHAIR_i"], "recall": metrics["recall"]})
    baselines = [r for r in rows if r["method"] == "none"]
    if len(baselines) == 1:  # start every method's line at the one run without intervention (strength 0)
        rows += [{**baselines[0], "method": m} for m in sorted({r["method"] for r in rows} - {"none"})]
    if rows:
        st.altair_chart(charts.tradeoff_scatter(rows), width="stretch")
        st.caption(
            "One point per run; the runs of one intervention method are joined in order of strength, starting "
            "from the run without intervention when exactly one is picked."
        )


def _comparable(chosen: list[data.Run], job: str) -> list[data.Run] | None:
    """Warn when the runs measure different things; on request, rescore them on the samples they share."""
    differences = comparing.differences(chosen)
    if differences:
        st.warning(
            "These runs differ in more than the intervention, so their differences do not measure it alone:\n\n"
            + "\n".join(f"- {line}" for line in differences)
        )
    if len(chosen) < 2 or not st.checkbox("shared samples only", key=f"compare-shared-{job}"):
        return chosen
    try:
        rescored, n_shared = comparing.on_shared_samples(chosen)
    except InputDataError as exc:
        st.error(str(exc))
        return None
    if not n_shared:
        st.info("The chosen runs share no sample.")
        return None
    st.caption(f"Metrics recomputed on the {n_shared} shared samples of the chosen runs.")
    return rescored


def render(scan: data.Scan) -> None:
    jobs = sorted({run.job for run in scan.runs if run.metrics})
    if not jobs:
        st.info("No run has metrics yet (metrics.json is written when a run finishes scoring).")
        return
    job = st.radio("benchmark", jobs, horizontal=True, key="compare-job")
    candidates = [run for run in scan.with_job(job) if run.metrics]
    ids = [run.id for run in candidates]
    chosen_ids = st.multiselect("runs", ids, default=ids[:4], key=f"compare-runs-{job}")
    chosen = [candidates[ids.index(run_id)] for run_id in chosen_ids]  # in the order picked
    if not chosen:
        st.info("Pick at least one run.")
        return
    chosen = _comparable(chosen, job)
    if chosen is None:
        return
    default = next((i for i, run in enumerate(chosen) if run.intervention == "none"), 0)
    pick = st.selectbox(
        "baseline", chosen_ids, index=default, format_func=lambda i: scan.by_id(i).label, key=f"base-{job}"
    )
    baseline = next(run for run in chosen if run.id == pick)
    keys = list(data.CHAIR_HEADLINE) if job == "chair" else ["mean accuracy", "mean f1", "mean yes_ratio"]
    _cards(chosen, baseline, keys)
    st.subheader("All metrics")
    st.dataframe(_table(chosen, baseline).style.format("{:.3f}", na_rep=""))
    _paired(chosen, baseline)
    rows = [
        {"metric": k, "run": run.id, "value": v}
        for run in chosen
        for k, v in _metrics(run).items()
        if k in _BARS or k.endswith((" f1", " accuracy"))
    ]
    st.altair_chart(charts.grouped_bars(rows, x="metric", value="value", colour="run", title="Metrics"))
    if job == "chair":
        _tradeoff(chosen)


ui.page("Compare", render)
