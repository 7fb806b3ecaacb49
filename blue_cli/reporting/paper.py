"""Published numbers beside measured ones: ``blue report --paper blue_table RUN...``.

A paper table ships as JSON in ``blue_cli/assets/paper/<name>.json``: one row per
(model, dataset, method, strategy) with the paper's Eff/Gen/Spe/Flu/Consis, null
where the paper does not report a value, plus the source the numbers were read from.
The measured values are the run's summary times 100, the paper's scale (rates in
percent; fluency is the n-gram entropy x100 and consistency the TF-IDF similarity
x100, as the reference's tables print them).

Pure functions over run folders and the JSON file (no model, no rich).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blue_cli import ASSETS_DIR
from blue_cli.reporting.compare import Comparison, ReportError, Run

PAPER_DIR = ASSETS_DIR / "paper"
# (summary key, the paper's column name)
PAPER_METRICS = (
    ("efficacy", "Eff"),
    ("generalization", "Gen"),
    ("specificity", "Spe"),
    ("fluency", "Flu"),
    ("consistency", "Consis"),
)
NOT_REPORTED = "n/r"
SCALE = 100.0
Key = tuple[str, str, str, str]  # (model, dataset, method, strategy)


@dataclass(frozen=True)
class PaperTable:
    """A paper's published table: {(model, dataset, method, strategy): {metric: value or None}}."""

    name: str
    title: str
    source: str
    rows: dict[Key, dict[str, float | None]]

    @property
    def models(self) -> list[str]:
        return sorted({k[0] for k in self.rows})

    def value(self, key: Key, metric: str) -> float | None:
        """The published value, or None where the paper does not report it (or has no such row)."""
        return self.rows.get(key, {}).get(metric)


def paper_names(folder: Path = PAPER_DIR) -> list[str]:
    """The shipped paper tables, as ``--paper`` accepts them."""
    return sorted(p.stem for p in folder.glob("*.json"))


def load_paper_table(name: str, folder: Path = PAPER_DIR) -> PaperTable:
    """Read ``<folder>/<name>.json``; an unknown name is a one-line error listing the known ones."""
    path = folder / f"{name}.json"
    if not path.is_file():
        raise ReportError(f"unknown --paper '{name}' (choose: {', '.join(paper_names(folder)) or 'none shipped'})")
    doc = json.loads(path.read_text(encoding="utf-8"))
    rows: dict[Key, dict[str, float | None]] = {}
    for i, row in enumerate(doc["rows"]):
        key = (row["model"], row["dataset"], row["method"], row["strategy"])
        if key in rows:
            raise ReportError(f"{path}: row {i} repeats {key}")
        rows[key] = {m: row.get(m) for m, _ in PAPER_METRICS}
    return PaperTable(name=name, title=doc.get("title", name), source=doc.get("source", ""), rows=rows)


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def paper_columns() -> list[str]:
    """Per metric: the measured value x100, the published one, and their difference."""
    return [f"{short} {part}" for _, short in PAPER_METRICS for part in ("x100", "paper", "diff")]


def paper_comparison(runs: Sequence[Run], table: PaperTable, paper_model: str | None = None) -> Comparison:
    """One row per run: measured (x100), published and measured - published, per paper metric.

    ``paper_model`` reads every run as that paper model (e.g. a tiny-gpt2 smoke run as
    ``llama3``); without it a run's own model name must be one of the table's models.
    Published cells the paper does not report read ``n/r``; their difference is empty.
    """
    if paper_model is not None and paper_model not in table.models:
        raise ReportError(
            f"unknown --paper-model '{paper_model}' for '{table.name}' (choose: {', '.join(table.models)})"
        )
    columns = [
        "run",
        "model",
        *(["paper model"] if paper_model else []),
        "method",
        "strategy",
        "dataset",
        "edits",
        *paper_columns(),
    ]
    rows, unmatched = [], []
    for run in runs:
        s, c = run.summary, run.config
        model = str(s.get("model", c.get("model.name")))
        method, strategy = str(s.get("method", c.get("method.name"))), str(s.get("strategy", c.get("strategy.name")))
        dataset = str(s.get("dataset", c.get("dataset.name")))
        key = (paper_model or model, dataset, method, strategy)
        row: dict[str, Any] = {
            "run": run.name,
            "model": model,
            "method": method,
            "strategy": strategy,
            "dataset": dataset,
            "edits": s.get("num_edits", c.get("num_edits")),
        }
        if paper_model:
            row["paper model"] = paper_model
        if key not in table.rows:
            unmatched.append(run.name)
        for metric, short in PAPER_METRICS:
            measured = _number(s.get(metric))
            measured = None if measured is None else measured * SCALE
            published = _number(table.value(key, metric))
            row[f"{short} x100"] = measured
            row[f"{short} paper"] = NOT_REPORTED if published is None else published
            row[f"{short} diff"] = measured - published if measured is not None and published is not None else None
        rows.append(row)
    notes = [
        f"paper: {table.title}",
        f"source: {table.source}",
        "x100: measured rate x100 (the paper's scale); diff: measured - paper; "
        f"{NOT_REPORTED}: not reported by the paper",
    ]
    if unmatched:
        notes.append(
            f"no row in '{table.name}' for runs {', '.join(unmatched)} "
            f"(paper models: {', '.join(table.models)}; map a model with --paper-model)"
        )
    return Comparison(columns=columns, rows=rows, metrics=[], notes=notes)
