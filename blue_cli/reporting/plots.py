"""The figures of a report: editing metrics over the edit stream, and general capability.

A report has at most two figures, each saved as PNG (for a quick look) and PDF (vector, for
a paper) in the report's ``figures/`` folder:

- ``editing``: one column per dataset (CounterFact and zsRE side by side), one row per metric
  (efficacy, generalization, specificity in percent on a fixed 0-100 axis; the rewrite
  prompt's log-probability of the new target in nats per token; fluency in bits). Every
  curve starts at the unedited model (edits = 0) and has a point per evaluation, at the
  edit counts where batches end; the x ticks are those counts.
- ``general``: one panel per general-capability score (accuracy, F1 on 0-1; MCC on -1..1).

A metric nobody measured, or measured as nothing but "no answer parsed", is left out and
named in the returned notes, not drawn as a flat line. Line style tells the strategies
apart (``blue`` solid, ``spread`` dashed), colour the configurations (a hue per method
configuration, a dark and a light shade for its strategies, the same in every panel); the
legend names method and strategy (and what else differs between runs).

Figures are bare :class:`matplotlib.figure.Figure` objects (no pyplot: no global figure
registry, no display backend), returned so tests can read the plotted data back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from blue_cli.cache import atomic_path
from blue_cli.reporting.compare import FIXED, Run
from blue_cli.runs.files import CASES, read_jsonl

FIGURES_DIR = "figures"
EDITING = "editing"
GENERAL = "general"
STYLES = {"blue": "-", "spread": "--"}
OTHER_STYLES = (":", "-.")
MAX_TICKS = 11
# (key, axis label, y range or None, factor): rates in percent on a fixed axis, like the paper.
EDIT_METRICS = (
    ("efficacy", "efficacy (%)", (-2.0, 102.0), 100.0),
    ("generalization", "generalization (%)", (-2.0, 102.0), 100.0),
    ("specificity", "specificity (%)", (-2.0, 102.0), 100.0),
    ("rewrite_mean_logprob_new", "log P(new target)\n(nats per token)", None, 1.0),
    ("fluency", "fluency: n-gram\nentropy (bits)", None, 1.0),
    ("consistency", "consistency: TF-IDF\nsimilarity (0-1)", (-0.02, 1.02), 1.0),
    # evaluation in the wild (greedy generation, no target given): exact match, beside the rates above
    ("wild_efficacy_em", "efficacy in the wild:\nexact match (%)", (-2.0, 102.0), 100.0),
    ("wild_generalization_em", "generalization in the\nwild: exact match (%)", (-2.0, 102.0), 100.0),
    ("wild_specificity_em", "specificity in the wild:\nexact match (%)", (-2.0, 102.0), 100.0),
    ("perplexity", "held-out perplexity", None, 1.0),
)
GENERAL_RANGES = {"mcc": (-1.02, 1.02)}  # other scores (accuracy, f1) lie in 0-1
GENERAL_SCORES = ("accuracy", "f1", "mcc")
DATASET_TITLE = {"counterfact": "CounterFact", "zsre": "zsRE"}


@dataclass
class FigureSet:
    """The report's figures (name -> Figure) and the notes on what was left out."""

    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _config_label(run: Run, varying: Sequence[str]) -> str:
    s = run.summary
    label = f"{s.get('method', '?')} + {s.get('strategy', '?')}"
    extra = [f"{name} {s.get(key)}" for name, key in varying]
    return label + (f" ({', '.join(extra)})" if extra else "")


def run_labels(runs: Sequence[Run], columns: Sequence[str] = ("dataset",)) -> list[str]:
    """Legend labels: method + strategy, and the fixed settings that differ between runs (not those
    the figure's columns show); the run folder only where two runs in one column would share a label."""
    varying = [
        (name, skey)
        for name, skey, _ in FIXED
        if name not in ("method", "strategy", *columns) and len({str(r.summary.get(skey)) for r in runs}) > 1
    ]
    labels = [_config_label(r, varying) for r in runs]
    keys = [(label, *(r.summary.get(c) for c in columns)) for label, r in zip(labels, runs)]
    out = []
    for label, run, key in zip(labels, runs, keys):
        twins = [r for r, k in zip(runs, keys) if k == key]
        if len(twins) == 1:
            out.append(label)
            continue
        differing = _differing_settings(twins)
        named = ", ".join(f"{name}={run.config.get(name)}" for name in differing[:MAX_LABEL_SETTINGS])
        out.append(f"{label} ({named})" if differing else f"{label} [{run.name}]")
    return out


MAX_LABEL_SETTINGS = 2  # a legend entry names at most this many settings; past that, the run folder


def _differing_settings(runs: Sequence[Run]) -> list[str]:
    """Config keys (flattened) whose values differ between runs that would share a label, file
    paths left out; empty when more than :data:`MAX_LABEL_SETTINGS` differ (the folder is clearer)."""
    names = sorted({name for r in runs for name in r.config})
    differing = [
        name
        for name in names
        if len({repr(r.config.get(name)) for r in runs}) > 1 and not name.endswith(("path", "dir", "root"))
    ]
    return differing if len(differing) <= MAX_LABEL_SETTINGS else []


def line_colours(runs: Sequence[Run], labels: Sequence[str]) -> dict[str, tuple]:
    """One colour per legend label: a hue per configuration apart from the strategy (method and
    what else differs), a dark and a light shade of it for its strategies (tab20's pairs), so a
    sweep of ten methods under two strategies draws twenty distinct lines, and the line style
    tells the strategies apart as well."""
    from matplotlib import colormaps

    palette = colormaps["tab20"].colors
    hues: dict[str, dict[str, int]] = {}
    colours: dict[str, tuple] = {}
    for run, label in zip(runs, labels):
        strategy = str(run.summary.get("strategy"))
        shades = hues.setdefault(label.replace(f" + {strategy}", "", 1), {})
        shade = shades.setdefault(strategy, len(shades))
        hue = list(hues).index(label.replace(f" + {strategy}", "", 1))
        colours.setdefault(label, palette[(2 * hue + shade % 2) % len(palette)])
    return colours


def _style(strategy: str, seen: dict[str, str]) -> str:
    if strategy in STYLES:
        return STYLES[strategy]
    if strategy not in seen:
        seen[strategy] = OTHER_STYLES[len(seen) % len(OTHER_STYLES)]
    return seen[strategy]


def pre_value(run: Run, metric: str, cases: list[dict]) -> float | None:
    """The unedited model's value on the run's records: the summary's ``pre_<metric>``, else the
    mean of the cases' ``pre_<metric>``."""
    value = run.summary.get(f"pre_{metric}")
    if _num(value):
        return float(value)
    values = [c[f"pre_{metric}"] for c in cases if _num(c.get(f"pre_{metric}"))]
    return sum(values) / len(values) if values else None


def curve(run: Run, metric: str, cases: list[dict]) -> list[tuple[int, float]]:
    """(edits, value) of ``metric`` over the run: the unedited model at 0, then each evaluation
    point of evals.jsonl (or, without one, the final summary at the run's edit count)."""
    points = [(int(r["edits"]), float(r[metric])) for r in run.evals if "edits" in r and _num(r.get(metric))]
    if not points and _num(run.summary.get(metric)) and _num(run.summary.get("num_edits")):
        points = [(int(run.summary["num_edits"]), float(run.summary[metric]))]
    if not points:
        return []
    pre = pre_value(run, metric, cases)
    return ([(0, pre)] if pre is not None else []) + points


def _ticks(counts: set[int]) -> list[int]:
    """The edit counts where evaluations fell (batch boundaries), thinned to at most MAX_TICKS."""
    ticks = sorted(counts)
    if len(ticks) > MAX_TICKS:
        step = math.ceil((len(ticks) - 1) / (MAX_TICKS - 1))
        ticks = ticks[::step] if ticks[::step][-1] == ticks[-1] else [*ticks[::step], ticks[-1]]
    return ticks


def _setting(runs: Sequence[Run]) -> str:
    models = sorted({str(r.summary.get("model")) for r in runs})
    sizes = sorted({(r.summary.get("num_edits"), r.summary.get("batch_size")) for r in runs}, key=str)
    size = "; ".join(f"{e} edits in batches of {b}" for e, b in sizes)
    return f"model {'/'.join(models)}, {size}"


def _legend_below(fig, handles: dict) -> None:
    """One legend for the whole figure, below the panels, three entries a row."""
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncol=min(len(handles), 3),
        fontsize="small",
        frameon=False,
    )


def editing_figure(
    runs: Sequence[Run], all_cases: Sequence[list[dict]] | None = None
) -> tuple[Figure | None, list[str]]:
    """The editing metrics: one column per dataset (per dataset and model, when the runs have several
    models), one row per metric with data; and the notes."""
    all_cases = list(all_cases) if all_cases is not None else [read_jsonl(Path(r.path) / CASES) for r in runs]
    by_model = len({str(r.summary.get("model")) for r in runs}) > 1
    order = list(DATASET_TITLE)
    datasets = sorted(
        dict.fromkeys((str(r.summary.get("dataset")), str(r.summary.get("model")) if by_model else None) for r in runs),
        key=lambda p: (p[0] not in order, order.index(p[0]) if p[0] in order else 0, p[0]),
    )
    curves = {
        (i, key): curve(run, key, cases)
        for i, (run, cases) in enumerate(zip(runs, all_cases))
        for key, *_ in EDIT_METRICS
    }
    notes = []
    rows = []
    for key, *_ in EDIT_METRICS:
        if any(curves[(i, key)] for i in range(len(runs))):
            rows.append(key)
        else:
            notes.append(f"left out {key}: no run measured it" + _why_missing(runs, key))
    if not rows:
        return None, notes
    specs = {key: (label, limits, factor) for key, label, limits, factor in EDIT_METRICS}
    labels = run_labels(runs, ("dataset", "model") if by_model else ("dataset",))
    colours = line_colours(runs, labels)
    single = len(datasets) == 1
    if single:  # one dataset: its metrics in a grid of up to three columns
        ncols = min(len(rows), 3)
        nrows = math.ceil(len(rows) / ncols)
        place = {(datasets[0], key): divmod(r, ncols) for r, key in enumerate(rows)}
    else:  # datasets side by side, a metric per row
        ncols, nrows = len(datasets), len(rows)
        place = {(d, key): (r, c) for c, d in enumerate(datasets) for r, key in enumerate(rows)}
    fig = Figure(figsize=(3.9 * ncols + 0.9, 2.3 * nrows + 1.6), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    extra: dict[str, str] = {}
    handles: dict[str, object] = {}
    for ((dataset, model), key), (r, c) in place.items():
        ax = axes[r][c]
        title = DATASET_TITLE.get(dataset, dataset) + (f" · {model}" if model else "")
        label_text, limits, factor = specs[key]
        counts: set[int] = {0}
        for i, (run, label) in enumerate(zip(runs, labels)):
            if str(run.summary.get("dataset")) != dataset or not curves[(i, key)]:
                continue
            if model is not None and str(run.summary.get("model")) != model:
                continue
            xs, ys = zip(*curves[(i, key)])
            counts |= set(xs)
            (line,) = ax.plot(
                xs,
                [y * factor for y in ys],
                _style(str(run.summary.get("strategy")), extra),
                color=colours[label],
                marker="o",
                markersize=3.5,
                linewidth=1.4,
                label=label,
            )
            handles.setdefault(label, line)
        if not ax.lines:
            ax.set_axis_off()
            name = label_text.replace("\n", " ")
            ax.text(
                0.5,
                0.5,
                f"{name}:\nnot measured on {title}",
                ha="center",
                va="center",
                fontsize="small",
                color="grey",
                transform=ax.transAxes,
            )
            continue
        if limits is not None:
            ax.set_ylim(*limits)
        ticks = _ticks(counts)
        ax.set_xticks(ticks)
        ax.set_xlim(-0.03 * ticks[-1], ticks[-1] * 1.03 if ticks[-1] else 1)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize="small")
        ax.set_ylabel(label_text, fontsize="small")
        ax.set_xlabel("number of edits (0 = unedited)", fontsize="small")
        if not single and r == 0:
            ax.set_title(title)
    for row in axes:
        for ax in row:
            if not ax.has_data() and not ax.texts:
                ax.set_axis_off()
    _legend_below(fig, handles)
    where = f"{DATASET_TITLE.get(datasets[0][0], datasets[0][0])}, " if single else ""
    fig.suptitle(f"Editing metrics over the edit stream\n{where}{_setting(runs)}", fontsize="medium")
    return fig, notes


def _why_missing(runs: Sequence[Run], key: str) -> str:
    if any(r.summary.get(f"{key}_unavailable") for r in runs):
        return f" (the runs' summary.json says why under {key}_unavailable)"
    return ""


def general_keys(runs: Sequence[Run]) -> list[str]:
    """``general.<task>.<score>`` keys of the runs' evaluation points, in task order."""
    keys: dict[str, None] = {}
    for run in runs:
        for row in run.evals:
            for key in row:
                parts = key.split(".")
                if len(parts) == 3 and parts[0] == "general" and parts[2] in GENERAL_SCORES:
                    keys.setdefault(key, None)
    return list(keys)


def general_points(run: Run, key: str) -> list[tuple[int, float]]:
    """(edits, score) where the task's score was measured: not null, and not every answer unparsed."""
    task = key.rsplit(".", 1)[0]
    out = []
    for row in run.evals:
        value, n, unparsed = row.get(key), row.get(f"{task}.n"), row.get(f"{task}.unparsed")
        if "edits" not in row or not _num(value):
            continue
        if _num(n) and _num(unparsed) and n and unparsed >= n:
            continue  # nothing parsed: a 0 here is not a measurement
        out.append((int(row["edits"]), float(value)))
    return out


def general_figure(runs: Sequence[Run]) -> tuple[Figure | None, list[str]]:
    """One panel per general-capability score with data; and notes on the scores left out."""
    keys, dropped = [], {}
    for key in general_keys(runs):
        if any(general_points(r, key) for r in runs):
            keys.append(key)
        else:
            dropped.setdefault(key.split(".")[1], []).append(key.rsplit(".", 1)[1])
    notes = [
        f"left out general capability {task} ({', '.join(scores)}): no answer parsed at any evaluation point "
        "(unavailable, not 0)"
        for task, scores in dropped.items()
    ]
    if not keys:
        return None, notes
    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(3.6 * ncols + 0.4, 2.6 * nrows + 1.3), dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    labels = run_labels(runs)
    colours = line_colours(runs, labels)
    extra: dict[str, str] = {}
    handles: dict[str, object] = {}
    for j, key in enumerate(keys):
        ax = axes[j // ncols][j % ncols]
        counts: set[int] = {0}
        for run, label in zip(runs, labels):
            points = general_points(run, key)
            if not points:
                continue
            xs, ys = zip(*points)
            counts |= set(xs)
            (line,) = ax.plot(
                xs,
                ys,
                _style(str(run.summary.get("strategy")), extra),
                marker="o",
                markersize=3.5,
                color=colours[label],
                label=label,
            )
            handles.setdefault(label, line)
        _, task, score = key.split(".")
        ax.set_title(f"{task}", fontsize="medium")
        ax.set_ylabel(f"{score} ({'-1..1' if score == 'mcc' else '0-1'})", fontsize="small")
        ax.set_ylim(*GENERAL_RANGES.get(score, (-0.02, 1.02)))
        ticks = _ticks(counts)
        ax.set_xticks(ticks)
        ax.set_xlabel("number of edits (0 = unedited)", fontsize="small")
        ax.tick_params(labelsize="small")
        ax.grid(alpha=0.3)
    for j in range(len(keys), nrows * ncols):
        axes[j // ncols][j % ncols].set_axis_off()
    _legend_below(fig, handles)
    fig.suptitle(f"General capability over the edit stream\n{_setting(runs)}", fontsize="medium")
    return fig, notes


def report_figures(runs: Sequence[Run]) -> FigureSet:
    """The report's figures (``editing``, ``general``: those with data) and the notes on what was left out."""
    out = FigureSet()
    fig, notes = editing_figure(runs)
    if fig is not None:
        out.figures[EDITING] = fig
    out.notes += notes
    fig, notes = general_figure(runs)
    if fig is not None:
        out.figures[GENERAL] = fig
    out.notes += notes
    return out


def save_figure(fig: Figure, path: Path) -> Path:
    """Render ``fig`` at ``path`` (format from the suffix: .png or .pdf) through a temp file and a rename."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip("."))
    return path


def write_figures(runs: Sequence[Run], report_dir: Path) -> tuple[list[Path], list[str]]:
    """Every figure of ``runs`` as ``<report_dir>/figures/<name>.png`` and ``.pdf``; and the notes."""
    folder = Path(report_dir) / FIGURES_DIR
    made = report_figures(runs)
    written = []
    for name, fig in made.figures.items():
        for suffix in (".png", ".pdf"):
            written.append(save_figure(fig, folder / f"{name}{suffix}"))
    return written, made.notes
