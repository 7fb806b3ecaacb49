"""Speed and quality of every method x strategy on the tiny models (make bench).

Each combination runs in its own process (so peak memory is its own): 100
CounterFact records in batches of 10 by default. Prints a table and writes
benchmarks/results/bench-<timestamp>.json. Last runs repeat MEMIT_seq under both strategies
with one-request-at-a-time target optimisation, to print the batching speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("memit", "memit_seq", "alphaedit", "pmet", "pmet_seq", "rect", "prune")
STRATEGIES = ("spread", "blue")
RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = (
    "model",
    "method",
    "strategy",
    "variant",
    "sec_per_batch",
    "gflop_per_batch",
    "cov_sec",
    "peak_mb",
    "efficacy",
    "generalization",
    "specificity",
    "target_logprob_gain",
    "write_error",
)
VARIANTS = {
    "batched": [],
    "one-at-a-time": ["method.target.batched=false"],
    "reference-schedule": [
        "method.target.batched=false",
        "method.target.reuse_prefix=false",
        "method.target.reuse_past=false",
    ],
}


def first_batch_flops(cfg) -> float:
    """FLOPs of editing the first batch (targets, keys, solves), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    from blue_cli.datasets.counterfact.records import load_counterfact
    from blue_cli.editing.session import build_session
    from blue_cli.runs.runner import load_adapter

    adapter = load_adapter(cfg)
    requests = load_counterfact(cfg.dataset.path, offset=cfg.dataset.offset, limit=cfg.batch_size)
    session = build_session(cfg, adapter)
    counter = FlopCounterMode(display=False)
    with counter:
        session.strategy.edit_batch(session.method, session.ctx, requests, session.critical)
    return counter.get_total_flops()


def run_one(overrides: list[str]) -> dict:
    """Child process: one experiment; returns its summary plus peak memory."""
    import torch

    from blue_cli.config.overrides import compose_config
    from blue_cli.runs.runner import run_experiment

    cfg = compose_config(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_experiment(cfg, Path(tmp))
        batches = [json.loads(line) for line in (Path(tmp) / "batches.jsonl").read_text().splitlines()]
    if torch.cuda.is_available():
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary["peak_mb"] = peak_mb
    summary["sec_per_batch"] = statistics.median(b["edit_seconds"] for b in batches)
    summary["gflop_per_batch"] = first_batch_flops(cfg) / 1e9
    return summary


def spawn(overrides: list[str]) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(overrides)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run failed for {overrides}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="tiny-gpt2,tiny-llama")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--num-edits", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--variant-edits", type=int, default=20, help="records for the one-at-a-time variants (slow)")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child)), default=float))
        return

    from rich.console import Console
    from rich.table import Table

    rows = []
    plan = [
        (m, me, s, "batched")
        for m in args.models.split(",")
        for me in args.methods.split(",")
        for s in args.strategies.split(",")
    ]
    first = args.models.split(",")[0]
    plan += [(first, "memit_seq", s, v) for s in ("spread", "blue") for v in ("one-at-a-time", "reference-schedule")]
    for model, method, strategy, variant in plan:
        edits = args.num_edits if variant == "batched" else args.variant_edits
        overrides = [
            f"model={model}",
            f"method={method}",
            f"strategy={strategy}",
            f"num_edits={edits}",
            f"batch_size={args.batch_size}",
            "device=auto",
            *VARIANTS[variant],
        ]
        start = time.perf_counter()
        s = spawn(overrides)
        row = {
            "model": model,
            "method": method,
            "strategy": strategy,
            "variant": variant,
            "sec_per_batch": s["sec_per_batch"],
            "gflop_per_batch": s["gflop_per_batch"],
            "cov_sec": s["covariance_seconds"],
            "peak_mb": s["peak_mb"],
            **{k: s[k] for k in COLUMNS[7:]},
            "wall_sec": time.perf_counter() - start,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    def pick(strategy, variant):
        return next(
            r
            for r in rows
            if r["model"] == first
            and r["method"] == "memit_seq"
            and r["strategy"] == strategy
            and r["variant"] == variant
        )

    ratios = {
        strategy: {
            "batching_speedup": pick(strategy, "one-at-a-time")["sec_per_batch"]
            / pick(strategy, "batched")["sec_per_batch"],
            "reference_over_ours_seconds": pick(strategy, "reference-schedule")["sec_per_batch"]
            / pick(strategy, "batched")["sec_per_batch"],
            "reference_over_ours_flops": pick(strategy, "reference-schedule")["gflop_per_batch"]
            / pick(strategy, "batched")["gflop_per_batch"],
        }
        for strategy in ("spread", "blue")
    }

    table = Table(title=f"{args.num_edits} CounterFact edits, batches of {args.batch_size}")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col not in ("model", "method", "strategy", "variant") else "left")
    for r in rows:
        table.add_row(*[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS])
    console = Console(width=220)
    console.print(table)
    for strategy, r in ratios.items():
        console.print(
            f"MEMIT_seq+{strategy} on {first}: batching speed-up {r['batching_speedup']:.2f}x; "
            "reference schedule costs "
            f"{r['reference_over_ours_seconds']:.2f}x the seconds and {r['reference_over_ours_flops']:.2f}x the FLOPs"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(
            {"rows": rows, "ratios": ratios, "num_edits": args.num_edits, "batch_size": args.batch_size}, indent=2
        )
    )
    os.replace(tmp, out)
    console.print(f"written {out}")


if __name__ == "__main__":
    main()
