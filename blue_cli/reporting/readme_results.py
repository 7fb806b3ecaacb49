"""The docs' measured tables (docs/tiny-models.md, docs/benchmarks.md), rendered from run
summaries, never typed by hand.

``make readme-results`` runs the tiny-model sweeps, stores the summaries it needs in
``benchmarks/results/readme-runs.json`` and rewrites the block between the markers
below; a test checks that each page's block is the rendering of that file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from blue_cli.datasets.base import RATES

BEGIN = "<!-- results:begin (make readme-results writes this block) -->"
END = "<!-- results:end -->"
BENCH_BEGIN = "<!-- bench:begin (make readme-results writes this block from the newest make bench file) -->"
BENCH_END = "<!-- bench:end -->"
SCALE_BEGIN = "<!-- scale:begin (make readme-results writes this block from the newest make bench-scale file) -->"
SCALE_END = "<!-- scale:end -->"
REAL_BEGIN = "<!-- real:begin (make readme-results writes this block from the newest make bench real-model file) -->"
REAL_END = "<!-- real:end -->"
REAL_PHASES = (("targets", "target optimisation"), ("keys", "key collection"), ("solves", "solves"))
SCALE_PHASES = (
    ("targets", "target optimisation"),
    ("keys", "key collection"),
    ("solves", "solves"),
    ("writes", "writes"),
    ("diagnostics", "diagnostics"),
    ("edit", "whole edit"),
)
KEPT = (
    "model",
    "method",
    "strategy",
    "dataset",
    "num_edits",
    "batch_size",
    "efficacy",
    "generalization",
    "specificity",
    "pre_efficacy",
    "pre_generalization",
    "pre_specificity",
    "target_logprob_gain",
    "write_error",
    "seconds_per_batch",
    "fluency",
    "pre_fluency",
    "edit_seconds",
    "evaluation_seconds",
)


def collect(run_dirs: Iterable[Path]) -> list[dict]:
    """The kept keys of every run folder's summary.json, sorted by model, method, strategy."""
    rows = []
    for run_dir in run_dirs:
        summary = json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
        rows.append({k: summary.get(k) for k in KEPT})
    return sorted(rows, key=lambda r: (r["model"], r["method"], r["strategy"]))


def _cell(row: dict | None) -> str:
    if row is None:
        return "–"
    return " / ".join(f"{row[k]:.3f}" for k in RATES) + f" / {row['target_logprob_gain']:.2f}"


def render(rows: Sequence[dict]) -> str:
    """One markdown line per (model, method): spread and blue side by side, plus pre-edit rates."""
    lines = [
        "| model | method | spread: eff / gen / spe / gain | blue: eff / gen / spe / gain | pre-edit eff / gen / spe |",
        "|---|---|---|---|---|",
    ]
    pairs: dict[tuple[str, str], dict[str, dict]] = {}
    for row in rows:
        pairs.setdefault((row["model"], row["method"]), {})[row["strategy"]] = row
    for (model, method), by_strategy in pairs.items():
        any_row = next(iter(by_strategy.values()))
        pre = " / ".join(f"{any_row[f'pre_{k}']:.3f}" for k in RATES)
        lines.append(
            f"| {model} | {method} | {_cell(by_strategy.get('spread'))} | {_cell(by_strategy.get('blue'))} | {pre} |"
        )
    edits = {(r["num_edits"], r["batch_size"]) for r in rows}
    note = ", ".join(f"{n} edits in batches of {b}" for n, b in sorted(edits))
    return "\n".join([f"_{note}; rendered from `benchmarks/results/readme-runs.json`._", "", *lines, "", *_cost(rows)])


def _cost(rows: Sequence[dict]) -> list[str]:
    """Evaluation cost against editing cost, and fluency, for the plain MEMIT runs."""
    lines = [
        "| model | strategy | edit s (all batches) | evaluation s (pre + post, with generation) "
        "| ratio | fluency pre → post |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"] != "memit" or r.get("evaluation_seconds") is None:
            continue
        flu = f"{r['pre_fluency']:.2f} → {r['fluency']:.2f}" if r.get("fluency") is not None else "–"
        ratio = r["evaluation_seconds"] / r["edit_seconds"]
        lines.append(
            f"| {r['model']} | {r['strategy']} | {r['edit_seconds']:.1f} | {r['evaluation_seconds']:.1f} "
            f"| {ratio:.2f}× | {flu} |"
        )
    return lines


def render_bench(bench: dict, name: str) -> str:
    """The speed table of a ``make bench`` result file: seconds per batch of the first
    model's batched runs, and the one-at-a-time and reference-schedule ratios."""
    ratios = bench["ratios"]
    first = bench["rows"][0]["model"]
    method = next(r["method"] for r in bench["rows"] if r["variant"] != "batched")
    secs = {
        r["strategy"]: r["sec_per_batch"]
        for r in bench["rows"]
        if r["model"] == first and r["method"] == method and r["variant"] == "batched"
    }
    return "\n".join(
        [
            f"_From `benchmarks/results/{name}` ({bench['batch_size']} edits per batch; "
            f"`{method}` as that file names it)._",
            "",
            f"| {first}, {method} | spread | blue |",
            "|---|---|---|",
            f"| seconds per batch, ours | {secs['spread']:.2f} | {secs['blue']:.2f} |",
            "| one request at a time (×) | "
            + " | ".join(f"{ratios[s]['batching_speedup']:.2f}×" for s in ("spread", "blue"))
            + " |",
            "| reference schedule (×, seconds / FLOPs) | "
            + " | ".join(
                f"{ratios[s]['reference_over_ours_seconds']:.2f}× / {ratios[s]['reference_over_ours_flops']:.2f}×"
                for s in ("spread", "blue")
            )
            + " |",
        ]
    )


def render_real(real: dict, name: str) -> str:
    """The phase table of a ``benchmarks/bench_real.py`` file: one batch on the real model,
    target steps unsplit (every position) and split at the subject."""
    rows = real["rows"]
    variants = ("unsplit", "split")
    lines = [
        f"_From `benchmarks/results/{name}`: {real['model']}, one batch of {real['batch_size']} CounterFact "
        f"edits, memit_seq + blue, {real['steps']} target steps, CPU ({real['threads']} threads)._",
        "",
        "| phase (seconds) | unsplit | split |",
        "|---|---:|---:|",
    ]
    for key, label in (*REAL_PHASES, ("edit_batch", "whole edit")):
        lines.append(f"| {label} | " + " | ".join(f"{rows[v].get(key, 0.0):.1f}" for v in variants) + " |")
    lines.append(
        "| target steps taken (all requests) | "
        + " | ".join(str(rows[v]["target_steps_total"]) for v in variants)
        + " |"
    )
    lines += [
        "",
        f"Split over unsplit: {real['speedup']:.2f}× faster per batch; the written updates differ by "
        f"{real['residual_difference']:.1e} (relative norm, largest layer).",
    ]
    return "\n".join(lines)


def render_scale(scale: dict, name: str) -> str:
    """The phase table of a ``make bench-scale`` result file: seconds per phase under
    each measured strategy and schedule, covariance throughput, peak memory, ratios."""
    m = scale["model"]
    runs = sorted(scale["seconds"])
    size = f"{m['n_layers']}-layer slice of {m['model']}" if m["n_layers"] < m["of_layers"] else m["model"]
    lines = [
        f"_From `benchmarks/results/{name}`: {scale['device']} ({scale['threads']} threads), {size} "
        f"(d={m['hidden_size']}, d_k={m['d_k']}, vocabulary {m['vocab']} of {m['real_vocab']}, {m['dtype']}), "
        f"`{scale['method']}`, batch {scale['batch_size']}, {scale['target_steps']} target steps, "
        f"written layers {m['critical_layers']}._",
        "",
        "| phase (seconds) | " + " | ".join(r.replace("/", ", ") + " schedule" for r in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    for key, label in SCALE_PHASES:
        lines.append(f"| {label} | " + " | ".join(f"{scale['seconds'][r][key]:.1f}" for r in runs) + " |")
    cov = scale["covariance"]
    ratios = "; ".join(
        f"{strategy}: " + ", ".join(f"{k} {v:.2f}×" for k, v in r.items())
        for strategy, r in scale["reference_over_blue"].items()
    )
    lines += [
        "",
        f"Covariance: {cov['tokens_per_second']:.1f} tokens/s ({cov['tokens']} tokens, layers {cov['layers']}); "
        f"peak memory {scale['peak_memory_bytes'] / 1e9:.1f} GB ({scale['peak_memory_kind']}); "
        f"reference schedule over blue's: {ratios}.",
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with the marked block replaced; a page without the markers is an error."""
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[:start] + "\n" + block + "\n" + text[stop:]


def rewrite_block(page: Path, block: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace ``page``'s marked block with ``block`` on disk (through a temp file and a rename)."""
    from blue_cli.cache import write_text_atomic

    write_text_atomic(page, replace_block(page.read_text(encoding="utf-8"), block, begin, end))


def current_block(text: str, begin: str = BEGIN, end: str = END) -> str:
    return text[text.index(begin) + len(begin) : text.index(end)].strip("\n")


def newest_bench(folder: Path, prefix: str = "bench") -> Path:
    """The newest ``<prefix>-*.json`` (names end in a sortable time)."""
    return max(folder.glob(f"{prefix}-*.json"), key=lambda p: p.stem.rsplit("-", 2)[-2:])
