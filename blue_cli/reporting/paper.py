"""The BLUE paper's published numbers beside measured ones: ``blue report --paper [RUN...]``.

The numbers ship as ``blue_cli/assets/paper/blue-neurips2025.json``: the result tables of the
NeurIPS 2025 camera-ready (Table 2 main, Table 6 one batch of 10,000 edits, Table 7 Llama-2-13B,
Table 9 PMET, Table 8 memory, Fig. 12 seconds per edit, Table 1 optimisation steps), each value
with the paper's ± and the caveats of the transcription (``README.md`` beside it gives the source).

Rates are on the paper's scale (x100); fluency is the n-gram entropy x100 and consistency the
TF-IDF score x100, as the reference prints them. A run's summary is multiplied by 100 to match,
and its ± is the 95% normal interval of the mean over its cases (1.96 sd / sqrt(n)), the
interval the paper's ± states.

Table 4 (the paper's headline, +35.59%) is recomputed here, from the shipped Table 2 or from a set
of runs, by one function: :func:`improvement_cell`. The published tables as printable tables are
in :mod:`blue_cli.reporting.paper_tables`, runs beside them in :mod:`blue_cli.reporting.paper_runs`.

Pure functions over the JSON file (no model, no rich).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blue_cli import ASSETS_DIR
from blue_cli.reporting.compare import Comparison, ReportError

PAPER_FILE = ASSETS_DIR / "paper" / "blue-neurips2025.json"
# The paper's metrics per dataset: (summary key, short name), in the paper's column order.
DATASET_METRICS = {
    "counterfact": (
        ("efficacy", "Eff"),
        ("generalization", "Gen"),
        ("specificity", "Spe"),
        ("fluency", "Flu"),
        ("consistency", "Consis"),
    ),
    "zsre": (("efficacy", "Eff"), ("generalization", "Gen"), ("specificity", "Spe")),
}
DATASET_PREFIX = {"counterfact": "cf", "zsre": "zsre"}
DATASET_TITLE = {"counterfact": "CounterFact", "zsre": "zsRE"}
SHORT = dict(DATASET_METRICS["counterfact"])
NOT_REPORTED = "n/r"
SCALE = 100.0
PRE_EDIT = ("pre-edit", "none")  # (method, strategy) of the unedited model's rows
# A run's model, by its checkpoint (config model.source) or its blue name, as the paper names it.
PAPER_MODEL_OF_SOURCE = {
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama3-8b-instruct",
    "EleutherAI/gpt-j-6B": "gpt-j-6b",
    "EleutherAI/gpt-j-6b": "gpt-j-6b",
    "gpt2-xl": "gpt2-xl",
    "openai-community/gpt2-xl": "gpt2-xl",
    "meta-llama/Llama-2-13b-hf": "llama2-13b",
    "meta-llama/Llama-2-13b-chat-hf": "llama2-13b",
}
PAPER_MODEL_OF_NAME = {"llama3": "llama3-8b-instruct", "gpt-j": "gpt-j-6b", "gpt2-xl": "gpt2-xl"}
MODEL_TITLE = {
    "llama3-8b-instruct": "Llama3-8B-Instruct",
    "gpt-j-6b": "GPT-J",
    "gpt2-xl": "GPT2-XL",
    "llama2-13b": "Llama-2-13B",
}
METHOD_TITLE = {
    "pre-edit": "Pre-edited",
    "memit": "MEMIT",
    "prune": "PRUNE",
    "rect": "RECT",
    "alphaedit": "AlphaEdit",
    "pmet": "PMET",
}
# The settings of the paper's tables: (edits, batch size).
SETTING_SIZES = {"sequential": (2000, 100), "batch": (10000, 10000)}


@dataclass(frozen=True)
class PaperRow:
    """One published row: a model x method x strategy in one table and setting, both datasets."""

    table: str
    setting: str  # "sequential" or "batch" (see SETTING_SIZES)
    setting_text: str  # the setting as the transcription words it
    model: str
    method: str
    strategy: str
    values: dict[tuple[str, str], tuple[float, float | None]]  # (dataset, metric) -> (value, ±)

    @property
    def copied_from_alphaedit(self) -> bool:
        """Table 2's baseline and pre-edit rows are AlphaEdit's Table 1 numbers (not the BLUE authors' runs)."""
        return self.table == "Table 2" and self.strategy in ("spread", "none")

    @property
    def source(self) -> str:
        return f"{self.table}*" if self.copied_from_alphaedit else self.table


@dataclass(frozen=True)
class Paper:
    """The shipped paper file: rows, notes and the efficiency and optimisation-step tables."""

    title: str
    source: str
    scale: str
    notes: tuple[str, ...]
    rows: tuple[PaperRow, ...]
    efficiency: dict
    steps: dict
    layers: dict
    blue_layers: dict
    alphaedit_l2: dict

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.rows))

    @property
    def tables(self) -> list[tuple[str, str]]:
        """(table, setting) in file order."""
        return list(dict.fromkeys((r.table, r.setting) for r in self.rows))

    def find(self, model: str, method: str, strategy: str, setting: str) -> PaperRow | None:
        """The published row (the first table that has it: a pre-edit row repeated by Table 9 is Table 2's)."""
        return next(
            (r for r in self.rows if (r.model, r.method, r.strategy, r.setting) == (model, method, strategy, setting)),
            None,
        )


def _setting(text: str) -> str:
    return "batch" if "one batch" in text else "sequential"


def load_paper(path: Path = PAPER_FILE) -> Paper:
    """Read the shipped paper file; every row must have a value and a ± for each of its metrics."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = []
    for i, raw in enumerate(doc["rows"]):
        values = {}
        for dataset, metrics in DATASET_METRICS.items():
            for metric, _ in metrics:
                key = f"{DATASET_PREFIX[dataset]}_{metric}"
                if key not in raw:
                    raise ReportError(f"{path}: row {i} ({raw.get('table')}) has no '{key}'")
                values[(dataset, metric)] = (float(raw[key]), finite_float(raw.get(f"{key}_ci")))
        rows.append(
            PaperRow(
                table=raw["table"],
                setting=_setting(raw["setting"]),
                setting_text=raw["setting"],
                model=raw["model"],
                method=raw["method"],
                strategy=raw["strategy"],
                values=values,
            )
        )
    return Paper(
        title=doc["paper"],
        source=doc["source"],
        scale=doc["scale"],
        notes=tuple(doc.get("notes", ())),
        rows=tuple(rows),
        efficiency=doc.get("efficiency", {}),
        steps=doc.get("optimisation_steps_table1", {}),
        layers=doc.get("critical_layers", {}),
        blue_layers=doc.get("blue_layers", {}),
        alphaedit_l2=doc.get("alphaedit_blue_L2", {}),
    )


def finite_float(value: Any) -> float | None:
    """``value`` as a float if it is a finite number (not a bool), else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


# ----------------------------------------------------------------------------- Table 4


@dataclass
class ImprovementCell:
    """BLUE vs its baseline for one model x method: the mean relative change over the counted metrics."""

    model: str
    method: str
    changes: dict[tuple[str, str], float]  # (dataset, metric) -> 100 (blue - base) / base
    excluded: list[str] = field(default_factory=list)  # datasets left out, with the reason

    @property
    def mean(self) -> float | None:
        return sum(self.changes.values()) / len(self.changes) if self.changes else None


def improvement_cell(
    model: str,
    method: str,
    base: dict[tuple[str, str], float | None],
    blue: dict[tuple[str, str], float | None],
) -> ImprovementCell:
    """Table 4's statistic for one cell: ``100 (blue - base) / base`` per metric, averaged.

    A dataset is left out of the cell when its baseline has a zero (the change is undefined):
    this is the paper's one exclusion, GPT-J PRUNE on zsRE (its baseline specificity is 0.00),
    and the same rule applies to runs. Metrics either side lacks are not counted.
    """
    cell = ImprovementCell(model, method, {})
    for dataset, metrics in DATASET_METRICS.items():
        pairs = [(m, base.get((dataset, m)), blue.get((dataset, m))) for m, _ in metrics]
        pairs = [(m, b, u) for m, b, u in pairs if b is not None and u is not None]
        if not pairs:
            continue
        if any(b == 0 for _, b, _ in pairs):
            zero = ", ".join(m for m, b, _ in pairs if b == 0)
            cell.excluded.append(f"{dataset} (baseline {zero} = 0)")
            continue
        for metric, b, u in pairs:
            cell.changes[(dataset, metric)] = 100.0 * (u - b) / abs(b)
    return cell


def improvement_overall(cells: Sequence[ImprovementCell]) -> float | None:
    """The headline: the mean of the cells (each cell weighs the same, as in the paper's 35.59%)."""
    means = [c.mean for c in cells if c.mean is not None]
    return sum(means) / len(means) if means else None


def paper_improvements(paper: Paper, table: str = "Table 2", setting: str = "sequential") -> list[ImprovementCell]:
    """Table 4 from the shipped rows of ``table``: every model x method with a spread and a blue row."""
    rows = [r for r in paper.rows if r.table == table and r.setting == setting]
    cells = []
    for base in rows:
        if base.strategy != "spread":
            continue
        blue = next((r for r in rows if (r.model, r.method, r.strategy) == (base.model, base.method, "blue")), None)
        if blue is None:
            continue
        cells.append(
            improvement_cell(
                base.model,
                base.method,
                {k: v for k, (v, _) in base.values.items()},
                {k: v for k, (v, _) in blue.values.items()},
            )
        )
    return cells


def improvement_comparison(
    cells: Sequence[ImprovementCell], title: str, published: dict[tuple[str, str], float | None] | None = None
) -> Comparison:
    """Table 4 as a table: one row per model, one column per method, the overall mean in the notes."""
    models = list(dict.fromkeys(c.model for c in cells))
    methods = list(dict.fromkeys(c.method for c in cells))
    by = {(c.model, c.method): c for c in cells}
    columns = ["model", *(METHOD_TITLE.get(m, m) + " (%)" for m in methods)]
    if published is not None:
        columns += [METHOD_TITLE.get(m, m) + " paper (%)" for m in methods]
    rows = []
    for model in models:
        row: dict[str, Any] = {"model": MODEL_TITLE.get(model, model)}
        for method in methods:
            cell = by.get((model, method))
            row[METHOD_TITLE.get(method, method) + " (%)"] = cell.mean if cell else None
            if published is not None:
                row[METHOD_TITLE.get(method, method) + " paper (%)"] = published.get((model, method))
        rows.append(row)
    overall = improvement_overall(cells)
    counted = sum(1 for c in cells if c.mean is not None)
    notes = [
        f"overall: {'-' if overall is None else f'{overall:+.2f}%'} "
        f"(mean of {counted} model x method cells; each cell: mean over its metrics of "
        "100 (BLUE - baseline) / baseline, the paper's Table 4 statistic)"
    ]
    for cell in cells:
        for reason in cell.excluded:
            notes.append(f"{MODEL_TITLE.get(cell.model, cell.model)} {cell.method}: left out {reason}")
    return Comparison(columns=columns, rows=rows, metrics=[], notes=notes, title=title, digits=2)


def alphaedit_note(paper: Paper) -> str:
    note = next((n for n in paper.notes if "AlphaEdit" in n and "Table 1" in n), None)
    return note or "Table 2's baseline and pre-edit rows are AlphaEdit's Table 1 numbers."
