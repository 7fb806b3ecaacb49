"""One prepared GPU check (make gpu-check): the full Llama3-8B shape on one CUDA device, in
about 8 minutes on an H200-class GPU. Random bf16 weights, no download.

1. bench_scale's ways at batch 100 and batch 1 (blue schedule with the direct and the updated
   solver, the reference schedule), ``--steps`` target steps, and the updated solver's accuracy
   (20 batches of 100, 300 batches of 1) against the direct float64 solve;
2. the updated solver with ``method.offload_state`` (factor and keys in host memory) on one
   batch of 100: seconds and peak memory beside the resident run's;
3. statistics with float32 and with float64 key products on CUDA: C's relative difference and
   the difference of the Deltas they give;
4. the measured peak memory of the batch-100 updated run against ``blue plan`` for the same
   run (strategy spread, batch 100, float32 state).

Writes benchmarks/results/gpu-check-<device>-<time>.json; scripts/solver_docs.py renders its
block in docs/solver.md from the newest such file.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "benchmarks" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def statistics_precision(bench, adapter, layer: int, windows: int, length: int) -> dict:
    """C from the same windows with float32 and float64 key products; their relative difference
    and that of MEMIT Deltas solved with each (the same random keys and residuals)."""
    from blue_cli.config.schema import StatsConfig
    from blue_cli.editing.linalg import memit_update
    from blue_cli.editing.statistics.corpus import load_corpus
    from blue_cli.editing.statistics.store import accumulate_second_moments, token_windows

    chunks = token_windows(adapter.tok, load_corpus("wikitext-bundled", max_docs=windows * 4), length, windows)
    C, seconds = {}, {}
    for precision in ("float32", "float64"):
        bench.sync()
        start = time.perf_counter()
        moments, _ = accumulate_second_moments(
            adapter, chunks, [layer], StatsConfig(max_length=length, batch_tokens=length, precision=precision)
        )
        bench.sync()
        seconds[precision] = round(time.perf_counter() - start, 3)
        M = moments[layer].to(torch.float64)
        C[precision] = M + 1e-3 * M.diagonal().mean() * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
    g = torch.Generator(device="cpu").manual_seed(0)
    K = torch.randn(C["float64"].shape[0], 100, generator=g, dtype=torch.float64).to(C["float64"].device)
    R = torch.randn(adapter.hidden_size, 100, generator=g, dtype=torch.float64).to(K.device)
    deltas = {p: memit_update(K, R, C[p], 15000.0) for p in C}
    return {
        "windows": windows,
        "window_length": length,
        "seconds": seconds,
        "C_relative_difference": float((C["float32"] - C["float64"]).norm() / C["float64"].norm()),
        "delta_relative_difference": float((deltas["float32"] - deltas["float64"]).norm() / deltas["float64"].norm()),
    }


def planned_peak(batch_size: int, strategy: str, method: str) -> dict:
    from blue_cli.config.overrides import compose_config
    from blue_cli.tools.memory_plan import plan_for_config

    cfg = compose_config(
        ["model=llama3", f"method={method}", f"strategy={strategy}", f"batch_size={batch_size}", "stats.samples=100"]
    )
    plan = plan_for_config(cfg)
    return {"edit_peak_bytes": plan.edit_peak, "solver": plan.facts["solver"], "chunk": plan.facts["chunk"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="target optimisation steps (10: fits 8 minutes)")
    parser.add_argument("--method", default="memit")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("make gpu-check needs a CUDA device (none found)")
    bench = _bench()
    t0 = time.perf_counter()
    build_args = argparse.Namespace(model="llama3-8b", layers=None, method=args.method, batch_size=100)
    cfg, adapter, critical, info = bench.build(build_args)
    from blue_cli.datasets.counterfact.records import load_counterfact

    requests = load_counterfact("bundled", limit=300)
    timer = bench.Timer()
    moments, tokens = bench.covariance(adapter, sorted(set(critical)), 4, 256, timer)
    stats = bench.FixedStats(moments)
    runs = {}
    for size, count in ((100, 1), (1, 5)):
        for way in bench.WAYS:
            torch.cuda.reset_peak_memory_stats()
            key = f"batch{size}/spread/{way}"
            runs[key] = bench.edit_sequence(
                cfg, adapter, critical, requests, stats, way, "spread", size, count, args.steps
            )
            runs[key]["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
            print(json.dumps({key: runs[key]}), flush=True)
    torch.cuda.reset_peak_memory_stats()
    offload = bench.edit_sequence(
        cfg, adapter, critical, requests, stats, "updated", "spread", 100, 1, args.steps, ("method.offload_state=true",)
    )
    offload["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    print(json.dumps({"offload_state": offload}), flush=True)
    accuracy = []
    accuracy_cfg = cfg.copy()
    accuracy_cfg.method.name = "memit_seq"
    for batches, size in ((20, 100), (300, 1)):
        result = bench.solver_accuracy(accuracy_cfg, stats, critical[0], info["hidden_size"], (batches, size), 3)
        result["method"] = "memit_seq"
        accuracy.append(result)
        print(json.dumps({"accuracy": result}), flush=True)
    precision = statistics_precision(bench, adapter, critical[0], 4, 256)
    print(json.dumps({"statistics_precision": precision}), flush=True)
    plan = planned_peak(100, "spread", args.method)
    measured = runs["batch100/spread/updated"]["peak_memory_bytes"]
    device = torch.cuda.get_device_name(0)
    result = {
        "device": device,
        "torch": torch.__version__,
        "method": args.method,
        "target_steps": args.steps,
        "model": info,
        "covariance_tokens": tokens,
        "runs": runs,
        "offload_state": offload,
        "accuracy": accuracy,
        "statistics_precision": precision,
        "plan": {
            **plan,
            "measured_peak_bytes": measured,
            "measured_over_planned": round(measured / plan["edit_peak_bytes"], 3),
        },
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
    out = bench.RESULTS / f"gpu-check-{slug}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(f"written {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
