"""docs/solver.md's measured block, rendered from a ``make bench-scale`` solver file, never typed.

``make bench-scale`` writes ``benchmarks/results/solver-<device>-<time>.json`` and then
``scripts/solver_docs.py`` rewrites the block between the markers below; a test checks that
the page's block is the rendering of the newest such file.
"""

from __future__ import annotations

SOLVER_BEGIN = "<!-- solver:begin (make bench-scale writes this block from the newest solver file) -->"
SOLVER_END = "<!-- solver:end -->"
WAY_LABELS = {
    "direct": "blue schedule, direct solver",
    "updated": "blue schedule, updated solver",
    "reference": "reference schedule, direct solver",
}


def _seconds(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def render_solver(result: dict, name: str) -> str:
    """Per batch size and way: solve seconds, edit seconds, seconds per edit and the solve
    share; the ratios; the one-time factorisations; the updated solver's accuracy."""
    m = result["model"]
    size = f"{m['n_layers']}-layer slice of {m['model']}" if m["n_layers"] < m["of_layers"] else m["model"]
    lines = [
        f"_From `benchmarks/results/{name}`: {result['device']} ({result['threads']} threads), {size} "
        f"(d={m['hidden_size']}, d_k={m['d_k']}, {m['dtype']}), `{result['method']}`, "
        f"{result['target_steps']} target steps at most, written layers {m['critical_layers']}._",
        "",
        "| batch size | way | batches | solve s | edit s | s per edit | solve share |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    runs = result["runs"]
    for key, run in runs.items():
        batch, strategy, way = key.split("/")
        lines.append(
            f"| {batch.removeprefix('batch')} | {strategy}: {WAY_LABELS[way]} | {run['batches']} | "
            f"{_seconds(run['solve_seconds'])} | {_seconds(run['edit_seconds'])} | "
            f"{_seconds(run['seconds_per_edit'])} | {100 * run['solve_share']:.1f}% |"
        )
    lines.append("")
    for key, r in result["ratios"].items():
        batch, strategy = key.split("/")
        lines.append(
            f"- batch size {batch.removeprefix('batch')} ({strategy}): seconds per edit, direct / updated "
            f"**{r['direct_over_updated_seconds_per_edit']:.2f}×**, reference / updated "
            f"{r['reference_over_updated_seconds_per_edit']:.2f}×; solve seconds, direct / updated "
            f"{r['direct_over_updated_solve_seconds']:.1f}×; solve share {100 * r['solve_share_direct']:.1f}% "
            f"(direct) → {100 * r['solve_share_updated']:.1f}% (updated)."
        )
    once = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(result.get("derived_seconds", {}).items()))
    if once:
        lines.append(f"- one-time factorisations (cached beside the statistics, not in the rows above): {once}.")
    accuracy = result.get("accuracy", [])
    if accuracy:
        lines += [
            "",
            "Updated against direct float64 solves (`" + accuracy[0]["method"] + "`, keys drawn from N(0, C) of "
            "this slice's statistics, Delta compared at evenly spaced batches, the last included):",
            "",
            "| protocol | checked at batches | max relative Frobenius difference | largest residual "
            "| refactorisations | updated solver s (all batches) | direct s per solve |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for a in accuracy:
            checks = a["checks"]
            lines.append(
                f"| {a['batches']} batches of {a['batch_size']} | {', '.join(str(c['batch']) for c in checks)} | "
                f"{a['max_relative_difference']:.1e} | {max(c['residual'] for c in checks):.1e} | "
                f"{a['refactorisations']} | {a['updated_seconds']:.1f} | {a['direct_seconds_per_solve']:.1f} |"
            )
    lines += [
        "",
        f"Peak memory {result['peak_memory_bytes'] / 1e9:.1f} GB ({result['peak_memory_kind']}); "
        f"the whole benchmark {result['wall_seconds'] / 60:.0f} min.",
    ]
    return "\n".join(lines)
