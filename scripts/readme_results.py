#!/usr/bin/env python
"""Rewrite the docs' measured tables from run folders (``make readme-results``).

    python scripts/readme_results.py RUN_OR_SWEEP_DIR... [--store benchmarks/results/readme-runs.json]

Every folder given (or found one level below a sweep folder) that holds a
summary.json is one row; the rows are stored as JSON and rendered into docs/tiny-models.md; the newest
``make bench`` and ``make bench-scale`` files into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from blue_cli.cache import write_text_atomic
from blue_cli.reporting.readme_results import (
    BENCH_BEGIN,
    BENCH_END,
    REAL_BEGIN,
    REAL_END,
    SCALE_BEGIN,
    SCALE_END,
    collect,
    newest_bench,
    render,
    render_bench,
    render_real,
    render_scale,
    replace_block,
)

ROOT = Path(__file__).resolve().parent.parent


def run_folders(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if (path / "summary.json").is_file():
            found.append(path)
        else:
            found += sorted(p for p in path.iterdir() if (p / "summary.json").is_file())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--store", type=Path, default=ROOT / "benchmarks" / "results" / "readme-runs.json")
    parser.add_argument("--results-page", type=Path, default=ROOT / "docs" / "tiny-models.md")
    parser.add_argument("--bench-page", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    rows = collect(run_folders(args.paths))
    if not rows:
        raise SystemExit(f"no run folders with a summary.json under {', '.join(map(str, args.paths))}")
    results_page = replace_block(args.results_page.read_text(encoding="utf-8"), render(rows))
    bench = newest_bench(args.store.parent)
    bench_page = args.bench_page.read_text(encoding="utf-8")
    bench_block = render_bench(json.loads(bench.read_text()), bench.name)
    bench_page = replace_block(bench_page, bench_block, BENCH_BEGIN, BENCH_END)
    scale = newest_bench(args.store.parent, "scale")
    scale_block = render_scale(json.loads(scale.read_text()), scale.name)
    bench_page = replace_block(bench_page, scale_block, SCALE_BEGIN, SCALE_END)
    real = newest_bench(args.store.parent, "real")
    bench_page = replace_block(bench_page, render_real(json.loads(real.read_text()), real.name), REAL_BEGIN, REAL_END)
    for target, text in (
        (args.store, json.dumps(rows, indent=1) + "\n"),
        (args.results_page, results_page),
        (args.bench_page, bench_page),
    ):
        write_text_atomic(target, text)
    print(f"{len(rows)} runs -> {args.store}, {args.results_page} and {args.bench_page}")


if __name__ == "__main__":
    main()
