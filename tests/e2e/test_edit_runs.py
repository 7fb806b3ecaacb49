"""Issue 2's acceptance runs: 40 CounterFact edits in batches of 10, both strategies."""

import json

import pytest

from tests.e2e.conftest import run_blue, summary_of

CASES = [(m, s) for m in ("tiny-gpt2", "tiny-llama") for s in ("spread", "blue")]
# What MEMIT_seq reliably reaches (measured, seed 0, CPU: 0.25 / 0.425 on tiny-gpt2 and
# 0.325 / 0.70 on tiny-llama) less a margin; pre-edit efficacy is 0.00 on all of them.
FLOOR = {
    ("tiny-gpt2", "spread"): (0.2, 1.5),
    ("tiny-gpt2", "blue"): (0.35, 2.0),
    ("tiny-llama", "spread"): (0.25, 2.8),
    ("tiny-llama", "blue"): (0.6, 4.0),
}


@pytest.mark.parametrize("model,strategy", CASES)
def test_edit_improves_efficacy_and_target_logprob(edit_runs, model, strategy):
    s = summary_of(edit_runs[(model, strategy)])
    print(
        json.dumps(
            {k: s[k] for k in ("efficacy", "generalization", "specificity", "target_logprob_gain", "write_error")}
        )
    )
    efficacy, gain = FLOOR[(model, strategy)]
    assert s["pre_efficacy"] == 0.0
    assert s["efficacy"] >= efficacy
    assert s["target_logprob_gain"] >= gain
    assert s["specificity"] >= s["pre_specificity"] - 0.15  # edits leave most neighbours alone
    assert s["written_layers"] == ([1, 3] if strategy == "blue" else [1, 2, 3])


def test_memit_seq_reproduces_the_numbers_of_issue_2(edit_runs):
    """MEMIT_seq (then called memit) on tiny-gpt2: 0.25/0.125/0.745 spread, 0.425/0.2875/0.6725 blue;
    within one case of efficacy and two prompts of generalisation, for another CPU's rounding."""
    expected = {"spread": (0.25, 0.125, 0.745), "blue": (0.425, 0.2875, 0.6725)}
    for strategy, rates in expected.items():
        s = summary_of(edit_runs[("tiny-gpt2", strategy)])
        got = (s["efficacy"], s["generalization"], s["specificity"])
        assert got == pytest.approx(rates, abs=0.026), (strategy, got)


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_blue_beats_spread_on_efficacy_and_generalization(edit_runs, model):
    """The paper's direction, which both tiny models show by a wide margin."""
    spread, blue = summary_of(edit_runs[(model, "spread")]), summary_of(edit_runs[(model, "blue")])
    assert blue["efficacy"] >= spread["efficacy"] + 0.1
    assert blue["generalization"] > spread["generalization"]


@pytest.mark.parametrize("model,strategy", CASES[:2])
def test_run_folder_contents(edit_runs, model, strategy):
    run_dir = edit_runs[(model, strategy)]
    for name in (
        "config.yaml",
        "summary.json",
        "batches.jsonl",
        "cases.jsonl",
        "cases_pre.jsonl",
        "run_info.json",
        "blue.log",
        "context_templates.json",
    ):
        assert (run_dir / name).is_file(), name
    batches = [json.loads(line) for line in (run_dir / "batches.jsonl").read_text().splitlines()]
    assert [b["batch"] for b in batches] == [0, 1, 2, 3]
    assert all(b["edits"] == 10 and b["seconds"] > 0 and "write_error" in b for b in batches)
    cases = [json.loads(line) for line in (run_dir / "cases.jsonl").read_text().splitlines()]
    assert len(cases) == 40 and "pre_efficacy" in cases[0]
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 0 and info["torch"]


def test_report_reprints_the_tables(edit_runs, tmp_path):
    proc = run_blue(["report", str(edit_runs[("tiny-gpt2", "blue")])], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "efficacy" in proc.stdout and "write_error" in proc.stdout


def test_a_bfloat16_model_carries_its_edits(sweep_runs, tmp_path):
    """The rewrite matrices stay float32 in a bf16 model, so the edit survives half precision.

    Measured (40 edits): MEMIT spread efficacy 0.225 in both, gain 1.39 vs 1.42 nats.
    Under blue, bf16 flips 2-4 borderline cases (margins under 0.2 nats) either way
    (MEMIT 0.325 vs 0.425, MEMIT_seq 0.475 vs 0.425) while the gain stays within 4%."""
    run = tmp_path / "bf16"
    proc = run_blue(
        [
            "edit",
            "model=tiny-gpt2",
            "model.dtype=bfloat16",
            "strategy=spread",
            "num_edits=40",
            "batch_size=10",
            "eval.generation=false",
            "eval.wild=false",  # compared teacher-forced
            "eval.perplexity_tokens=0",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    fp32, bf16 = summary_of(sweep_runs[("memit", "spread")]), summary_of(run)
    print(json.dumps({k: (fp32[k], bf16[k]) for k in ("efficacy", "target_logprob_gain")}))
    assert abs(bf16["efficacy"] - fp32["efficacy"]) <= 0.05
    assert bf16["target_logprob_gain"] >= 0.9 * fp32["target_logprob_gain"]


def test_float32_method_state_changes_no_metric_by_more_than_001(sweep_runs, tmp_path):
    """C, C_prev and P stored in float32 (the CUDA default) instead of float64 (CPU):
    the solves still run in float64, and AlphaEdit (projector and C_prev) moves no rate."""
    run = tmp_path / "f32"
    proc = run_blue(
        [
            "edit",
            "model=tiny-gpt2",
            "method=alphaedit",
            "strategy=spread",
            "method.state_dtype=float32",
            "num_edits=40",
            "batch_size=10",
            "eval.generation=false",
            "eval.wild=false",  # compared teacher-forced
            "eval.perplexity_tokens=0",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    f64, f32 = summary_of(sweep_runs[("alphaedit", "spread")]), summary_of(run)
    for key in ("efficacy", "generalization", "specificity"):
        assert abs(f32[key] - f64[key]) <= 0.01, key
    assert abs(f32["target_logprob_gain"] - f64["target_logprob_gain"]) <= 0.01 * abs(f64["target_logprob_gain"])
