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
of runs, by one function: :func:`improvement_table`.

Pure functions over run folders and the JSON file (no model, no rich).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blue_cli import ASSETS_DIR
from blue_cli.reporting.compare import Comparison, ReportError, Run, case_spread
from blue_cli.runs.files import CASES, read_jsonl

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
                values[(dataset, metric)] = (float(raw[key]), _float(raw.get(f"{key}_ci")))
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


def _float(value: Any) -> float | None:
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


# ----------------------------------------------------------------------------- the paper's tables


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
        notes.append(f"* {_alphaedit_note(paper)}")
    title = f"BLUE paper {table}, {setting}"
    return Comparison(columns=columns, rows=out, metrics=[], notes=[n for n in notes if n], title=title, digits=2)


def _alphaedit_note(paper: Paper) -> str:
    note = next((n for n in paper.notes if "AlphaEdit" in n and "Table 1" in n), None)
    return note or "Table 2's baseline and pre-edit rows are AlphaEdit's Table 1 numbers."


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
        if n != _alphaedit_note(paper)  # said once, under Table 2
    ]
    return sections


# ----------------------------------------------------------------------------- runs vs the paper


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
                measured = _float(s.get(prefix + metric))
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
        notes.append(f"* {_alphaedit_note(paper)}")
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
            side[(dataset, metric)] = _float(s.get(metric))
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
