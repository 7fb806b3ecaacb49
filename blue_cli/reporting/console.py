"""Rich rendering: progress bars for long loops and tables of results."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from blue_cli.datasets.base import RATES as HEADLINE

console = Console(stderr=False)
err_console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Completed steps per second, e.g. "12,345 tokens/s" (the statistics pass's throughput)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s")


class RichProgress:
    """The runner's progress sink: one bar per long step (stats, batches, evaluation).

    ``on_start``: called once the run is set up (:meth:`started`), to announce it.
    """

    def __init__(self, target: Console | None = None, on_start: Callable[[], None] | None = None):
        self.console = target or console
        self.on_start = on_start

    def started(self) -> None:
        if self.on_start is not None:
            self.on_start()

    @contextmanager
    def track(self, description: str, total: int, rate_unit: str | None = None) -> Iterator:
        """A bar for ``total`` steps; ``rate_unit`` (e.g. "tokens") adds a steps-per-second column."""
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        if rate_unit:
            columns.append(RateColumn(rate_unit))
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(description, total=total)

            def update(done: int, new_total: int | None = None) -> None:
                bar.update(task, completed=done, total=new_total or total)

            yield update


def summary_table(summary: dict, title: str = "summary") -> Table:
    """Pre/post rates side by side, then the write diagnostics."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("pre", justify="right")
    table.add_column("post", justify="right")
    for key in HEADLINE:
        without = summary.get(f"{key}_cases_without")
        label = f"{key} ({without} cases without)" if without else key
        table.add_row(label, _fmt(summary.get(f"pre_{key}")), _fmt(summary.get(key)))
        table.add_row(f"  {key}_gap", _fmt(summary.get(f"pre_{key}_gap")), _fmt(summary.get(f"{key}_gap")))
        for wild in (f"wild_{key}_em", f"wild_{key}_f1"):  # the same rate in the wild (free generation)
            if wild in summary:
                table.add_row(f"  {wild}", _fmt(summary.get(f"pre_{wild}")), _fmt(summary.get(wild)))
    if "perplexity" in summary:
        table.add_row("perplexity (held-out)", _fmt(summary.get("pre_perplexity")), _fmt(summary.get("perplexity")))
    if "fluency" in summary:
        table.add_row("fluency", _fmt(summary.get("pre_fluency")), _fmt(summary.get("fluency")))
    if "consistency_unavailable" in summary:
        table.add_row("consistency", "", f"unavailable: {summary['consistency_unavailable']}")
    elif "consistency" in summary:
        table.add_row("consistency", _fmt(summary.get("pre_consistency")), _fmt(summary.get("consistency")))
    for key in sorted(k for k in summary if k.startswith("general.")):
        table.add_row(key, _fmt(summary.get(f"pre_{key}")), _fmt(summary[key]))
    for key in ("target_logprob_gain", "write_error", "z_logprob_gain", "edit_logprob_gain", "seconds_per_batch"):
        if key in summary:
            table.add_row(key, "", _fmt(summary.get(key)))
    return table


def batches_table(rows: list[dict]) -> Table:
    table = Table(title="batches")
    for col in ("batch", "edits", "seconds", "write_error", "z_logprob_gain", "edit_logprob_gain"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(
            str(row["batch"]),
            str(row["edits"]),
            _fmt(row.get("seconds")),
            *(
                (_fmt(row.get(k)) for k in ("write_error", "z_logprob_gain", "edit_logprob_gain"))
                if "skipped" not in row
                else ("skipped", "", "")
            ),
        )
    return table


def bar_plot(rows: list[dict], key: str, width: int = 40) -> Table:
    """A horizontal bar per batch: how ``key`` moves over the sequential edit stream."""
    pairs = [(r, float(r[key])) for r in rows if r.get(key) is not None]
    top = max((abs(v) for _, v in pairs), default=0.0) or 1.0
    table = Table(title=f"{key} per batch", show_header=False, box=None)
    table.add_column("batch", justify="right")
    table.add_column("bar")
    table.add_column("value", justify="right")
    for row, value in pairs:
        bar = "█" * max(1, round(abs(value) / top * width)) if value else ""
        table.add_row(str(row["batch"]), f"[{'green' if value >= 0 else 'red'}]{bar}[/]", f"{value:.3f}")
    return table


def show_run(run_dir: Path, summary: dict, batches: list[dict]) -> None:
    if batches:
        console.print(batches_table(batches))
        console.print(bar_plot(batches, "write_error"))
        console.print(bar_plot(batches, "edit_logprob_gain"))
    console.print(summary_table(summary, title=f"{Path(run_dir).name}"))
    if summary.get("stopped"):
        console.print(f"[yellow]stopped early: {summary['stopped']}[/]")


def _fmt(value) -> str:
    """A number for a table; None and NaN (a rate no case has) print as "-", as null in the files."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
