"""Evaluation points, the final checkpoint and the summary see the weights as the
method leaves them (PRUNE's restraint), not the raw edited ones."""

from __future__ import annotations

import json
import math

import torch
from safetensors import safe_open

from blue_cli.config.overrides import compose_config
from blue_cli.editing import session as session_module
from blue_cli.editing.methods.memit import Memit
from blue_cli.runs import runner
from blue_cli.runs.replay import edited_weights

SMALL = [
    "model=tiny-gpt2",
    "num_edits=4",
    "batch_size=2",
    "method.target.steps=4",
    "stats.samples=40",
    "eval.generation=false",  # fluency and consistency have tests of their own
    "eval.wild=false",
    "eval.perplexity_tokens=0",
]


def _checkpoint(run_dir):
    with safe_open(str(run_dir / "checkpoint.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


class UndoAtTheEnd(Memit):
    """A method whose evaluated weights are the unedited model: every evaluation must then equal pre-edit."""

    evaluated_weights_differ = True

    def evaluated_weights(self, current, originals):
        return {l: w.clone() for l, w in originals.items()}, {"undone": 1.0}


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_evaluation_point_and_the_checkpoint_see_the_methods_evaluated_weights(tmp_path, monkeypatch, fresh_tiny):
    monkeypatch.setattr(session_module, "method_class", lambda name: UndoAtTheEnd)
    cfg = compose_config([*SMALL, "eval_every=1"])
    summary = runner.run_experiment(cfg, tmp_path)
    pre = _read_jsonl(tmp_path / "cases_pre.jsonl")
    evals = [r for r in _read_jsonl(tmp_path / "evals.jsonl") if "efficacy" in r]  # not the base model's perplexity
    assert [r["edits"] for r in evals] == [2, 4]
    first_two = sum(c["efficacy"] for c in pre[:2]) / 2
    assert evals[0]["efficacy"] == first_two
    assert evals[0]["rewrite_logprob_sum_new"] == sum(c["rewrite_logprob_sum_new"] for c in pre[:2]) / 2
    assert summary["efficacy"] == summary["pre_efficacy"] and summary["undone"] == 1.0
    _, meta = _checkpoint(tmp_path)
    assert json.loads(meta["finished"]) is True
    weights = edited_weights(tmp_path)  # what export and analyze see: the replay, then the evaluated weights
    original = fresh_tiny("tiny-gpt2")
    for layer in summary["written_layers"]:
        assert torch.equal(weights[layer], original.rewrite_weight(layer).detach())


def test_prune_checkpoint_holds_the_restrained_change(tmp_path, fresh_tiny):
    cfg = compose_config([*SMALL, "method=prune", "method.log_base=1.2", "method.cov_weight=1"])
    summary = runner.run_experiment(cfg, tmp_path)
    weights = edited_weights(tmp_path)
    original = fresh_tiny("tiny-gpt2")
    active = 0
    for layer in summary["written_layers"]:
        W0 = original.rewrite_weight(layer).detach().double()
        change = weights[layer].double() - W0
        bound = float(torch.linalg.svdvals(W0).max())
        before = summary[f"prune_max_sv_before.{layer}"]
        top = float(torch.linalg.svdvals(change).max())
        restrained = bound + math.log(before / bound) / math.log(1.2) if before > bound else before
        print(layer, bound, before, top)
        assert math.isclose(top, min(before, restrained), rel_tol=1e-5)  # PRUNE's F, computed here
        active += top < before - 1e-6
    assert active  # the restraint changed at least one saved matrix
