"""Render a :class:`Comparison` as a terminal table, markdown, CSV or JSON.

Numbers are never cut: the terminal table wraps headers onto several lines and,
when the columns still do not fit the console, splits them over several tables that
each repeat the run column. CSV and JSON keep full precision (for re-analysis);
the table and markdown round to four decimals (percentages to two).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table

from blue_cli.reporting.compare import Comparison, short_run_name

FORMATS = ("table", "md", "csv", "json")
TEXT_COLUMNS = ("run", "model", "paper model", "method", "strategy", "dataset")
# Columns on the paper's percent scale (blue report --paper): two decimals, like the paper.
PAPER_SCALE = (" x100", " paper")


def cell(value: Any, column: str = "") -> str:
    """A rounded display string: '-' for missing, signed percent for relative changes."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if column.endswith(("(%)", " diff")):
            return f"{value:+.2f}"
        return f"{value:.2f}" if column.endswith(PAPER_SCALE) else f"{value:.4f}"
    return str(value)


def wrap_header(name: str, width: int = 12) -> str:
    """Break a long column name after '_', '.' or ' ' so headers take several short lines."""
    lines, line = [], ""
    for ch in name:
        line += ch
        if ch in "_. ":
            lines.append(line)
            line = ""
    lines.append(line)
    out, cur = [], ""
    for part in lines:
        if cur and len(cur) + len(part) > width:
            out.append(cur)
            cur = part
        else:
            cur += part
    out.append(cur)
    return "\n".join(p.strip() for p in out if p.strip())


def to_markdown(comparison: Comparison) -> str:
    cols = comparison.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if c in TEXT_COLUMNS else "---:" for c in cols) + "|"]
    for row in comparison.rows:
        lines.append("| " + " | ".join(cell(row.get(c), c).replace("|", "\\|") for c in cols) + " |")
    text = "\n".join(lines) + "\n"
    note = average_line(comparison)
    text += f"\n{note}\n" if note else ""
    return text + ("\n" + "\n".join(f"- {n}" for n in comparison.notes) + "\n" if comparison.notes else "")


def to_csv(comparison: Comparison) -> str:
    """Full-precision CSV (``repr`` floats, empty cells for missing values)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(comparison.columns)
    for row in comparison.rows:
        writer.writerow(
            [
                "" if row.get(c) is None else (repr(row[c]) if isinstance(row[c], float) else row[c])
                for c in comparison.columns
            ]
        )
    return buf.getvalue()


def to_json(comparison: Comparison) -> str:
    payload = {
        "columns": comparison.columns,
        "runs": comparison.rows,
        "baseline": comparison.baseline,
        "average_relative_change": comparison.average_change,
        "changes_counted": comparison.changes_counted,
    }
    if comparison.notes:
        payload["notes"] = comparison.notes
    return json.dumps(payload, indent=2) + "\n"


def average_line(comparison: Comparison) -> str | None:
    """The paper-style summary: mean relative change of the headline rates vs the baseline."""
    if comparison.baseline is None:
        return None
    if comparison.average_change is None:
        return (
            f"average relative change vs {comparison.baseline}: - (no run has a matching baseline with non-zero rates)"
        )
    return (
        f"average relative change vs {comparison.baseline}: {comparison.average_change:+.2f}% "
        f"(mean over {comparison.changes_counted} run x metric values)"
    )


def _width(column: str, comparison: Comparison) -> int:
    """The narrowest a column can be: its longest cell or its longest header word."""
    cells = [len(cell(r.get(column), column)) for r in comparison.rows]
    header = max(len(line) for line in wrap_header(column).splitlines())
    return max([header, *cells])


def rich_tables(comparison: Comparison, width: int, title: str = "runs") -> Group:
    """One or more rich tables whose columns fit ``width`` characters, run column repeated."""
    rows = [{**r, "run": short_run_name(str(r["run"]), r)} for r in comparison.rows]
    comparison = Comparison(
        comparison.columns,
        rows,
        comparison.metrics,
        comparison.baseline,
        comparison.average_change,
        comparison.changes_counted,
    )
    cols = comparison.columns
    key, rest = cols[0], cols[1:]
    # Each column costs its content plus 3 (two padding spaces and a border).
    budget = max(width - 4 - (_width(key, comparison) + 3), 10)
    chunks: list[list[str]] = [[]]
    used = 0
    for col in rest:
        need = _width(col, comparison) + 3
        if chunks[-1] and used + need > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(col)
        used += need
    tables = []
    for i, chunk in enumerate(chunks):
        suffix = f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        table = Table(title=f"{title}{suffix}")
        for col in (key, *chunk):
            numeric = col not in TEXT_COLUMNS
            table.add_column(
                wrap_header(col),
                justify="right" if numeric else "left",
                no_wrap=numeric,
                overflow="fold",
                min_width=_width(col, comparison),
            )
        for row in comparison.rows:
            table.add_row(*(cell(row.get(c), c) for c in (key, *chunk)))
        tables.append(table)
    return Group(*tables)


def render(comparison: Comparison, fmt: str, width: int = 120) -> str:
    """The comparison as text in ``fmt`` (table: rich rendered to plain text at ``width``)."""
    if fmt == "md":
        return to_markdown(comparison)
    if fmt == "csv":
        return to_csv(comparison)
    if fmt == "json":
        return to_json(comparison)
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(rich_tables(comparison, width))
    note = average_line(comparison)
    if note:
        console.print(note, highlight=False, soft_wrap=True)
    for line in comparison.notes:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    return console.export_text()
