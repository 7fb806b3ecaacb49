"""docs/solver.md's measured block is the rendering of the newest make bench-scale solver file."""

from __future__ import annotations

import json
from pathlib import Path

from blue_cli.reporting.readme_results import current_block, newest_bench
from blue_cli.reporting.solver_results import (
    GPU_BEGIN,
    GPU_END,
    GPU_NOT_RUN,
    SOLVER_BEGIN,
    SOLVER_END,
    render_gpu_check,
    render_solver,
)

REPO = Path(__file__).resolve().parents[2]


def _run(solve, edit, batches, edits):
    return {
        "solve_seconds": solve,
        "edit_seconds": edit,
        "seconds_per_edit": edit / edits,
        "solve_share": solve / edit,
        "batches": batches,
    }


def test_render_solver_reads_the_runs_ratios_and_accuracy():
    result = {
        "device": "cpu",
        "threads": 1,
        "method": "memit",
        "target_steps": 5,
        "model": {
            "model": "llama3-8b",
            "n_layers": 2,
            "of_layers": 32,
            "hidden_size": 4096,
            "d_k": 14336,
            "dtype": "float32",
            "critical_layers": [0],
        },
        "runs": {
            "batch4/blue/direct": _run(24.0, 48.0, 1, 4),
            "batch4/blue/updated": _run(1.2, 24.0, 1, 4),
            "batch4/blue/reference": _run(24.0, 60.0, 1, 4),
        },
        "ratios": {
            "batch4/blue": {
                "direct_over_updated_seconds_per_edit": 2.0,
                "reference_over_updated_seconds_per_edit": 2.5,
                "direct_over_updated_solve_seconds": 20.0,
                "solve_share_direct": 0.5,
                "solve_share_updated": 0.05,
            }
        },
        "derived_seconds": {"cholesky_15000.0.0": 21.5},
        "accuracy": [
            {
                "method": "memit_seq",
                "batches": 300,
                "batch_size": 1,
                "checks": [{"batch": 100, "residual": 1e-13}, {"batch": 300, "residual": 3e-13}],
                "max_relative_difference": 4e-11,
                "refactorisations": 0,
                "updated_seconds": 310.0,
                "direct_seconds_per_solve": 25.0,
            }
        ],
        "peak_memory_bytes": 12.3e9,
        "peak_memory_kind": "max RSS",
        "wall_seconds": 1500,
    }
    text = render_solver(result, "solver-cpu-x.json")
    assert "2-layer slice of llama3-8b (d=4096, d_k=14336, float32), `memit`, 5 target steps" in text
    assert "| 4 | blue: blue schedule, direct solver | 1 | 24.0 | 48.0 | 12.0 | 50.0% |" in text
    assert "| 4 | blue: blue schedule, updated solver | 1 | 1.20 | 24.0 | 6.00 | 5.0% |" in text
    assert "| 4 | blue: reference schedule, direct solver | 1 | 24.0 | 60.0 | 15.0 | 40.0% |" in text
    assert "direct / updated **2.00×**, reference / updated 2.50×" in text
    assert "solve share 50.0% (direct) → 5.0% (updated)" in text
    assert "cholesky_15000.0.0 21.5 s" in text
    assert "| 300 batches of 1 | 100, 300 | 4.0e-11 | 3.0e-13 | 0 | 310.0 | 25.0 |" in text
    assert "Peak memory 12.3 GB (max RSS); the whole benchmark 25 min." in text


def test_docs_solver_block_is_the_rendering_of_the_newest_solver_file():
    newest = newest_bench(REPO / "benchmarks" / "results", "solver")
    block = current_block((REPO / "docs" / "solver.md").read_text(encoding="utf-8"), SOLVER_BEGIN, SOLVER_END)
    assert block == render_solver(json.loads(newest.read_text()), newest.name)


def test_docs_gpu_block_says_in_one_line_that_it_has_not_run_until_a_gpu_check_file_exists():
    results = REPO / "benchmarks" / "results"
    block = current_block((REPO / "docs" / "solver.md").read_text(encoding="utf-8"), GPU_BEGIN, GPU_END)
    if any(results.glob("gpu-check-*.json")):
        newest = newest_bench(results, "gpu-check")
        assert block == render_gpu_check(json.loads(newest.read_text()), newest.name)
    else:
        assert block == GPU_NOT_RUN and "\n" not in block
