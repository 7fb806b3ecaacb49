#!/usr/bin/env python
"""Rewrite docs/solver.md's measured blocks: the newest solver file (``make bench-scale``) and
the newest gpu-check file (``make gpu-check``; one line saying it has not run while there is none).

python scripts/solver_docs.py [--results benchmarks/results] [--page docs/solver.md]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from blue_cli.reporting.readme_results import newest_bench, replace_block
from blue_cli.reporting.solver_results import (
    GPU_BEGIN,
    GPU_END,
    SOLVER_BEGIN,
    SOLVER_END,
    render_gpu_check,
    render_solver,
)

ROOT = Path(__file__).resolve().parent.parent


def newest_gpu_check(folder: Path) -> Path | None:
    """The newest gpu-check-*.json, or None before make gpu-check has run."""
    return newest_bench(folder, "gpu-check") if any(folder.glob("gpu-check-*.json")) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "solver.md")
    args = parser.parse_args()
    newest = newest_bench(args.results, "solver")
    page = replace_block(
        args.page.read_text(encoding="utf-8"),
        render_solver(json.loads(newest.read_text()), newest.name),
        SOLVER_BEGIN,
        SOLVER_END,
    )
    gpu = newest_gpu_check(args.results)
    gpu_block = render_gpu_check(json.loads(gpu.read_text()), gpu.name) if gpu else render_gpu_check(None, None)
    page = replace_block(page, gpu_block, GPU_BEGIN, GPU_END)
    tmp = args.page.with_name(args.page.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, args.page)
    print(f"{newest.name} -> {args.page}")


if __name__ == "__main__":
    main()
