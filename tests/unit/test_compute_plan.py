"""FLOPs by phase and time at a GPU's peak, from hand-counted products."""

from __future__ import annotations

from dataclasses import replace

import pytest

from blue_cli.errors import ConfigError
from blue_cli.tools.compute_plan import (
    GPUS,
    block_weights,
    forward_flops,
    gpu,
    head_flops,
    key_flops,
    phases,
    run_seconds,
    seconds_at_peak,
    solve_flops,
    target_flops,
)
from blue_cli.tools.memory_plan import RunFacts, Shape

SHAPE = Shape(
    family="llama",
    hidden_size=8,
    intermediate_size=20,
    n_layers=6,
    n_heads=4,
    n_kv_heads=2,
    vocab_size=100,
    n_params=1000,
)
FACTS = RunFacts(
    method="memit",
    strategy="blue",
    keep_previous_keys=True,
    critical=(1, 2, 3),
    written=(1, 3),
    target_layers=(1, 3),
    points=1,
    batch_size=4,
    chunk=4,
    num_edits=8,
    n_templates=6,
    prefix_tokens=10,
    model_dtype="bfloat16",
    state_dtype="float32",
    device="cuda",
    stats_max_length=64,
    stats_batch_tokens=128,
    stats_precision="float32",
    stats_samples=50,
    target_steps=5,
)


def test_block_weights_count_gqa_and_the_gated_mlp():
    # q and o: 8 x 8 each; k and v: 8 x 4 each (2 of 4 heads); gate, up, down: 8 x 20 each
    assert block_weights(SHAPE) == 2 * 64 + 2 * 32 + 3 * 160
    gpt2 = replace(SHAPE, family="gpt2", n_kv_heads=None)
    assert block_weights(gpt2) == 4 * 64 + 2 * 160


def test_forward_and_head():
    assert forward_flops(SHAPE, tokens=10, blocks=2, seq_len=5) == 10 * 2 * (2 * 672 + 4 * 5 * 8)
    assert head_flops(SHAPE, rows=3) == 2 * 3 * 8 * 100


def test_target_flops_reuse_the_prefix_once_per_batch():
    unsplit = replace(FACTS, reuse_past=False)
    seq = 10 + 2 + 16 + 4 - 1
    tokens = 4 * 7 * seq
    rows = 4 * (6 * 2 + 1)
    suffix = forward_flops(SHAPE, tokens, 4, seq) + head_flops(SHAPE, rows)  # layer 1 of 6: blocks 2..5
    prefix = forward_flops(SHAPE, tokens, 2, seq)
    initial = forward_flops(SHAPE, 4 * seq, 2, seq)  # the 4 plain prompts, to layer 1
    assert target_flops(SHAPE, unsplit, 1, 5) == 9 * suffix + prefix + initial  # 5 forwards, 4 backwards
    assert target_flops(SHAPE, unsplit, 1, 5, reuse_prefix=False) == 9 * suffix + 5 * prefix + initial
    pmet = replace(unsplit, points=2)  # attention and MLP of the layer itself are optimised too
    assert (
        target_flops(SHAPE, pmet, 1, 5)
        == 9 * (forward_flops(SHAPE, tokens, 5, seq) + head_flops(SHAPE, rows))
        + forward_flops(SHAPE, tokens, 1, seq)
        + initial
    )


def test_split_target_flops_run_only_the_positions_from_the_subject_on():
    """Split: the steps run 6 positions per sequence attending to 20 cached ones, after one
    forward of the cached positions through every block, and the plain prompts' forward."""
    seq, run, past = 27, 6, 20
    seqs = 4 * 7
    rows = 4 * (6 * 2 + 1)
    suffix = forward_flops(SHAPE, seqs * run, 4, past + run) + head_flops(SHAPE, rows)
    prefix = forward_flops(SHAPE, seqs * run, 2, past + run)
    cache = forward_flops(SHAPE, seqs * past, 6, past)
    initial = forward_flops(SHAPE, 4 * seq, 2, seq)
    planned = target_flops(SHAPE, FACTS, 1, 5, seq_len=seq, run_len=run, past_len=past)
    assert planned == 9 * suffix + prefix + cache + initial
    unsplit = target_flops(SHAPE, replace(FACTS, reuse_past=False), 1, 5, seq_len=seq)
    assert target_flops(SHAPE, FACTS, 1, 5, seq_len=seq, run_len=run, past_len=past) < unsplit


def test_solve_flops_per_method():
    dk, d, n = 20, 8, 4
    assert solve_flops(SHAPE, FACTS) == 2 * dk * dk * n + 2 * d * n * dk + dk**3 / 3 + 2 * dk * dk * n
    from blue_cli.config.registry import method_class

    alpha = replace(FACTS, method="alphaedit", solve_flops=method_class("alphaedit").solve_flops)
    assert solve_flops(SHAPE, alpha) == 2 * dk * dk * n + 2 * d * n * dk + 2 * dk**3 + 2 * dk**3 / 3 + 4 * dk * dk * n


def test_phases_use_the_peak_of_their_dtype():
    items = {p.name: p for p in phases(SHAPE, FACTS)}
    assert items["solves"].dtype == "float64" and items["solves"].flops == 2 * solve_flops(SHAPE, FACTS)
    assert items["target optimisation"].flops == target_flops(SHAPE, FACTS, 1, 5) + target_flops(SHAPE, FACTS, 3, 5)
    keys = key_flops(SHAPE, FACTS, 1) + 2 * key_flops(SHAPE, FACTS, 3)  # two writes + C_prev's keys to layer 3
    assert items["key collection"].flops == keys + 2 * forward_flops(SHAPE, 4 * 16, 4, 16)
    assert (
        items["statistics products"].flops == 2 * 2 * 20 * 20 * 1e8 and items["statistics products"].dtype == "float32"
    )  # per 100M tokens
    assert not items["statistics forward"].per_batch
    a40 = GPUS["a40"]
    assert seconds_at_peak(items["solves"], a40) == items["solves"].flops / 0.585e12
    assert seconds_at_peak(items["target optimisation"], a40) == items["target optimisation"].flops / 149.7e12
    edit, stats = run_seconds(list(items.values()), a40, batches=2)
    per_batch = sum(seconds_at_peak(p, a40) for p in items.values() if p.per_batch)
    assert edit == pytest.approx(2 * per_batch)
    assert stats == pytest.approx(
        items["statistics forward"].flops / 149.7e12 + items["statistics products"].flops / 37.4e12
    )


def test_unknown_gpu_is_one_line():
    with pytest.raises(ConfigError, match=r"unknown --gpu 'v100' \(choose: a40, a100, h100, h200\)"):
        gpu("v100")
    assert gpu("H100") is GPUS["h100"]


def test_blue_plan_gpu_prints_the_compute_and_the_json_carries_it():
    import json

    from typer.testing import CliRunner

    from blue_cli.cli.commands import app

    args = [
        "plan",
        "model=llama3",
        "method=alphaedit",
        "strategy=spread",
        "batch_size=100",
        "num_edits=2000",
        "--gpu-memory",
        "48GB",
    ]
    result = CliRunner().invoke(app, [*args, "--gpu", "a40", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    compute = plan["compute"]
    assert compute["gpu"] == "NVIDIA A40" and compute["batches"] == 20
    by_name = {p["name"]: p for p in compute["phases"]}
    assert (
        by_name["solves"]["dtype"] == "float64" and by_name["statistics products"]["dtype"] == "float32"
    )  # auto on CUDA
    per_batch = sum(p["seconds_at_peak"] for p in compute["phases"] if p["per_batch"])
    assert compute["edit_seconds_at_peak"] == pytest.approx(20 * per_batch)
    assert plan["fits"] is True
    disk = {i["name"]: i["bytes"] for i in plan["items"] if i["phase"] == "disk"}
    assert disk["checkpoint (one file, rewritten each batch)"] < 1e9  # issue 10's goal for a 2000-edit Llama3 run
    text = CliRunner().invoke(app, [*args, "--gpu", "h100"])
    assert text.exit_code == 0 and "at peak on an NVIDIA H100 SXM: at least" in text.output
    bad = CliRunner().invoke(app, [*args, "--gpu", "v100"])
    assert bad.exit_code == 2 and "unknown --gpu 'v100'" in bad.output and "Traceback" not in bad.output
