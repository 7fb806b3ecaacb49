"""Rendering of ``locate.json`` (``blue locate``): the per-layer table and ROME-style figures.

Figures follow ROME's (Meng et al. 2022) Fig. 1 and its average-effect plots:

- ``causal_trace``: a heat map per kind (hidden states purple, MLP green, attention red, as
  ROME colours them), rows the six token groups, columns the layers, the colour the mean
  indirect effect p(restored) - p(corrupted) over facts; a group no fact has stays blank;
- ``last_subject_effect``: the mean indirect effect at the last subject token per layer, a
  line per kind, with the suggested critical layers shaded.

Each is saved as PNG and PDF through a temp file and a rename; matplotlib's object API
(``Figure``) is used, never pyplot.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from blue_cli.reporting.plots import save_figure

HEATMAP = "causal_trace"
LINES = "last_subject_effect"
GROUP_LABELS = {
    "first_subject": "first subject token",
    "further_subject": "further subject tokens",
    "last_subject": "last subject token",
    "first_after": "first subsequent token",
    "further": "further tokens",
    "last": "last token",
}
KIND_STYLE = {  # (title, colour map, line colour)
    "hidden": ("hidden state (residual after the block)", "Purples", "#6a51a3"),
    "mlp": ("MLP output", "Greens", "#238b45"),
    "attn": ("attention output", "Reds", "#cb181d"),
}


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _title(payload: dict) -> str:
    s = payload["settings"]
    return (
        f"{payload['model']['name']}: mean indirect effect over {payload['n_facts']} facts "
        f"({s['samples']} noise samples, noise {s['noise']:g} x embedding std)"
    )


def layer_table(payload: dict) -> Table:
    """One row per layer: the mean indirect effect of each kind at the last subject token and at
    the last token; the suggested layers marked."""
    kinds = list(payload["effects"])
    suggested = set((payload.get("suggestion") or {}).get("layers", []))
    table = Table(title=_title(payload))
    table.add_column("layer", justify="right")
    for label in ("last subj.", "last tok."):
        for kind in kinds:
            table.add_column(f"{kind}\n{label}", justify="right")
    table.add_column("edit")
    for layer in range(payload["model"]["n_layers"]):
        cells = []
        for group in ("last_subject", "last"):
            for kind in kinds:
                row = payload["effects"][kind][group]
                cells.append(_fmt(row[layer] if row is not None else None))
        table.add_row(str(layer), *cells, "◀" if layer in suggested else "")
    return table


def suggestion_lines(payload: dict) -> list[str]:
    """The clean/corrupted probabilities and the suggested layers, as plain lines."""
    lines = [
        f"P(true object): clean {payload['clean_prob']:.3f}, corrupted {payload['corrupted_prob']:.3f} "
        f"(mean over {payload['n_facts']} facts)"
    ]
    s = payload.get("suggestion")
    if s is None:
        lines.append("no suggestion: it reads the MLP traces (add mlp to --kinds)")
    else:
        lines.append(
            f"suggested critical layers ({s['span']} with the largest mean MLP effect at the last subject "
            f"token, {s['mean_effect']:.3f}): {s['override']}; BLUE's boundary layers {s['boundary_layers']}"
        )
    return lines


def heatmap_figure(payload: dict):
    """ROME's Fig. 1 averaged over facts: token group x layer per kind."""
    from matplotlib.figure import Figure

    kinds, groups = list(payload["effects"]), payload["groups"]
    n_layers = payload["model"]["n_layers"]
    fig = Figure(figsize=(max(4.2 * len(kinds), 6.4), 3.4), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds):
        rows = [payload["effects"][kind][g] or [math.nan] * n_layers for g in groups]
        title, cmap, _ = KIND_STYLE[kind]
        image = ax.imshow(rows, cmap=cmap, aspect="auto", vmin=min(0.0, _least(rows)), interpolation="nearest")
        ax.set_yticks(range(len(groups)), [f"{GROUP_LABELS[g]} ({payload['group_counts'][g]})" for g in groups])
        if n_layers <= 16:
            ax.set_xticks(range(n_layers))
        ax.set_xlabel("layer")
        window = payload["settings"]["windows"].get(kind, 1)
        ax.set_title(f"{title}\n(window {window})" if window > 1 else title, fontsize=10)
        if ax is not axes[0]:
            ax.set_yticklabels([])
        fig.colorbar(image, ax=ax, label="p(restored) − p(corrupted)", shrink=0.9)
    fig.suptitle(_title(payload).replace(" (", "\n(", 1), fontsize=10)
    return fig


def _least(rows) -> float:
    values = [v for row in rows for v in row if not math.isnan(v)]
    return min(values, default=0.0)


def lines_figure(payload: dict):
    """The mean indirect effect at the last subject token per layer, a line per kind."""
    from matplotlib.figure import Figure

    n_layers = payload["model"]["n_layers"]
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    for kind, groups in payload["effects"].items():
        title, _, colour = KIND_STYLE[kind]
        ax.plot(range(n_layers), groups["last_subject"], marker="o", markersize=3, color=colour, label=title)
    s = payload.get("suggestion")
    if s is not None:
        ax.axvspan(s["layers"][0] - 0.5, s["layers"][-1] + 0.5, color="grey", alpha=0.15, label="suggested layers")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean indirect effect at the last subject token")
    ax.set_title(_title(payload), fontsize=9)
    ax.legend(fontsize=8)
    return fig


def write_figures(payload: dict, out_dir: Path) -> list[Path]:
    """``causal_trace`` and ``last_subject_effect`` as PNG and PDF in ``out_dir``; the files written."""
    written = []
    for name, fig in ((HEATMAP, heatmap_figure(payload)), (LINES, lines_figure(payload))):
        for suffix in (".png", ".pdf"):
            written.append(save_figure(fig, Path(out_dir) / f"{name}{suffix}"))
    return written
