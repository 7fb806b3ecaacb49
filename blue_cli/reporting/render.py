"""Render a :class:`Comparison` as a terminal table, markdown, CSV, JSON or a LaTeX booktabs table.

Numbers are never cut: the terminal table wraps headers onto several lines and,
when the columns still do not fit the console, splits them over several tables that
each repeat the run column. CSV and JSON keep full precision (for re-analysis);
the table, markdown and LaTeX round to four decimals (percentages and the paper's
scale to two). A column ``"<name> ±"`` right after ``"<name>"`` holds that value's
interval: the table, markdown and LaTeX show the two as one cell, ``value ± interval``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from rich.console import Console, Group
from rich.table import Table

from blue_cli.reporting.compare import Comparison, short_run_name

FORMATS = ("table", "md", "csv", "json", "latex")
PM = " ±"
WIDE_LATEX = 6  # a LaTeX table with more columns is scaled to the line width
TEXT_COLUMNS = ("run", "model", "paper model", "method", "strategy", "dataset", "paper table", "critical layers")
# Columns on the paper's percent scale (blue report --paper): two decimals, like the paper.
PAPER_SCALE = (" x100", " paper")


def cell(value: Any, column: str = "", digits: int | None = None) -> str:
    """A rounded display string: '-' for missing, signed percent for relative changes."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if column.endswith(("(%)", " diff")):
            return f"{value:+.{digits or 2}f}"
        if digits is not None:
            return f"{value:.{digits}f}"
        return f"{value:.2f}" if column.endswith(PAPER_SCALE) else f"{value:.4f}"
    return str(value)


def display_columns(comparison: Comparison) -> list[tuple[str, str | None]]:
    """(column, its ± column or None) for the columns shown; a ± column is shown inside its value's."""
    cols = comparison.columns
    shown = []
    for col in cols:
        if col.endswith(PM) and col[: -len(PM)] in cols:
            continue
        shown.append((col, f"{col}{PM}" if f"{col}{PM}" in cols else None))
    return shown


def shown_cell(row: dict, column: str, pm: str | None, digits: int | None, sep: str = " ± ") -> str:
    """The value's cell, with `` ± interval`` where the row has one."""
    text = cell(row.get(column), column, digits)
    if pm is not None and isinstance(row.get(pm), float) and isinstance(row.get(column), (int, float)):
        text += sep + cell(row[pm], pm, digits)
    return text


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
    shown = display_columns(comparison)
    cols = [c for c, _ in shown]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if c in TEXT_COLUMNS else "---:" for c in cols) + "|"]
    for row in comparison.rows:
        cells = (shown_cell(row, c, pm, comparison.digits).replace("|", "\\|") for c, pm in shown)
        lines.append("| " + " | ".join(cells) + " |")
    text = (f"**{comparison.title}**\n\n" if comparison.title else "") + "\n".join(lines) + "\n"
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


def _width(column: str, pm: str | None, comparison: Comparison) -> int:
    """The narrowest a column can be: its longest cell or its longest header word."""
    cells = [len(shown_cell(r, column, pm, comparison.digits)) for r in comparison.rows]
    header = max(len(line) for line in wrap_header(column).splitlines())
    return max([header, *cells])


def rich_tables(comparison: Comparison, width: int, title: str = "runs") -> Group:
    """One or more rich tables whose columns fit ``width`` characters, first column repeated."""
    if "run" in comparison.columns:
        short = {str(r["run"]): short_run_name(str(r["run"]), r) for r in comparison.rows}
        if len(set(short.values())) == len(short):  # shorten only where no two runs would read alike
            rows = [{**r, "run": short[str(r["run"])]} for r in comparison.rows]
            comparison = replace(comparison, rows=rows)
    title = comparison.title or title
    shown = display_columns(comparison)
    key, rest = shown[0], shown[1:]
    # Each column costs its content plus 3 (two padding spaces and a border).
    budget = max(width - 4 - (_width(*key, comparison) + 3), 10)
    chunks: list[list[tuple[str, str | None]]] = [[]]
    used = 0
    for col in rest:
        need = _width(*col, comparison) + 3
        if chunks[-1] and used + need > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(col)
        used += need
    tables = []
    for i, chunk in enumerate(chunks):
        suffix = f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        table = Table(title=f"{title}{suffix}")
        for col, pm in (key, *chunk):
            numeric = col not in TEXT_COLUMNS
            table.add_column(
                wrap_header(col),
                justify="right" if numeric else "left",
                no_wrap=numeric,
                overflow="fold",
                min_width=_width(col, pm, comparison),
            )
        for row in comparison.rows:
            table.add_row(*(shown_cell(row, c, pm, comparison.digits) for c, pm in (key, *chunk)))
        tables.append(table)
    return Group(*tables)


LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}"}
LATEX_SPECIAL |= {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}", "±": r"$\pm$"}
LATEX_SPECIAL |= {"<": r"$<$", ">": r"$>$", "|": r"$|$"}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _header_groups(columns: list[str]) -> list[tuple[str, list[str]]]:
    """Consecutive numeric columns sharing a first word become one group: ("Eff", ["x100", "paper"])."""
    groups: list[tuple[str, list[str]]] = []
    for col in columns:
        head, _, tail = col.partition(" ")
        if col not in TEXT_COLUMNS and tail and groups and groups[-1][0] == head and groups[-1][1][-1] is not None:
            groups[-1][1].append(tail)
        elif col not in TEXT_COLUMNS and tail:
            groups.append((head, [tail]))
        else:
            groups.append((col, [None]))
    return [(g, subs) if len(subs) > 1 else ((f"{g} {subs[0]}" if subs[0] else g), [None]) for g, subs in groups]


def to_latex(comparison: Comparison) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``): values with their ± in one cell,
    grouped headers (a \\cmidrule under each group), the title and notes as the caption."""
    shown = [(c, pm) for c, pm in display_columns(comparison) if not c.endswith(" diff")]  # two values say it
    constant = [
        c
        for c, _ in shown
        if (c in TEXT_COLUMNS or c in ("edits", "batch"))
        and c != shown[0][0]
        and len(comparison.rows) > 1
        and len({str(r.get(c)) for r in comparison.rows}) == 1
    ]
    shared = [f"{c}: {comparison.rows[0].get(c)}" for c in constant]  # said once, in the caption
    shown = [(c, pm) for c, pm in shown if c not in constant]
    if shown and shown[0][0] == "run":  # a folder name is no row label for a paper, unless it is needed
        rest = [c for c, _ in shown[1:] if c in TEXT_COLUMNS or c in ("edits", "batch")]
        keys = [tuple(str(r.get(c)) for c in rest) for r in comparison.rows]
        if rest and len(set(keys)) == len(keys):
            shown = shown[1:]
    cols = [c for c, _ in shown]
    groups = _header_groups(cols)
    spec = "".join("l" if c in TEXT_COLUMNS else "r" for c in cols)
    wide = len(cols) > WIDE_LATEX
    lines = [
        "% blue report --format latex; needs \\usepackage{booktabs}" + (" and \\usepackage{graphicx}" if wide else ""),
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        *(["\\resizebox{\\linewidth}{!}{%"] if wide else []),
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
    ]
    if any(subs[0] is not None for _, subs in groups):
        top, rules, at = [], [], 1
        for name, subs in groups:
            if subs[0] is None:
                top.append("")
            else:
                top.append(f"\\multicolumn{{{len(subs)}}}{{c}}{{{latex_escape(name)}}}")
                rules.append(f"\\cmidrule(lr){{{at}-{at + len(subs) - 1}}}")
            at += len(subs)
        lines.append(" & ".join(top) + " \\\\")
        lines.append(" ".join(rules))
        lines.append(" & ".join(latex_escape(s if s is not None else n) for n, subs in groups for s in subs) + " \\\\")
    else:
        lines.append(" & ".join(latex_escape(c) for c in cols) + " \\\\")
    lines.append("\\midrule")
    for row in comparison.rows:
        cells = []
        for col, pm in shown:
            text = cell(row.get(col), col, comparison.digits)
            if text in ("-", "n/r"):
                cells.append("--" if text == "-" else "n/r")
                continue
            cell_text = latex_escape(text)
            if pm is not None and isinstance(row.get(pm), float) and isinstance(row.get(col), (int, float)):
                cell_text += f"{{\\scriptsize$\\pm${cell(row[pm], pm, comparison.digits)}}}"
            cells.append(cell_text)
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}" + ("}" if wide else "")]
    parts = [comparison.title, "; ".join(shared), *comparison.notes]
    caption = " ".join(n if n.endswith(".") else n + "." for n in parts if n)
    if caption:
        lines.append(f"\\caption{{{latex_escape(caption)}}}")
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"


def render(comparison: Comparison | Sequence[Comparison], fmt: str, width: int = 120) -> str:
    """The comparison (or several, one after the other) as text in ``fmt`` (table: rich at ``width``).

    Several comparisons: markdown, LaTeX and the table give each its own table; JSON a list;
    CSV each block after a ``# title`` line (read them with a reader that skips comments).
    """
    if not isinstance(comparison, Comparison):
        sections = list(comparison)
        if fmt == "json":
            return json.dumps([json.loads(to_json(s)) | {"title": s.title} for s in sections], indent=2) + "\n"
        if fmt == "csv":
            return "\n".join(f"# {s.title}\n{to_csv(s)}" for s in sections)
        return "\n".join(render(s, fmt, width) for s in sections)
    if fmt == "md":
        return to_markdown(comparison)
    if fmt == "csv":
        return to_csv(comparison)
    if fmt == "json":
        return to_json(comparison)
    if fmt == "latex":
        return to_latex(comparison)
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(rich_tables(comparison, width))
    note = average_line(comparison)
    if note:
        console.print(note, highlight=False, soft_wrap=True)
    for line in comparison.notes:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    return console.export_text()
