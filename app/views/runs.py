"""Runs page: every run with model, intervention, dataset, date, status and key metrics; filters; live progress;
protocols' mean ± std over their splits."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import data, ui

__all__: list[str] = []

_FILTERS = ("job", "model", "intervention", "dataset", "status")


def _row(run: data.Run) -> dict[str, object]:
    dataset, _, split = run.dataset.partition(":")
    return {
        "run": run.id,
        "job": run.job,
        "model": run.model,
        "intervention": run.intervention,
        "dataset": run.dataset,
        "split": split or dataset,
        "started": str(run.manifest.get("started_at", "")).replace("T", " ")[:19],
        "status": run.status,
        "samples": f"{run.n_samples}/{run.n_requests if run.n_requests is not None else '?'}",
        **data.headline(run),
    }


def _progress(scan: data.Scan) -> None:
    """A progress bar per run still being written (refresh to update); how to resume each interrupted one."""
    for run in scan.runs:
        total = run.n_requests or 0
        if run.status == "running":
            done = min(1.0, run.n_samples / total) if total else 0.0
            st.progress(done, text=f"{run.id} is running: {run.n_samples} of {total or '?'} samples written")
        elif run.status == "interrupted":
            st.warning(
                f"{run.id} was interrupted after {run.n_samples} of {total or '?'} samples (its writer is gone); "
                f"resume it with `{run.resume_command or 'its command plus --resume'}`"
            )


def _protocols(scan: data.Scan) -> None:
    """Each protocol's mean ± std over its splits (its protocol_summary.json), one table per protocol folder."""
    found, problems = data.protocol_summaries(scan)
    ui.show_problems(problems, what="Some protocol summaries could not be read")
    for folder, summary in found:
        protocol = summary.get("protocol") if isinstance(summary.get("protocol"), dict) else {}
        st.subheader(f"Protocol {protocol.get('name', '?')}: {folder}")
        rows = []
        for metric, value in summary["metrics"].items():
            std = value.get("std")
            shown = f"{value['mean']:.3f} ± {std:.3f}" if isinstance(std, int | float) else f"{value['mean']:.3f}"
            splits = {f"split {i}": v for i, v in enumerate(value.get("values") or [], 1)}
            rows.append({"metric": metric, "mean ± std": shown, **splits})
        numbers = {c: st.column_config.NumberColumn(c, format="%.3f") for c in rows[0] if c.startswith("split")}
        st.dataframe(pd.DataFrame(rows), hide_index=True, column_config=numbers)
        seeds = protocol.get("seeds") or []
        st.caption(
            f"{summary.get('n_splits_run', '?')} of {len(seeds)} splits (seeds {seeds}); sample std (n - 1) over "
            f"splits; intervention: {data.intervention_label(summary.get('intervention'))}"
            + ("" if summary.get("complete", True) else "; incomplete: not every split of the protocol was run")
        )


def render(scan: data.Scan) -> None:
    _progress(scan)
    table = pd.DataFrame([_row(run) for run in scan.runs])
    metrics = [c for c in data.HEADLINE if c in table.columns]  # CHAIR columns first, then POPE's
    table = table[[*(c for c in table.columns if c not in data.HEADLINE), *metrics]]
    columns = st.columns(len(_FILTERS) + 1)
    options = {name: sorted(table[name].unique()) for name in _FILTERS}  # from all runs, so choices stay valid
    for column, name in zip(columns, _FILTERS, strict=False):
        chosen = column.multiselect(name, options[name], key=f"filter-{name}")
        if chosen:
            table = table[table[name].isin(chosen)]
    query = columns[-1].text_input("search run id", key="filter-text")
    if query:
        table = table[table["run"].str.contains(query, case=False, regex=False)]
    numbers = {k: st.column_config.NumberColumn(k, format="%.3f") for k in table.select_dtypes("number").columns}
    st.dataframe(table, hide_index=True, column_config=numbers)
    st.caption(
        f"{len(table)} of {len(scan.runs)} runs in {scan.root}. Metrics are fractions; lower CHAIR is better; "
        "POPE columns are means over its splits."
    )
    _protocols(scan)


ui.page("Runs", render)
