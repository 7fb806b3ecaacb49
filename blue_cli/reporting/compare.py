"""Comparison of finished runs: one row per run, the overrides that tell them apart,
and the relative change against a baseline run.

Pure functions over the run folders' JSON/YAML files (no model, no rich), so the
table, markdown, CSV and JSON renderings and the sweep callback share one code path.

The relative change follows the BLUE paper's "+35.59% on average": for every run
that is not a baseline, ``100 * (metric - baseline) / |baseline|`` against the
baseline run that agrees with it on every other varying setting, averaged over
all (run, metric) pairs where the baseline is non-zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from blue_cli.datasets.base import RATES as HEADLINE
from blue_cli.errors import BlueError
from blue_cli.runs.files import CASES, CONFIG, EVALS, SUMMARY, read_config, read_jsonl, read_summary

# Columns shown for every run, as (column name, summary key, flattened config key).
FIXED = (
    ("model", "model", "model.name"),
    ("method", "method", "method.name"),
    ("strategy", "strategy", "strategy.name"),
    ("dataset", "dataset", "dataset.name"),
    ("edits", "num_edits", "num_edits"),
    ("batch", "batch_size", "batch_size"),
)
EXTRA = ("target_logprob_gain", "fluency")
# The evaluation in the wild (evaluation/wild.py) beside the teacher-forced rates, and the
# collapse monitor's held-out perplexity: shown, but not in the paper's relative change.
WILD = tuple(f"wild_{rate}_{score}" for rate in HEADLINE for score in ("em", "f1"))
MONITOR = ("perplexity",)
# Metrics that get a relative-change column against a baseline (the paper's table
# columns, plus the target log-prob gain that separates runs on tiny models).
CHANGED = (*HEADLINE, *EXTRA)
# Short names a user may give to --baseline for the fixed columns.
ALIASES = {name: key for name, _, key in FIXED} | {"num_edits": "num_edits", "batch_size": "batch_size"}
MISSING = "<unset>"


class ReportError(BlueError):
    """A report argument that names no run, no varying setting or no baseline."""


@dataclass
class Run:
    """One finished run folder: its summary, flattened config and evaluation curve."""

    path: Path
    summary: dict
    config: dict[str, Any]
    evals: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Comparison:
    """The rendered-to-be table: column names, one dict per run, and the baseline average."""

    columns: list[str]
    rows: list[dict[str, Any]]
    metrics: list[str]
    baseline: str | None = None
    average_change: float | None = None
    changes_counted: int = 0
    notes: list[str] = field(default_factory=list)  # lines printed under the table (e.g. a paper's source)
    title: str = ""  # the table's caption where several are rendered together
    digits: int | None = None  # decimals of every number (None: four, two on the paper's scale)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values (they compare as a whole)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def expand_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Each path is a run folder (holds summary.json) or a sweep folder (its job folders)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ReportError(
                f"no {SUMMARY}: folder '{path}' does not exist (give run or sweep folders written by blue edit)"
            )
        if (path / SUMMARY).is_file():
            found.append(path)
            continue
        # a run folder's previous-*/ holds a run that resume=false set aside: not a job of it
        jobs = sorted(
            (p for p in path.iterdir() if (p / SUMMARY).is_file() and not p.name.startswith("previous-")),
            key=_job_order,
        )
        if not jobs:
            raise ReportError(f"no {SUMMARY} in '{path}' or its subfolders (give a finished run or sweep folder)")
        found.extend(jobs)
    return found


def short_run_name(name: str, row: dict[str, Any]) -> str:
    """Drop the parts of a run folder name that repeat the row's shown values.

    ``0_tiny-gpt2_memit_blue_counterfact`` becomes ``0``: Hydra names job folders
    after the very columns the table already shows.
    """
    shown = {str(v) for k, v in row.items() if k != "run"}
    parts = [p for p in name.split("_") if p not in shown]
    return "_".join(parts) or name


def _job_order(path: Path) -> tuple:
    """Hydra job folders start with the job number: sort 2 before 10."""
    head = path.name.split("_", 1)[0]
    return (0, int(head), path.name) if head.isdigit() else (1, 0, path.name)


def load_runs(paths: Iterable[Path]) -> list[Run]:
    """Read every run folder's summary.json, config.yaml (flattened) and evals.jsonl; a damaged
    one is a one-line DamagedFileError naming it."""
    from omegaconf import OmegaConf

    runs = []
    for path in expand_run_dirs(paths):
        config: dict[str, Any] = {}
        if (path / CONFIG).is_file():
            raw = OmegaConf.to_container(read_config(path / CONFIG), resolve=False)
            config = flatten(raw)
        runs.append(Run(path=path, summary=read_summary(path), config=config, evals=read_jsonl(path / EVALS)))
    return runs


def _value(run: Run, key: str) -> str:
    """A config value as a comparable string (lists and None included)."""
    if key not in run.config:
        return MISSING
    value = run.config[key]
    return "null" if value is None else str(value)


def _fixed_value(run: Run, name: str) -> str:
    """A fixed column's value: the summary's, falling back to the config's."""
    _, skey, ckey = next(f for f in FIXED if f[0] == name)
    value = run.summary.get(skey)
    return str(value) if value is not None else _value(run, ckey)


def _fixed_cell(run: Run, name: str) -> Any:
    """A fixed column's value as stored (numbers stay numbers in JSON and CSV)."""
    _, skey, ckey = next(f for f in FIXED if f[0] == name)
    value = run.summary.get(skey)
    return value if value is not None else run.config.get(ckey, MISSING)


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose values differ between runs and that the fixed columns do not explain.

    A key is explained when runs alike on every fixed column never differ on it (e.g.
    ``model.layers`` follows ``model``); such keys would only repeat a shown column.
    """
    keys = sorted({k for r in runs for k in r.config})
    fixed_keys = {ckey for _, _, ckey in FIXED}
    out = []
    for key in keys:
        if key in fixed_keys or len({_value(r, key) for r in runs}) < 2:
            continue
        groups: dict[tuple, set[str]] = {}
        for run in runs:
            groups.setdefault(tuple(_fixed_value(run, n) for n, _, _ in FIXED), set()).add(_value(run, key))
        if any(len(values) > 1 for values in groups.values()):
            out.append(key)
    return out


def metric_keys(runs: Sequence[Run]) -> list[str]:
    """Headline rates, then target log-prob gain, fluency, the wild scores, perplexity and
    general scores present in any run."""
    present = {k for r in runs for k, v in r.summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    general = sorted(k for k in present if k.startswith("general."))
    return [k for k in (*HEADLINE, *EXTRA, *WILD, *MONITOR) if k in present] + general


def relative_change(value: Any, base: Any) -> float | None:
    """``100 * (value - base) / |base|``; None where either is missing or the base is 0."""
    if not _is_number(value) or not _is_number(base) or base == 0:
        return None
    return 100.0 * (float(value) - float(base)) / abs(float(base))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_baseline(spec: str, runs: Sequence[Run], varying: Sequence[str]) -> tuple[str, str]:
    """``KEY=VALUE`` -> (flattened config key, value); the key must vary and the value occur."""
    if "=" not in spec:
        raise ReportError(f"--baseline '{spec}' is not KEY=VALUE (e.g. strategy=spread)")
    name, value = (part.strip() for part in spec.split("=", 1))
    key = ALIASES.get(name, name)
    if key not in varying:
        choices = ", ".join(_display(k) for k in varying) or "none: the runs differ in nothing"
        raise ReportError(f"--baseline key '{name}' does not vary between the runs (choose: {choices})")
    seen = sorted({_identity(r, [key])[0] for r in runs})
    if value not in seen:
        raise ReportError(f"--baseline value '{value}' of '{name}' matches no run (choose: {', '.join(seen)})")
    return key, value


def _display(key: str) -> str:
    """The column name of a config key: the fixed columns' short names, else the key."""
    for name, _, ckey in FIXED:
        if ckey == key:
            return name
    return key


def all_varying(runs: Sequence[Run], overrides: Sequence[str]) -> list[str]:
    """The config keys that identify a run: varying fixed columns plus the shown overrides."""
    fixed = [ckey for name, _, ckey in FIXED if len({_fixed_value(r, name) for r in runs}) > 1]
    return fixed + list(overrides)


def _identity(run: Run, keys: Sequence[str]) -> tuple[str, ...]:
    out = []
    for key in keys:
        fixed = next((name for name, _, ckey in FIXED if ckey == key), None)
        out.append(_fixed_value(run, fixed) if fixed else _value(run, key))
    return tuple(out)


def default_baseline(runs: Sequence[Run]) -> str | None:
    """``strategy=spread`` when the runs compare spread with another strategy, else None.

    The sweep report uses it, so a spread-vs-blue sweep reports the paper's comparison.
    """
    strategies = {_fixed_value(r, "strategy") for r in runs}
    return "strategy=spread" if "spread" in strategies and len(strategies) > 1 else None


def compare(runs: Sequence[Run], baseline: str | None = None) -> Comparison:
    """Build the comparison table of ``runs`` (with relative changes if ``baseline`` is given)."""
    overrides = differing_keys(runs)
    metrics = metric_keys(runs)
    columns = ["run", *(name for name, _, _ in FIXED), *overrides, *metrics]
    rows: list[dict[str, Any]] = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name}
        row.update({name: _fixed_cell(run, name) for name, _, _ in FIXED})
        row.update({key: _value(run, key) for key in overrides})
        row.update({m: run.summary.get(m) if _is_number(run.summary.get(m)) else None for m in metrics})
        rows.append(row)
    result = Comparison(columns=columns, rows=rows, metrics=metrics)
    if baseline is None:
        return result
    varying = all_varying(runs, overrides)
    key, value = parse_baseline(baseline, runs, varying)
    others = [k for k in varying if k != key]
    bases = {_identity(r, others): r for r in runs if _identity(r, [key])[0] == value}
    changed = [m for m in metrics if m in CHANGED]
    result.columns += [f"{m} vs {value} (%)" for m in changed]
    result.baseline = f"{_display(key)}={value}"
    total, count = 0.0, 0
    for run, row in zip(runs, rows):
        base = None if _identity(run, [key])[0] == value else bases.get(_identity(run, others))
        for m in changed:
            change = relative_change(run.summary.get(m), base.summary.get(m)) if base else None
            row[f"{m} vs {value} (%)"] = change
            if change is not None:
                total, count = total + change, count + 1
    result.average_change = total / count if count else None
    result.changes_counted = count
    return result


Z95 = 1.96  # the normal 95% quantile: the interval the paper's ± states


def case_spread(cases: Sequence[dict], metric: str, prefix: str = "") -> float | None:
    """The 95% normal interval half-width of the mean over ``cases`` (1.96 sd / sqrt(n), sample sd),
    or None with fewer than two cases that have the metric."""
    values = [float(c[prefix + metric]) for c in cases if _is_number(c.get(prefix + metric))]
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return Z95 * math.sqrt(var / len(values))


def add_case_spread(comparison: Comparison, runs: Sequence[Run]) -> Comparison:
    """``comparison`` with a ``"<metric> ±"`` column after each metric measured per case: the 95%
    interval of the run's mean over its cases (cases.jsonl). Rows are the runs, in order."""
    cases = [read_jsonl(Path(r.path) / CASES) for r in runs]
    per_case = [m for m in comparison.metrics if any(any(m in c for c in rc) for rc in cases)]
    columns = []
    for col in comparison.columns:
        columns.append(col)
        if col in per_case:
            columns.append(f"{col} ±")
    rows = [{**row, **{f"{m} ±": case_spread(rc, m) for m in per_case}} for row, rc in zip(comparison.rows, cases)]
    notes = (
        [*comparison.notes, "±: 95% interval of the mean over the run's cases (1.96 sd/sqrt(n))"]
        if per_case
        else comparison.notes
    )
    return replace(comparison, columns=columns, rows=rows, notes=notes)
