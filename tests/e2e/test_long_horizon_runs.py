"""Long-stream runs: the perplexity stop rule ends a run cleanly and resumably, and a resumed
run with Norm-Anchor Scaling and every monitor gives the rows of an uninterrupted one."""

from __future__ import annotations

import json

import pytest

from blue_cli.config.overrides import compose_config
from blue_cli.runs import files as results
from blue_cli.runs import runner
from blue_cli.runs.points import EvaluationPoints

SMALL = [
    "model=tiny-gpt2",
    "num_edits=6",
    "batch_size=2",
    "method.target.steps=2",
    "stats.samples=40",
    "eval.generation=false",
    "eval.wild_max_tokens=8",
    "eval.perplexity_tokens=256",
]


LAST_LAYER = 3  # tiny-gpt2's last critical layer, which blue writes in every batch


def _timing_free(row: dict) -> dict:
    return {k: v for k, v in row.items() if "seconds" not in k}


def _rows(run_dir, name):
    return [_timing_free(r) for r in results.read_jsonl(run_dir / name)]


def test_the_stop_rule_ends_the_run_cleanly_and_a_resume_keeps_it_ended(tmp_path, monkeypatch):
    """Perplexity is faked: 10 on the unedited model, 100 once a written matrix changed; with
    k = 3 the run stops after its first batch, evaluates what it edited, and says why."""
    seen: dict = {}

    def fake_perplexity(self, adapter):
        weight = adapter.rewrite_weight(LAST_LAYER).detach()
        base = seen.setdefault("base", weight.clone())
        return 10.0 if bool((weight == base).all()) else 100.0

    monkeypatch.setattr(EvaluationPoints, "perplexity", fake_perplexity)
    cfg = compose_config([*SMALL, "eval.perplexity_every=1", "eval.stop_perplexity_factor=3"])
    summary = runner.run_experiment(cfg, tmp_path)
    assert summary["stopped"].startswith("perplexity 100 > 3 x pre-edit 10 after 1 batches (2 edits)")
    assert summary["num_edits"] == 2 and summary["perplexity"] == 100.0 and summary["pre_perplexity"] == 10.0
    assert len(results.read_jsonl(tmp_path / results.CASES)) == 2
    assert [r["batches"] for r in results.read_jsonl(tmp_path / results.EVALS)] == [0, 1]
    assert len(results.read_jsonl(tmp_path / results.BATCHES)) == 1
    again = runner.run_experiment(
        compose_config([*SMALL, "eval.perplexity_every=1", "eval.stop_perplexity_factor=3"]), tmp_path
    )
    assert _timing_free(again) == _timing_free(summary)
    assert len(results.read_jsonl(tmp_path / results.BATCHES)) == 1


def test_a_resumed_anchored_run_writes_the_rows_of_an_uninterrupted_one(tmp_path, monkeypatch):
    overrides = [
        *SMALL,
        "method=alphaedit",
        "strategy=spread",
        "eval_every=2",
        "eval.perplexity_every=1",
        "method.norm_anchor.enabled=true",
        "method.norm_anchor.samples=4",
        "eval.max_cases=4",  # of 6 edits: positions 0, 1, 3, 4 are evaluated
    ]
    whole = runner.run_experiment(compose_config(overrides), tmp_path / "whole")

    count = {"batch": 0}

    def fail_after_two(point):
        if point == "batch":
            count["batch"] += 1
            if count["batch"] == 2:
                raise RuntimeError("killed")

    monkeypatch.setattr(runner, "fault_point", fail_after_two)
    with pytest.raises(RuntimeError, match="killed"):
        runner.run_experiment(compose_config(overrides), tmp_path / "resumed")
    monkeypatch.undo()
    resumed = runner.run_experiment(compose_config(overrides), tmp_path / "resumed")
    assert _timing_free(resumed) == _timing_free(whole)
    for name in (results.BATCHES, results.EVALS, results.CASES):
        assert _rows(tmp_path / "resumed", name) == _rows(tmp_path / "whole", name), name
    batches = results.read_jsonl(tmp_path / "whole" / results.BATCHES)
    assert all("weight_norm" in r and "anchor_skipped" in r for r in batches)
    evals = results.read_jsonl(tmp_path / "whole" / results.EVALS)
    assert [r["batches"] for r in evals] == [0, 1, 2, 3] and all("perplexity" in r for r in evals)
    assert "wild_efficacy_em" in evals[2] and "wild_efficacy_em" in whole and "pre_wild_efficacy_em" in whole
    meta = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert meta["stopped"] is None and meta["evaluated_cases"] == 4 and meta["num_edits"] == 6
    cases = results.read_jsonl(tmp_path / "whole" / results.CASES)
    stream = [c for b in results.read_jsonl(tmp_path / "whole" / results.BATCHES) for c in b["case_ids"]]
    assert [c["case_id"] for c in cases] == [stream[i] for i in (0, 1, 3, 4)]
