"""PNG figures of a set of runs: metric curves over the edit stream and headline bars.

Figures are built as bare :class:`matplotlib.figure.Figure` objects (no pyplot, so
no global figure registry and no display backend: savefig renders through Agg)
and returned, so tests can read the plotted data back from ``fig.axes[0].lines``.
Line style tells the strategies apart (``blue`` solid, ``spread`` dashed), colour
tells the runs apart.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from blue_cli.cache import atomic_path
from blue_cli.datasets.base import RATES as HEADLINE
from blue_cli.reporting.compare import EXTRA, FIXED, Run, short_run_name

log = logging.getLogger(__name__)

STYLES = {"blue": "-", "spread": "--"}
OTHER_STYLES = (":", "-.")
SKIPPED = ("batches", "edits")


def curve_metrics(runs: Sequence[Run]) -> list[str]:
    """Every numeric key of the runs' evals.jsonl rows, headline rates first, general scores last."""
    keys: dict[str, None] = {}
    for run in runs:
        for row in run.evals:
            for key, value in row.items():
                if key in SKIPPED or key.endswith("_cases_without"):  # counts of cases, not rates
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    keys.setdefault(key, None)
    order = {m: i for i, m in enumerate(HEADLINE)}
    return sorted(
        keys, key=lambda k: (k.startswith("general."), k.startswith("first_batch."), order.get(k, len(order)), k)
    )


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Legend labels: the fixed columns that differ between runs (else the folder name)."""
    varying = [skey for _, skey, _ in FIXED if len({str(r.summary.get(skey)) for r in runs}) > 1]
    labels = [" ".join(str(r.summary.get(k)) for k in varying) for r in runs]
    if not varying or len(set(labels)) < len(labels):
        shown = [{k: r.summary.get(s) for k, s, _ in FIXED} for r in runs]
        names = [short_run_name(r.name, row) for r, row in zip(runs, shown)]
        labels = [name if not lab else f"{lab} ({name})" for lab, name in zip(labels, names)]
    return labels


def _style(strategy: str, seen: dict[str, str]) -> str:
    if strategy in STYLES:
        return STYLES[strategy]
    if strategy not in seen:
        seen[strategy] = OTHER_STYLES[len(seen) % len(OTHER_STYLES)]
    return seen[strategy]


def _setting(runs: Sequence[Run]) -> str:
    """'model X, dataset Y' for figure titles (several values joined with '/')."""
    models = sorted({str(r.summary.get("model")) for r in runs})
    datasets = sorted({str(r.summary.get("dataset")) for r in runs})
    return f"model {'/'.join(models)}, dataset {'/'.join(datasets)}"


def curve_figure(runs: Sequence[Run], metric: str) -> Figure:
    """``metric`` of evals.jsonl against the number of edits: one line per run that has it."""
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    extra: dict[str, str] = {}
    for run, label in zip(runs, run_labels(runs)):
        points = [(row["edits"], row[metric]) for row in run.evals if row.get(metric) is not None and "edits" in row]
        if not points:
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, _style(str(run.summary.get("strategy")), extra), marker="o", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of edits")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} over the edit stream\n{_setting(runs)}")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def bar_figure(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> Figure:
    """One panel per headline metric (each on its own scale), one bar per run (its final value)."""
    metrics = list(metrics or [m for m in (*HEADLINE, *EXTRA) if any(_num(r.summary.get(m)) for r in runs)])
    fig = Figure(figsize=(max(6.0, 2.2 * len(metrics) + 1), 4.5), dpi=100)
    axes = [fig.add_subplot(1, len(metrics), j + 1) for j in range(len(metrics))]
    labels = run_labels(runs)
    for ax, metric in zip(axes, metrics):
        for i, run in enumerate(runs):
            value = run.summary.get(metric)
            hatch = "//" if run.summary.get("strategy") == "spread" else None
            # NaN draws no bar: a metric the run did not measure is not a zero.
            ax.bar(
                i, float(value) if _num(value) else float("nan"), 0.8, color=f"C{i % 10}", hatch=hatch, label=labels[i]
            )
        ax.set_title(metric, fontsize="medium")
        if metric in HEADLINE:
            ax.set_ylim(0, 1.05)  # rates: a shared scale makes panels comparable
        ax.set_xticks([])
        ax.grid(axis="y", alpha=0.3)
    if axes:
        axes[0].set_ylabel("value after editing")
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=min(len(runs), 4), fontsize="small")
    fig.suptitle(f"headline metrics per run\n{_setting(runs)}")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_name(metric: str) -> str:
    """File name of a metric's curve: ``curve_efficacy.png``, ``general_mmlu_accuracy.png``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", metric).strip("_")
    if metric.startswith("general."):
        return f"{slug}.png"
    return f"curve_{slug}.png"


def save_figure(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to PNG at ``path`` through a temp file and a rename."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def write_plots(runs: Sequence[Run], out_dir: Path) -> list[Path]:
    """All figures of ``runs`` as PNGs in ``out_dir``: one curve per evals metric, then the bars."""
    out_dir = Path(out_dir)
    written = [save_figure(curve_figure(runs, m), out_dir / plot_name(m)) for m in curve_metrics(runs)]
    if not written:
        log.info("no evals.jsonl rows in these runs (run with eval_every=N for curves); bar chart only")
    written.append(save_figure(bar_figure(runs), out_dir / "bars_headline.png"))
    return written
