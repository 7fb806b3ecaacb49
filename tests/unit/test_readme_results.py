"""The docs' measured tables are the rendering of stored run summaries, not typed numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blue_cli.reporting.readme_results import (
    BEGIN,
    BENCH_BEGIN,
    BENCH_END,
    END,
    REAL_BEGIN,
    REAL_END,
    SCALE_BEGIN,
    SCALE_END,
    collect,
    current_block,
    newest_bench,
    render,
    render_bench,
    render_real,
    render_scale,
    replace_block,
)

REPO = Path(__file__).resolve().parents[2]


def _summary(tmp_path, name, **values):
    run = tmp_path / name
    run.mkdir()
    base = {
        "model": "m",
        "method": "memit",
        "strategy": "blue",
        "dataset": "counterfact",
        "num_edits": 4,
        "batch_size": 2,
        "efficacy": 0.5,
        "generalization": 0.25,
        "specificity": 0.75,
        "pre_efficacy": 0.0,
        "pre_generalization": 0.125,
        "pre_specificity": 0.875,
        "target_logprob_gain": 1.234,
        "write_error": 0.4,
        "seconds_per_batch": 1.0,
        "fluency": 5.5,
        "pre_fluency": 5.75,
        "edit_seconds": 2.0,
        "evaluation_seconds": 3.0,
    }
    base.update(values)
    (run / "summary.json").write_text(json.dumps(base))
    return run


def test_render_puts_spread_and_blue_of_one_method_on_one_line(tmp_path):
    rows = collect([_summary(tmp_path, "a", strategy="spread", efficacy=0.125), _summary(tmp_path, "b")])
    lines = render(rows).splitlines()
    assert "| m | blue | 2.0 | 3.0 | 1.50× | 5.75 → 5.50 |" in lines
    assert (
        lines[4]
        == "| m | memit | 0.125 / 0.250 / 0.750 / 1.23 | 0.500 / 0.250 / 0.750 / 1.23 | 0.000 / 0.125 / 0.875 |"
    )
    assert "4 edits in batches of 2" in lines[0]


def test_replace_block_keeps_the_rest_of_the_text():
    text = f"intro\n{BEGIN}\nold\n{END}\noutro\n"
    assert replace_block(text, "new") == f"intro\n{BEGIN}\nnew\n{END}\noutro\n"
    with pytest.raises(ValueError):
        replace_block("no markers", "x")


def test_docs_results_block_is_the_rendering_of_the_stored_runs():
    rows = json.loads((REPO / "benchmarks" / "results" / "readme-runs.json").read_text())
    assert current_block((REPO / "docs" / "tiny-models.md").read_text(encoding="utf-8")) == render(rows)


def test_docs_speed_table_is_the_rendering_of_the_newest_bench_file():
    bench = newest_bench(REPO / "benchmarks" / "results")
    block = current_block((REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8"), BENCH_BEGIN, BENCH_END)
    assert block == render_bench(json.loads(bench.read_text()), bench.name)


def test_render_bench_reads_the_ratios():
    rows = [
        {"model": "m", "method": "x", "strategy": s, "variant": v, "sec_per_batch": t}
        for s, v, t in (("spread", "batched", 1.0), ("blue", "batched", 2.5), ("spread", "one-at-a-time", 2.0))
    ]
    ratios = {
        s: {"batching_speedup": 2.0, "reference_over_ours_seconds": 3.0, "reference_over_ours_flops": 1.5}
        for s in ("spread", "blue")
    }
    text = render_bench({"rows": rows, "ratios": ratios, "batch_size": 10}, "bench-x.json")
    assert "| seconds per batch, ours | 1.00 | 2.50 |" in text
    assert "| reference schedule (×, seconds / FLOPs) | 3.00× / 1.50× | 3.00× / 1.50× |" in text


def test_render_scale_reads_the_phases_and_ratios():
    scale = {
        "device": "cpu",
        "threads": 2,
        "batch_size": 4,
        "method": "memit",
        "target_steps": 5,
        "model": {
            "model": "llama3-8b",
            "n_layers": 2,
            "of_layers": 32,
            "vocab": 4096,
            "real_vocab": 128256,
            "hidden_size": 4096,
            "d_k": 14336,
            "dtype": "float32",
            "critical_layers": [0],
        },
        "covariance": {"tokens": 1024, "layers": [0], "tokens_per_second": 14.5},
        "seconds": {
            "blue/blue": {"targets": 10.0, "keys": 1.0, "solves": 2.0, "writes": 0.5, "diagnostics": 3.0, "edit": 13.5},
            "blue/reference": {
                "targets": 30.0,
                "keys": 1.0,
                "solves": 2.0,
                "writes": 0.5,
                "diagnostics": 3.0,
                "edit": 33.5,
            },
        },
        "reference_over_blue": {"blue": {"targets": 3.0, "edit": 2.48}},
        "peak_memory_bytes": 11.5e9,
        "peak_memory_kind": "max RSS",
    }
    text = render_scale(scale, "scale-cpu-x.json")
    assert "2-layer slice of llama3-8b (d=4096, d_k=14336, vocabulary 4096 of 128256, float32)" in text
    assert "| phase (seconds) | blue, blue schedule | blue, reference schedule |" in text
    assert "| target optimisation | 10.0 | 30.0 |" in text and "| whole edit | 13.5 | 33.5 |" in text
    assert (
        "14.5 tokens/s" in text
        and "peak memory 11.5 GB (max RSS)" in text
        and "blue: targets 3.00×, edit 2.48×" in text
    )


def test_docs_scale_table_is_the_rendering_of_the_newest_scale_file():
    scale = newest_bench(REPO / "benchmarks" / "results", "scale")
    block = current_block((REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8"), SCALE_BEGIN, SCALE_END)
    assert block == render_scale(json.loads(scale.read_text()), scale.name)


def test_newest_bench_orders_by_the_time_in_the_name(tmp_path):
    for name in (
        "scale-cpu-20261129-191841.json",
        "scale-cuda-h200-20261128-235959.json",
        "scale-cpu-20261129-091841.json",
    ):
        (tmp_path / name).write_text("{}")
    assert newest_bench(tmp_path, "scale").name == "scale-cpu-20261129-191841.json"


def test_render_real_reads_the_phases_and_the_ratio():
    row = {"targets": 10.0, "keys": 1.0, "solves": 0.5, "edit_batch": 12.0, "target_steps_total": 300}
    real = {
        "model": "m",
        "batch_size": 10,
        "steps": 25,
        "threads": 2,
        "rows": {"unsplit": {**row, "edit_batch": 30.0}, "split": row},
        "speedup": 2.5,
        "residual_difference": 3e-6,
    }
    text = render_real(real, "real-x.json")
    assert "| whole edit | 30.0 | 12.0 |" in text and "| target optimisation | 10.0 | 10.0 |" in text
    assert "2.50× faster per batch" in text and "3.0e-06" in text


def test_docs_real_model_table_is_the_rendering_of_the_newest_real_file():
    real = newest_bench(REPO / "benchmarks" / "results", "real")
    block = current_block((REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8"), REAL_BEGIN, REAL_END)
    assert block == render_real(json.loads(real.read_text()), real.name)
