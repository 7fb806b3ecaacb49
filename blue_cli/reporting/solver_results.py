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
    ]
    if not result.get("complete", True):
        lines += ["_The run was stopped before it finished: what it measured until then._", ""]
    lines += [
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


GPU_BEGIN = "<!-- gpu-check:begin (make gpu-check writes this block from the newest gpu-check file) -->"
GPU_END = "<!-- gpu-check:end -->"
GPU_NOT_RUN = (
    "Not yet run on a GPU: `make gpu-check` (benchmarks/gpu_check.py) is prepared but has never run, "
    "so nothing here is measured on CUDA."
)


def render_gpu_check(result: dict | None, name: str | None) -> str:
    """The gpu-check block: one line until a gpu-check file exists, then its measurements."""
    if result is None:
        return GPU_NOT_RUN
    lines = [
        f"_From `benchmarks/results/{name}`: {result['device']}, {result['model']['model']} "
        f"(all {result['model']['n_layers']} layers), `{result['method']}`, spread, "
        f"{result['target_steps']} target steps at most._",
        "",
        "| batch size | way | solve s | edit s | s per edit | peak GB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for key, run in result["runs"].items():
        batch, _, way = key.split("/")
        lines.append(
            f"| {batch.removeprefix('batch')} | {WAY_LABELS[way]} | {_seconds(run['solve_seconds'])} | "
            f"{_seconds(run['edit_seconds'])} | {_seconds(run['seconds_per_edit'])} | "
            f"{run['peak_memory_bytes'] / 1e9:.1f} |"
        )
    off, prec, plan = result["offload_state"], result["statistics_precision"], result["plan"]
    worst = max(a["max_relative_difference"] for a in result["accuracy"])
    lines += [
        "",
        f"- `method.offload_state=true`, batch 100, updated solver: edit {_seconds(off['edit_seconds'])} s, "
        f"peak {off['peak_memory_bytes'] / 1e9:.1f} GB.",
        f"- updated against direct: largest relative Frobenius difference {worst:.1e} over "
        + ", ".join(f"{a['batches']} batches of {a['batch_size']}" for a in result["accuracy"])
        + ".",
        f"- statistics, float32 against float64 key products: C differs by {prec['C_relative_difference']:.1e}, "
        f"a MEMIT Delta by {prec['delta_relative_difference']:.1e} (relative Frobenius).",
        f"- peak memory of the batch-100 updated run {plan['measured_peak_bytes'] / 1e9:.1f} GB against "
        f"`blue plan`'s {plan['edit_peak_bytes'] / 1e9:.1f} GB ({plan['measured_over_planned']:.2f}×).",
    ]
    return "\n".join(lines)
