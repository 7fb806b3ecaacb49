"""Runs beside the BLUE paper's published numbers: ``blue report --paper RUN...``.

Each run is matched to the published row of its model (by checkpoint or blue name, or
``--paper-model``), method, strategy and setting (one batch: Table 6; else Table 2, Table 9
for PMET, Table 7 for Llama-2-13B) and shown x100 ± the 95% interval of its mean over cases,
beside the published value ± the paper's; Table 4's statistic is computed from the runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from blue_cli.reporting.compare import Comparison, ReportError, Run, case_spread
from blue_cli.reporting.paper import (
    DATASET_METRICS,
    NOT_REPORTED,
    PAPER_FILE,
    PAPER_MODEL_OF_NAME,
    PAPER_MODEL_OF_SOURCE,
    PRE_EDIT,
    SCALE,
    SETTING_SIZES,
    ImprovementCell,
    Paper,
    alphaedit_note,
    finite_float,
    improvement_cell,
    improvement_comparison,
    paper_improvements,
)
from blue_cli.runs.files import CASES, read_jsonl


def run_cases(run: Run) -> list[dict]:
    """The run's per-case metrics (cases.jsonl; pre-edit values under ``pre_<metric>``)."""
    return read_jsonl(Path(run.path) / CASES)


def paper_model_of(run: Run) -> str | None:
    """The paper's name of the run's model: by checkpoint, else by blue model name, else None."""
    source = run.config.get("model.source")
    if isinstance(source, str) and source in PAPER_MODEL_OF_SOURCE:
        return PAPER_MODEL_OF_SOURCE[source]
    name = str(run.summary.get("model", run.config.get("model.name")))
    return PAPER_MODEL_OF_NAME.get(name, name)


def run_setting(run: Run) -> tuple[str, int | None, int | None]:
    """(paper setting, edits, batch size): one batch is the paper's batch setting, else sequential."""
    edits = run.summary.get("num_edits", run.config.get("num_edits"))
    batch = run.summary.get("batch_size", run.config.get("batch_size"))
    one_batch = isinstance(edits, int) and isinstance(batch, int) and batch >= edits
    return ("batch" if one_batch else "sequential"), edits, batch


def resolve_paper_model(name: str | None, paper: Paper) -> str | None:
    """``--paper-model``: a paper model name or a blue model name for one; else a one-line error."""
    if name is None:
        return None
    resolved = PAPER_MODEL_OF_NAME.get(name, name)
    if resolved not in paper.models:
        raise ReportError(f"unknown --paper-model '{name}' (choose: {', '.join(paper.models)})")
    return resolved


def _metric_columns(metrics: Iterable[str]) -> list[str]:
    cols = []
    for short in metrics:
        cols += [f"{short} x100", f"{short} x100 ±", f"{short} paper", f"{short} paper ±", f"{short} diff"]
    return cols


def paper_comparison(runs: Sequence[Run], paper: Paper, paper_model: str | None = None) -> Comparison:
    """One row per run, and one pre-edit row per model x dataset x size: measured x100 ± its 95%
    interval over cases, published ± the paper's, and measured - published, per paper metric.

    A run is matched to the paper's row of its model (``paper_model`` reads every run as that
    one), method, strategy and setting (one batch: Table 6; else Table 2, Table 9 for PMET,
    Table 7 for Llama-2-13B). Cells the paper does not report read ``n/r``.
    """
    forced = resolve_paper_model(paper_model, paper)
    datasets = [d for d in DATASET_METRICS if any(str(r.summary.get("dataset")) == d for r in runs)]
    shorts = list(dict.fromkeys(short for d in (datasets or ["counterfact"]) for _, short in DATASET_METRICS[d]))
    columns = ["run", "model", "paper model", "method", "strategy", "dataset", "edits", "batch", "paper table"]
    columns += _metric_columns(shorts)
    rows: list[dict[str, Any]] = []
    unmatched, off_size, used = [], [], []
    pre_seen: set[tuple] = set()
    for run in runs:
        s = run.summary
        model = str(s.get("model", run.config.get("model.name")))
        pmodel = forced or paper_model_of(run)
        dataset = str(s.get("dataset", run.config.get("dataset.name")))
        setting, edits, batch = run_setting(run)
        method, strategy = str(s.get("method")), str(s.get("strategy"))
        cases = run_cases(run)
        if (edits, batch) != SETTING_SIZES[setting]:
            off_size.append(run.name)
        entries = [(method, strategy, "")]
        pre_key = (pmodel, dataset, edits, setting)
        if pre_key not in pre_seen and any(f"pre_{m}" in s for m, _ in DATASET_METRICS.get(dataset, ())):
            pre_seen.add(pre_key)
            entries.insert(0, (*PRE_EDIT, "pre_"))
        for row_method, row_strategy, prefix in entries:
            found = paper.find(pmodel, row_method, row_strategy, setting) if pmodel else None
            row: dict[str, Any] = {
                "run": run.name,
                "model": model,
                "paper model": pmodel,
                "method": row_method,
                "strategy": row_strategy,
                "dataset": dataset,
                "edits": 0 if prefix else edits,
                "batch": batch,
                "paper table": found.source if found else None,
            }
            if found is None and not prefix:
                unmatched.append(run.name)
            if found is not None:
                used.append(found)
            metrics = dict(DATASET_METRICS.get(dataset, ()))
            for metric, short in DATASET_METRICS["counterfact"]:
                if short not in shorts:
                    continue
                measured = finite_float(s.get(prefix + metric))
                spread = case_spread(cases, metric, prefix) if measured is not None else None
                published = found.values.get((dataset, metric)) if found and metric in metrics else None
                row[f"{short} x100"] = None if measured is None else measured * SCALE
                row[f"{short} x100 ±"] = None if spread is None else spread * SCALE
                row[f"{short} paper"] = NOT_REPORTED if published is None else published[0]
                row[f"{short} paper ±"] = None if published is None else published[1]
                row[f"{short} diff"] = (
                    measured * SCALE - published[0] if measured is not None and published is not None else None
                )
            rows.append(row)
    notes = [
        f"paper: {paper.title}; source: {paper.source} (shipped as blue_cli/assets/paper/{PAPER_FILE.name})",
        "x100: measured x100, ± its 95% interval over cases (1.96 sd/sqrt(n)); paper: the published value, "
        f"± the paper's; diff: measured - paper; {NOT_REPORTED}: not reported by the paper",
    ]
    if any(r.copied_from_alphaedit for r in used):
        notes.append(f"* {alphaedit_note(paper)}")
    notes += [f"note: {n}" for n in paper.notes if "copy error" in n and any(r.table == "Table 9" for r in used)]
    if off_size:
        sizes = "; ".join(f"{k}: {e} edits in batches of {b}" for k, (e, b) in SETTING_SIZES.items())
        notes.append(
            f"runs {', '.join(off_size)} differ from the paper's sizes ({sizes}): the published values are "
            "not a measurement of the same setting"
        )
    if unmatched:
        notes.append(
            f"no published row for runs {', '.join(unmatched)} (paper models: {', '.join(paper.models)}; "
            "map a model with --paper-model)"
        )
    return Comparison(columns=columns, rows=rows, metrics=[], notes=notes, title="runs vs the paper", digits=2)


def run_improvements(runs: Sequence[Run], paper_model: str | None = None) -> list[tuple[tuple, ImprovementCell]]:
    """Table 4's statistic from runs: per model x method x sizes, BLUE runs against spread runs.

    Runs are paired when they agree on model, method, dataset, edits and batch size and differ
    in strategy (spread is the baseline); a cell pools the datasets that have a pair.
    Returns ((paper model, method, setting, edits, batch), cell) pairs.
    """
    groups: dict[tuple, dict[str, dict[tuple[str, str], float | None]]] = {}
    for run in runs:
        s = run.summary
        strategy = str(s.get("strategy"))
        if strategy not in ("spread", "blue"):
            continue
        dataset = str(s.get("dataset"))
        setting, edits, batch = run_setting(run)
        key = (paper_model or paper_model_of(run), str(s.get("method")), setting, edits, batch)
        side = groups.setdefault(key, {}).setdefault(strategy, {})
        for metric, _ in DATASET_METRICS.get(dataset, ()):
            side[(dataset, metric)] = finite_float(s.get(metric))
    out = []
    for key, sides in groups.items():
        if "spread" in sides and "blue" in sides:
            out.append((key, improvement_cell(key[0], key[1], sides["spread"], sides["blue"])))
    return out


def runs_improvement_comparison(runs: Sequence[Run], paper: Paper, paper_model: str | None = None) -> Comparison | None:
    """Table 4 from the runs, with the published statistic for the same model x method beside it."""
    pairs = run_improvements(runs, resolve_paper_model(paper_model, paper))
    if not pairs:
        return None
    published = {}
    for (model, method, setting, _, _), _cell in pairs:
        table = {"sequential": "Table 2", "batch": "Table 6"}[setting]
        for cell in paper_improvements(paper, table, setting):
            if (cell.model, cell.method) == (model, method):
                published[(model, method)] = cell.mean
    sizes = sorted({(e, b) for (_, _, _, e, b), _ in pairs}, key=str)
    title = "Table 4's statistic from these runs (" + "; ".join(f"{e} edits, batch {b}" for e, b in sizes) + ")"
    comparison = improvement_comparison([c for _, c in pairs], title, published)
    comparison.notes.append(
        "paper (%): the same statistic from the shipped Table 2 (sequential) or Table 6 (one batch)"
    )
    return comparison
