"""Where one batch's time goes on the real model (make bench, after the tiny models).

One batch of 10 CounterFact edits, memit_seq + blue, 25 target steps, on SmolLM2-135M
(``blue fetch smollm2-135m`` first; without it this says so and stops). Each variant edits
the same batch from the same weights: ``unsplit`` runs every position of every sequence in
each target step (blue before the split of models/split.py), ``split`` only the positions
from the subject's last token on. Prints seconds per phase and how far the two variants'
written updates differ, writes benchmarks/results/real-<timestamp>.json and renders it into
docs/benchmarks.md's real-model block.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"unsplit": ["method.target.reuse_past=false"], "split": []}


def time_batch(cfg, adapter, requests) -> tuple[dict, list]:
    """Edit one batch with a phase timer; returns the seconds per phase and the written residuals."""
    from blue_cli.editing.session import build_session

    session = build_session(cfg, adapter)
    phases: dict[str, float] = collections.defaultdict(float)

    @contextlib.contextmanager
    def timer(phase):
        start = time.perf_counter()
        yield
        phases[phase] += time.perf_counter() - start

    session.ctx.timer = timer
    start = time.perf_counter()
    trace = session.strategy.edit_batch(session.method, session.ctx, requests, session.critical)
    phases["edit_batch"] = time.perf_counter() - start
    steps = [s for t in trace.targets for s in t.steps]
    for layer, weight in session.originals.items():
        adapter.set_rewrite(layer, weight)
    return {**phases, "target_steps_total": sum(steps)}, [w.residual for w in trace.writes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=10)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from blue_cli.config.overrides import compose_config
    from blue_cli.datasets.counterfact.records import load_counterfact
    from blue_cli.errors import BlueError
    from blue_cli.runs.runner import load_adapter

    console = Console(width=160)
    base = [
        f"model={args.model}",
        "method=memit_seq",
        "strategy=blue",
        f"batch_size={args.batch_size}",
        "device=cpu",
        f"method.target.steps={args.steps}",
    ]
    try:
        cfg = compose_config(base)
        adapter = load_adapter(cfg)
    except BlueError as exc:
        console.print(f"real-model benchmark skipped: {exc}")
        return
    requests = load_counterfact(cfg.dataset.path, offset=cfg.dataset.offset, limit=args.batch_size)
    rows, residuals = {}, {}
    for name, extra in VARIANTS.items():
        rows[name], residuals[name] = time_batch(compose_config([*base, *extra]), adapter, requests)
        console.print(f"{name}: {json.dumps({k: round(v, 2) for k, v in rows[name].items()})}")
    difference = max(
        float((a - b).norm() / b.norm()) for a, b in zip(residuals["split"], residuals["unsplit"], strict=True)
    )
    import torch

    table = Table(title=f"{args.model}: one batch of {args.batch_size}, memit_seq + blue, {args.steps} target steps")
    phases = ["targets", "keys", "solves", "writes", "record", "edit_batch", "target_steps_total"]
    table.add_column("variant")
    for phase in phases:
        table.add_column(phase if phase != "edit_batch" else "batch (s)", justify="right")
    for name, row in rows.items():
        table.add_row(name, *[f"{row.get(p, 0.0):.2f}" if p != "target_steps_total" else str(row[p]) for p in phases])
    console.print(table)
    speedup = rows["unsplit"]["edit_batch"] / rows["split"]["edit_batch"]
    console.print(
        f"split / unsplit: {speedup:.2f}x faster per batch; written residuals differ by {difference:.1e} "
        f"(relative, largest layer); {torch.get_num_threads()} threads"
    )
    from blue_cli.cache import write_text_atomic

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"real-{time.strftime('%Y%m%d-%H%M%S')}.json"
    payload = {
        "model": args.model,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "speedup": speedup,
        "residual_difference": difference,
    }
    write_text_atomic(out, json.dumps(payload, indent=2))
    console.print(f"written {out}")
    rewrite_docs_block(payload, out.name)


def rewrite_docs_block(payload: dict, name: str) -> None:
    """docs/benchmarks.md's real-model block, rendered from the file just written."""
    from blue_cli.reporting.readme_results import REAL_BEGIN, REAL_END, render_real, rewrite_block

    rewrite_block(RESULTS.parent.parent / "docs" / "benchmarks.md", render_real(payload, name), REAL_BEGIN, REAL_END)


if __name__ == "__main__":
    main()
