"""Rendering of ``analysis.json`` (``blue analyze``): console tables and PNG bar charts.

Figures follow the BLUE paper's: one bar per critical layer, the mean over requests,
with an error bar of one standard deviation either side clipped to the quantity's valid
range (a cosine stays in [-1, 1], a probability in [0, 1], a ratio, a step count or an
error above 0), so no bar claims an impossible value; the figures say so. matplotlib's
object API (``Figure``) is used, never pyplot, so no global backend or figure state is touched.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

SIMILARITY_PNG = "residual_similarity.png"
PROBABILITY_PNG = "target_probability.png"
RUN_PNG = "run_layers.png"

# (payload key, legend label, table header, colour) of the probability bars.
PROBABILITIES = (
    ("p_spread", "spread's share added", "P +share", "#9ecae1"),
    ("p_direct", "direct residual added", "P +direct", "#3182bd"),
    ("p_written_spread", "written at l: spread's share", "P W share", "#fdae6b"),
    ("p_written_direct", "written at l: direct residual", "P W direct", "#e6550d"),
)


def _pm(stat: dict, digits: int = 3) -> str:
    """Mean over std on two lines, so eight columns fit 80 terminal columns uncut."""
    return f"{stat['mean']:.{digits}f}\n±{stat['std']:.{digits}f}"


def _prob(stat: dict) -> str:
    return f"{stat['mean']:.3g}\n±{stat['std']:.2g}"


def _title(payload: dict) -> str:
    state = f"run {Path(payload['run']).name}" if payload.get("run") else "unedited"
    return f"{payload['model']} · {payload['method']} · {payload['dataset']} ({payload['records']} records, {state})"


def layer_table(payload: dict) -> Table:
    """One row per critical layer: cosine and norm ratio of spread's share to the direct
    residual, and P(target_new) with each added or written at that layer."""
    table = Table(title=f"spread's share vs the residual optimised at the layer — {_title(payload)}")
    table.add_column("layer", justify="right")
    table.add_column("cosine", justify="right")
    table.add_column("norm ratio", justify="right")
    for _, _, header, _ in PROBABILITIES:
        table.add_column(header, justify="right")
    table.add_column("fit W direct", justify="right")
    own = {r["layer"]: r["steps"] for r in payload.get("own_residual_steps", [])}
    if own:
        table.add_column("steps own R", justify="right")
    for row in payload["layers"]:
        table.add_row(
            str(row["layer"]),
            _pm(row["cosine"]),
            _pm(row["norm_ratio"]),
            *(_prob(row[key]) for key, _, _, _ in PROBABILITIES),
            f"{row['key_fit_error_direct']:.3f}",
            *([f"{own[row['layer']]['mean']:.2f}"] if own else []),
        )
    table.caption = (
        "mean ± std over requests. share: spread's share of z - h_L for the layer; direct: z_l - h_l optimised "
        "at the layer; norm ratio: ‖share‖/‖direct‖; P: P(target_new | rewrite prompt) with the vector added "
        "(+) or written by the method at that layer alone (W); fit: the write's ‖ΔK − R‖/‖R‖; "
        "steps own R: mean target steps when every layer, in order, optimises and writes its own residual "
        "(the BLUE paper's Table 1). "
        f"P without any vector: {payload['p_base']['mean']:.3g} ± {payload['p_base']['std']:.2g}"
    )
    return table


def run_table(payload: dict) -> Table | None:
    """Per written layer of a run: mean target steps and key-fit error over its batches."""
    run = payload.get("run_batches")
    if not run:
        return None
    steps = {s["layer"]: s for s in run["target_steps"]}
    table = Table(title=f"run batches ({run['batches']}, {payload.get('strategy', '')}): per written layer")
    table.add_column("layer", justify="right")
    table.add_column("target steps", justify="right")
    table.add_column("key_fit_error", justify="right")
    for fit in run["key_fit_error"]:
        step = steps.get(fit["layer"])
        table.add_row(str(fit["layer"]), _pm(step, 1) if step else "—", _pm(fit))
    table.caption = f"write_error (mean over batches): {run['write_error']:.3f}"
    return table


COSINE = (-1.0, 1.0)
PROBABILITY = (0.0, 1.0)
POSITIVE = (0.0, math.inf)
ERROR_BARS = "error bars: mean ± 1 std over requests, clipped to the quantity's valid range"


def clipped_interval(stat: dict, bounds: tuple[float, float]) -> tuple[float, float]:
    """(below, above) the mean: one std either side, cut where the valid range ``bounds`` ends."""
    mean, std = stat["mean"], stat["std"]
    low, high = max(mean - std, bounds[0]), min(mean + std, bounds[1])
    return max(mean - low, 0.0), max(high - mean, 0.0)


def _bars(
    ax,
    layers: list[int],
    stats: list[dict],
    colour: str,
    bounds: tuple[float, float],
    label: str | None = None,
    offset: float = 0.0,
    width: float = 0.6,
):
    xs = [i + offset for i in range(len(layers))]
    below, above = zip(*(clipped_interval(s, bounds) for s in stats))
    ax.bar(
        xs,
        [s["mean"] for s in stats],
        width,
        yerr=[list(below), list(above)],
        capsize=4,
        color=colour,
        label=label,
        edgecolor="black",
        linewidth=0.5,
    )


def _layer_axis(ax, layers: list[int], prefix: str = "critical layer") -> None:
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([str(l) for l in layers])
    ax.set_xlabel(prefix)
    ax.grid(axis="y", alpha=0.3)


def write_figures(payload: dict, out_dir: Path) -> list[Path]:
    """PNG bar charts of ``analysis.json``; returns the files written."""
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = payload["layers"]
    layers = [r["layer"] for r in rows]
    paths = []

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    cos_ax, ratio_ax = fig.subplots(1, 2)
    _bars(cos_ax, layers, [r["cosine"] for r in rows], "#3182bd", COSINE)
    _layer_axis(cos_ax, layers)
    cos_ax.set_ylabel("cosine(spread's share, direct residual)")
    cos_ax.set_title("direction")
    cos_ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    low = min(r["cosine"]["mean"] - clipped_interval(r["cosine"], COSINE)[0] for r in rows)
    cos_ax.set_ylim(min(0.0, low) - 0.02, 1.05)
    _bars(ratio_ax, layers, [r["norm_ratio"] for r in rows], "#e6550d", POSITIVE)
    _layer_axis(ratio_ax, layers)
    ratio_ax.set_ylabel("‖spread's share‖ / ‖direct residual‖")
    ratio_ax.set_title("magnitude")
    ratio_ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ratio_ax.set_ylim(bottom=0.0)
    fig.suptitle(f"Residual distributed by spread vs computed at each layer\n{_title(payload)}\n{ERROR_BARS}")
    paths.append(out_dir / SIMILARITY_PNG)
    fig.savefig(paths[-1], dpi=120)

    fig = Figure(figsize=(10, 4.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(PROBABILITIES)
    for k, (key, label, _, colour) in enumerate(PROBABILITIES):
        _bars(
            ax,
            layers,
            [r[key] for r in rows],
            colour,
            PROBABILITY,
            label,
            offset=(k - (len(PROBABILITIES) - 1) / 2) * width,
            width=width,
        )
    ax.axhline(payload["p_base"]["mean"], color="black", linestyle=":", linewidth=1, label="no vector (model as given)")
    _layer_axis(ax, layers)
    ax.set_ylim(bottom=0.0)
    ax.set_ylabel("P(target_new | rewrite prompt)")
    ax.set_title(f"Distributed vs computed residual at each layer\n{_title(payload)}\n{ERROR_BARS}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    paths.append(out_dir / PROBABILITY_PNG)
    fig.savefig(paths[-1], dpi=120)

    run = payload.get("run_batches")
    if run:
        fig = Figure(figsize=(10, 4.2), layout="constrained")
        steps_ax, fit_ax = fig.subplots(1, 2)
        step_layers = [s["layer"] for s in run["target_steps"]]
        _bars(steps_ax, step_layers, run["target_steps"], "#31a354", POSITIVE)
        _layer_axis(steps_ax, step_layers, "layer where the target was optimised")
        steps_ax.set_ylabel("target optimisation steps (mean over batches)")
        steps_ax.set_title("steps to reach the target")
        fit_layers = [s["layer"] for s in run["key_fit_error"]]
        _bars(fit_ax, fit_layers, run["key_fit_error"], "#756bb1", POSITIVE)
        _layer_axis(fit_ax, fit_layers, "written layer")
        fit_ax.set_ylabel("key_fit_error ‖ΔK − R‖ / ‖R‖")
        fit_ax.set_title("write error per layer")
        fig.suptitle(
            f"Run batches ({run['batches']}, strategy {payload.get('strategy', '?')}) — "
            f"{payload['model']} · {payload['method']}\n{ERROR_BARS.replace('requests', 'batches')}"
        )
        paths.append(out_dir / RUN_PNG)
        fig.savefig(paths[-1], dpi=120)
    return paths
