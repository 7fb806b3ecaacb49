"""The BLUE paper's published tables as printable tables: ``blue report --paper`` without runs.

Each result table and setting of the shipped file (value and the paper's ± per metric, the
baseline rows AlphaEdit's Table 1 supplied marked ``*`` and said once), Table 4 recomputed from
Table 2 (and its statistic on Table 6), the efficiency table and Table 1's optimisation steps.
"""

from __future__ import annotations

import re
from typing import Any

from blue_cli.reporting.compare import Comparison
from blue_cli.reporting.paper import (
    DATASET_METRICS,
    DATASET_TITLE,
    METHOD_TITLE,
    MODEL_TITLE,
    Paper,
    alphaedit_note,
    improvement_comparison,
    paper_improvements,
)


def _pm_columns(dataset: str) -> list[str]:
    title = DATASET_TITLE[dataset]
    return [c for _, short in DATASET_METRICS[dataset] for c in (f"{title} {short}", f"{title} {short} ±")]


def paper_table(paper: Paper, table: str, setting: str) -> Comparison:
    """One published table (e.g. Table 2): a row per model x method x strategy, value and ± per metric."""
    rows = [r for r in paper.rows if r.table == table and r.setting == setting]
    columns = ["model", "method", "strategy", *(c for d in DATASET_METRICS for c in _pm_columns(d))]
    out = []
    for r in rows:
        row: dict[str, Any] = {
            "model": MODEL_TITLE.get(r.model, r.model),
            "method": METHOD_TITLE.get(r.method, r.method) + ("*" if r.copied_from_alphaedit else ""),
            "strategy": r.strategy,
        }
        for dataset, metrics in DATASET_METRICS.items():
            for metric, short in metrics:
                value, ci = r.values[(dataset, metric)]
                row[f"{DATASET_TITLE[dataset]} {short}"] = value
                row[f"{DATASET_TITLE[dataset]} {short} ±"] = ci
        out.append(row)
    # the setting text's own remark on copied rows is left to the one "*" note below
    notes = [f"setting: {re.sub(r' *[(][^)]*AlphaEdit[^)]*[)]', '', rows[0].setting_text)}" if rows else ""]
    if any(r.copied_from_alphaedit for r in rows):
        notes.append(f"* {alphaedit_note(paper)}")
    title = f"BLUE paper {table}, {setting}"
    return Comparison(columns=columns, rows=out, metrics=[], notes=[n for n in notes if n], title=title, digits=2)


def efficiency_table(paper: Paper) -> Comparison | None:
    """Fig. 12 seconds per edit and Table 8 peak memory per edit, spread beside blue."""
    eff = paper.efficiency
    if not eff:
        return None
    memory = {
        (m["dataset"], m["model"], m["method"], m["strategy"]): m["peak_memory"] for m in eff.get("peak_memory", [])
    }
    columns = ["dataset", "model", "method", "s/edit spread", "s/edit blue", "memory spread", "memory blue"]
    rows = []
    for item in eff.get("seconds_per_edit", []):
        key = (item["dataset"], item["model"], item["method"])
        rows.append(
            {
                "dataset": DATASET_TITLE.get(item["dataset"], item["dataset"]),
                "model": MODEL_TITLE.get(item["model"], item["model"]),
                "method": METHOD_TITLE.get(item["method"], item["method"]),
                "s/edit spread": item.get("seconds_per_edit_spread"),
                "s/edit blue": item.get("seconds_per_edit_blue"),
                "memory spread": memory.get((*key, "spread")),
                "memory blue": memory.get((*key, "blue")),
            }
        )
    title = "BLUE paper Fig. 12 (seconds per edit) and Table 8 (peak memory per edit)"
    return Comparison(
        columns=columns, rows=rows, metrics=[], notes=[f"setting: {eff.get('setting', '')}"], title=title, digits=2
    )


def steps_table(paper: Paper) -> Comparison | None:
    """Table 1: mean target-optimisation steps at each critical layer."""
    steps = {k: v for k, v in paper.steps.items() if isinstance(v, list)}
    if not steps:
        return None
    width = max(len(v) for v in steps.values())
    columns = ["model", "critical layers", *(f"layer {i + 1}" for i in range(width))]
    rows = []
    for model, values in steps.items():
        row: dict[str, Any] = {
            "model": MODEL_TITLE.get(model, model),
            "critical layers": " ".join(str(x) for x in paper.layers.get(model, [])),
        }
        row.update({f"layer {i + 1}": v for i, v in enumerate(values)})
        rows.append(row)
    notes = [f"setting: {paper.steps.get('setting', '')}"]
    title = "BLUE paper Table 1, mean target-optimisation steps per critical layer (in order)"
    return Comparison(columns=columns, rows=rows, metrics=[], notes=notes, title=title, digits=2)


def paper_sections(paper: Paper) -> list[Comparison]:
    """Everything the paper file holds, as tables: each result table, Table 4, efficiency, steps."""
    sections = [paper_table(paper, table, setting) for table, setting in paper.tables]
    sections.append(
        improvement_comparison(
            paper_improvements(paper), "BLUE paper Table 4, recomputed from its Table 2 (published: +35.59%)"
        )
    )
    sections.append(
        improvement_comparison(
            paper_improvements(paper, "Table 6", "batch"),
            "BLUE paper Table 4's statistic on its Table 6 (not printed in the paper)",
        )
    )
    sections += [s for s in (efficiency_table(paper), steps_table(paper)) if s is not None]
    sections[-1].notes += [f"paper: {paper.title}", f"source: {paper.source}", f"scale: {paper.scale}"] + [
        f"note: {n}"
        for n in paper.notes
        if n != alphaedit_note(paper)  # said once, under Table 2
    ]
    return sections
