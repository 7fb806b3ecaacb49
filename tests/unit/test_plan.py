"""The plan's arithmetic against bytes computed by hand for a made-up shape, and its inputs."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest

from blue_cli.config.overrides import compose_config
from blue_cli.config.registry import method_class
from blue_cli.errors import ConfigError
from blue_cli.tools.memory_plan import (
    RunFacts,
    Shape,
    largest_chunk,
    make_plan,
    model_shape,
    parse_size,
    plan_for_config,
    run_facts,
)

SHAPE = Shape(
    family="llama", hidden_size=10, intermediate_size=20, n_layers=6, n_heads=2, vocab_size=100, n_params=1000
)
ALPHAEDIT = method_class("alphaedit")
FACTS = RunFacts(
    method="alphaedit",
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
    model_dtype="float16",
    state_dtype="float64",
    device="cuda",
    stats_max_length=64,
    stats_batch_tokens=128,
    state_matrices=ALPHAEDIT.state_matrices,
    solve_matrices=ALPHAEDIT.solve_matrices,
    solve_flops=ALPHAEDIT.solve_flops,
    reuse_past=False,  # the hand counts below: every position every step (the split: its own test)
)


def by_name(plan):
    return {i.name: i.bytes for i in plan.items}


def test_every_item_by_hand():
    b = by_name(make_plan(SHAPE, FACTS))
    assert b["model weights"] == 1000 * 2 + 2 * (10 * 20) * 2  # fp16 params + written matrices raised to float32
    assert b["projector P"] == 2 * 20 * 20 * 8
    assert b["C_prev"] == 2 * 20 * 20 * 8
    assert "statistics C" not in b  # AlphaEdit keeps P, not C
    assert b["written-matrix copies"] == 2 * 2 * 10 * 20 * 4
    assert b["solve temporaries"] == 3 * 20 * 20 * 8
    # 4 requests x 7 sequences x (10 + 2 + 16 + 4 - 1 = 31) tokens; from layer 1: 4 blocks + 1 transient;
    # per block: fp16 (4 h + 3 d_k) + 2 float32 norm inputs; outside: 3 h fp16.
    per_block = 2 * (4 * 10 + 3 * 20) + 2 * 10 * 4
    assert b["activations"] == 4 * 7 * 31 * (per_block * 5 + 3 * 10 * 2)
    # 4 x (6 templates x 2 target tokens + 1 KL row) = 52 rows of (fp16 + float32 + log-softmax + grad), + KL init
    assert b["logits"] == 100 * (52 * (2 + 4 + 4 + 4) + 4 * 4)
    assert b["C accumulators"] == 2 * 400 * 8
    assert b["C update temporaries"] == 400 * 12
    assert b["captured keys"] == 128 * 20 * (2 * 2 + 4)
    # 2 batches x 2 writes x a d x 4 float32 residual; per batch a row and 2 fingerprints (no weights, no keys)
    assert b["checkpoint (one file, rewritten each batch)"] == 2 * 2 * 10 * 4 * 4 + 2 * (400 + 2 * 120)
    assert b["per-case JSONL"] == 8 * 1000


def b_ckpt(facts):
    return 2 * len(facts.written) * 10 * facts.batch_size * 4 + 2 * (400 + len(facts.written) * 120)


def test_peaks_and_fit():
    plan = make_plan(SHAPE, FACTS, budget=40_000)
    resident = 2800 + 6400 + 6400 + 3200  # weights, P, C_prev, 2 copies of the written matrices
    assert plan.phase_peak("solve") == resident + 9600  # 3 float64 20 x 20 solve temporaries
    assert plan.phase_peak("statistics") == resident + 6400 + 4800 + 20480
    assert plan.peak == plan.phase_peak("targets") == resident + 1_267_280 + 74_400
    assert plan.fits is False
    assert make_plan(SHAPE, FACTS, budget=plan.peak).fits is True


def test_float32_state_and_non_sequential_memit(tmp_path):
    cfg = ["model=llama3", "method=alphaedit", "method.state_dtype=float32"]
    half = run_facts(compose_config(cfg))
    assert half.solve_matrices == 4  # P is raised to float64 for the solve
    half = by_name(make_plan(SHAPE, replace(FACTS, state_dtype="float32", solve_matrices=half.solve_matrices)))
    assert half["projector P"] == half["C_prev"] == 2 * 400 * 4
    assert half["solve temporaries"] == 4 * 400 * 8
    memit_facts = run_facts(compose_config(["model=llama3", "method=memit", "method.state_dtype=float32"]))
    assert memit_facts.solve_matrices == 3 and memit_facts.state_matrices == ("statistics C",)
    memit = by_name(
        make_plan(
            SHAPE,
            replace(
                FACTS,
                method="memit",
                keep_previous_keys=False,
                state_matrices=memit_facts.state_matrices,
                solve_matrices=memit_facts.solve_matrices,
            ),
        )
    )
    assert memit["statistics C"] == 2 * 400 * 8 and "C_prev" not in memit
    assert memit["solve temporaries"] == 3 * 400 * 8
    assert memit["checkpoint (one file, rewritten each batch)"] == b_ckpt(
        FACTS
    )  # the same residuals, sequential or not


def test_chunks_shrink_activations_and_the_largest_fitting_chunk():
    full = make_plan(SHAPE, FACTS)
    one = make_plan(SHAPE, replace(FACTS, chunk=1))
    assert by_name(one)["activations"] * 4 == by_name(full)["activations"]
    budget = make_plan(SHAPE, replace(FACTS, chunk=2)).edit_peak
    assert largest_chunk(SHAPE, FACTS, budget) == 2
    assert largest_chunk(SHAPE, FACTS, 10) == 0


def test_pmet_backprops_through_the_target_block_too():
    pmet = by_name(make_plan(SHAPE, replace(FACTS, method="pmet", points=2, target_layers=(3,))))
    base = by_name(make_plan(SHAPE, replace(FACTS, target_layers=(3,))))
    per_block_tokens = 4 * 7 * 31 * (2 * (4 * 10 + 3 * 20) + 2 * 10 * 4)
    assert pmet["activations"] - base["activations"] == per_block_tokens


def test_split_target_steps_keep_activations_of_the_run_positions_and_the_cached_keys():
    """Split at the subject: activations of 8 run positions (RUN_TOKENS) instead of 31, plus every
    block's keys and values of the 31 cached positions (the padded length bounds them) and the
    concatenated ones of the 4 blocks after layer 1: keys and values (2) x width 10 (no GQA) x
    2 bytes (fp16) x 28 sequences per position."""
    unsplit = by_name(make_plan(SHAPE, FACTS))
    split = by_name(make_plan(SHAPE, replace(FACTS, reuse_past=True)))
    assert split["activations"] * 31 == unsplit["activations"] * 8
    assert split["cached keys and values"] == 2 * 10 * 2 * 4 * 7 * (6 * 31 + 4 * (31 + 8))
    assert "cached keys and values" not in unsplit


@pytest.mark.parametrize(
    "text,expected", [("48GB", 48e9), ("48", 48e9), ("80GiB", 80 * 2**30), ("24000MB", 24e9), ("1.5 TB", 1.5e12)]
)
def test_parse_size(text, expected):
    assert parse_size(text) == int(expected)


@pytest.mark.parametrize("text", ["48XB", "", "-3GB", "0GB", "GB"])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError, match="bad memory size"):
        parse_size(text)


def test_run_facts_from_the_composed_config():
    spread = run_facts(compose_config(["model=llama3", "method=alphaedit", "strategy=spread", "batch_size=100"]))
    assert spread.written == (4, 5, 6, 7, 8) and spread.target_layers == (8,)
    assert (
        spread.model_dtype == "float16"
        and spread.state_dtype == "float32"
        and spread.chunk == 100
        and spread.keep_previous_keys
    )
    blue = run_facts(compose_config(["model=llama3", "method=alphaedit", "strategy=blue"]))
    assert blue.written == (4, 8) and blue.target_layers == (4, 8)
    ref = run_facts(compose_config(["method.target.batched=false", "device=cpu"]))
    assert ref.chunk == 1 and ref.model_dtype == "float32" and ref.device == "cpu" and ref.state_dtype == "float64"
    assert run_facts(compose_config(["method=pmet"])).points == 2


def test_llama3_alphaedit_spread_fits_48gb_with_float32_state_and_target_chunks():
    """The issue's numbers: 5 written layers x (P + C_prev) at 1.64 GB each in float64, ~80 GB
    of activations at batch 100 in one chunk; float32 state (the CUDA default) and chunks fit."""
    base = ["model=llama3", "method=alphaedit", "strategy=spread", "batch_size=100", "num_edits=2000"]
    updated = plan_for_config(compose_config(base), budget=48_000_000_000)
    b = by_name(updated)
    assert updated.facts["solver"] == "updated" and updated.fits is True
    # the updated solver keeps P and the 2000 recorded keys (U = P K, V = K, G = B^{-1} U and the
    # 2000 x 2000 capacitance inverse), no C_prev; 2000 < d_k / 4 keys: l2 I needs no factorisation
    assert b["projector P (updated solver)"] == 5 * 14336**2 * 4
    assert b["recorded keys (updated solver)"] == 5 * 8 * (3 * 14336 * 2000 + 2000**2)
    assert "C_prev" not in b and "solver factorisation (updated solver)" not in b
    base.append("method.solver=direct")
    unsplit = ["method.target.reuse_past=false"]  # every position every step, as when these numbers were set
    whole = plan_for_config(
        compose_config([*base, *unsplit, "method.state_dtype=float64", "method.target.chunk=100"]),
        budget=48_000_000_000,
    )
    b = by_name(whole)
    assert b["projector P"] == b["C_prev"] == 5 * 14336**2 * 8
    assert 60e9 < b["activations"] < 110e9
    assert whole.fits is False
    auto = plan_for_config(compose_config(base), budget=48_000_000_000)
    b = by_name(auto)
    assert b["projector P"] == b["C_prev"] == 5 * 14336**2 * 4
    assert auto.fits is True
    # the goal, a 2000-edit Llama3 checkpoint under 1 GB: 20 batches x 5 residuals of 4096 x 100 float32
    assert b["checkpoint (one file, rewritten each batch)"] == 20 * 5 * 4096 * 100 * 4 + 20 * (400 + 5 * 120) < 1e9


def test_model_shape_errors_and_tiny_config():
    cfg = compose_config(["model=tiny-gptj"])
    shape = model_shape(cfg.model)
    assert (shape.family, shape.hidden_size, shape.intermediate_size, shape.n_layers, shape.vocab_size) == (
        "gptj",
        128,
        512,
        6,
        4096,
    )
    cfg.model.source = "nowhere/model"
    with pytest.raises(ConfigError, match="no shape facts"):
        model_shape(cfg.model)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-qwen2"])
def test_tiny_parameter_count_matches_the_model(name, load_tiny):
    adapter = load_tiny(name)
    assert model_shape(compose_config([f"model={name}"]).model).n_params == sum(
        p.numel() for p in adapter.model.parameters()
    )


def _bench():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scale.py"
    spec = importlib.util.spec_from_file_location("bench_scale", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["gpt2", "gpt2-xl", "gpt-j", "llama3", "llama2-13b", "qwen2.5"])
def test_yaml_shape_rebuilds_the_public_parameter_count(name):
    """The shape facts rebuild (on the meta device, no memory) a model with the YAML's n_params."""
    import torch
    from transformers import AutoModelForCausalLM

    shape = model_shape(compose_config([f"model={name}"]).model)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_bench().hf_config(shape, shape.n_layers, shape.vocab_size))
    model.tie_weights()  # transformers 5.0 leaves tied embeddings untied on the meta device
    assert sum(p.numel() for p in model.parameters()) == shape.n_params
    assert model.get_output_embeddings().weight.shape[0] == shape.vocab_size


def test_the_plan_follows_a_new_methods_and_strategys_declarations(monkeypatch):
    """A method and a strategy added in this test (registered, with a YAML-free config):
    the plan counts what they declare, never what their names suggest."""
    from omegaconf import OmegaConf

    from blue_cli.config import registry
    from blue_cli.editing.methods.base import EditMethod
    from blue_cli.editing.strategies.base import Strategy
    from blue_cli.tools.compute_plan import solve_flops

    class ThreeState(EditMethod):
        updated_solver = True
        state_matrices = ("A", "B", "C")
        solve_matrices = 7
        solve_upcasts_state = True
        points = ("attn", "mlp", "block")
        updated_state_matrices = ("A",)
        symmetric_system = False
        updated_solve_matrices = 5

        @staticmethod
        def solve_flops(d, dk, n):
            return 123.0 * d + dk + n

        @staticmethod
        def updated_solve_flops(d, dk, n):
            return 7.0 * d + dk + n

    class Middle(Strategy):
        def written_layers(self, critical):
            return [critical[len(critical) // 2]]

        def target_layers(self, critical):
            return [critical[0]]

    monkeypatch.setitem(registry.METHODS, "throwaway", ThreeState)
    monkeypatch.setitem(registry.STRATEGIES, "middle", Middle)
    cfg = compose_config(["model=llama3", "method=memit", "strategy=blue"])
    cfg.method.name, cfg.strategy.name = "throwaway", "middle"
    cfg.method.solver = "direct"
    facts = run_facts(cfg)
    assert facts.written == (6,) and facts.target_layers == (4,) and facts.points == 3
    assert facts.solve_matrices == 7 + 1  # float32 state on CUDA, upcast by the solve
    plan = by_name(make_plan(SHAPE, replace(facts, critical=(1, 2, 3), written=(2,), target_layers=(1,))))
    assert plan["A"] == plan["B"] == plan["C"] == 20 * 20 * 4
    assert "statistics C" not in plan and "projector P" not in plan
    assert plan["solve temporaries"] == 8 * 20 * 20 * 8
    assert solve_flops(SHAPE, facts) == 123.0 * 10 + 20 + facts.batch_size
    assert OmegaConf.is_config(cfg)
    cfg.method.solver = "updated"
    updated = run_facts(cfg)
    plan = by_name(make_plan(SHAPE, replace(updated, critical=(1, 2, 3), written=(2,), target_layers=(1,))))
    assert plan["A (updated solver)"] == 20 * 20 * 4 and "B" not in plan and "C_prev" not in plan
    assert plan["solver factorisation (updated solver)"] == 2 * 20 * 20 * 8  # not symmetric: B and its LU
    assert "recorded keys (updated solver)" not in plan  # memit's keep_previous_keys: false
    assert plan["solve temporaries"] == 5 * 20 * 20 * 8
    assert solve_flops(SHAPE, updated) == 7.0 * 10 + 20 + updated.batch_size
    # a method that does not declare the updated solver is planned direct under auto
    monkeypatch.setattr(ThreeState, "updated_solver", False)
    cfg.method.solver = "auto"
    assert run_facts(cfg).solver == "direct"
