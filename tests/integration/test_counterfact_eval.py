"""CounterFact's per-case numbers on a tiny model: each rule's verdict follows from the
quantity cases.jsonl shows for it, both recomputed here from one unpadded HF forward."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from blue_cli.datasets.counterfact.metrics import evaluate_counterfact, rewrite_prompt
from blue_cli.models.tokens import target_ids
from blue_cli.runs.runner import build_summary

N_CASES = 20


def _target_logprobs(adapter, prompt: str, target: str) -> list[float]:
    """log P of each token of " " + target after ``prompt``, from one forward of the whole text."""
    tok = adapter.tok
    p_ids, t_ids = tok(prompt)["input_ids"], target_ids(tok, target)
    with torch.no_grad():
        logits = adapter.model(torch.tensor([p_ids + t_ids])).logits[0].double()
    lp = torch.log_softmax(logits[len(p_ids) - 1 : len(p_ids) - 1 + len(t_ids)], dim=-1)
    return lp[torch.arange(len(t_ids)), torch.tensor(t_ids)].tolist()


def _long_against_short(request):
    """The real object plus " in 1850" as target_new, the counterfactual object as target_true.

    A long target whose first token the model expects against a short one it does not:
    its per-token mean is higher but its sum lower, the case of issue 16 (efficacy 1 with
    a lower summed log P(new)). The plain bundled cases, which the tiny model knows, have
    none of these.
    """
    return dataclasses.replace(request, target_new=f"{request.target_true} in 1850", target_true=request.target_new)


@pytest.fixture(scope="module")
def scored(load_tiny):
    from blue_cli.datasets.counterfact.records import load_counterfact

    adapter = load_tiny("tiny-gpt2")
    bundled = load_counterfact("bundled", limit=N_CASES)
    requests = [*bundled, *map(_long_against_short, bundled[:10])]
    cases = evaluate_counterfact(adapter, requests)
    by_hand = [
        {
            which: _target_logprobs(adapter, rewrite_prompt(r), getattr(r, f"target_{which}"))
            for which in ("new", "true")
        }
        for r in requests
    ]
    return cases, by_hand


def test_efficacy_is_the_comparison_of_the_shown_per_token_means(scored):
    cases, by_hand = scored
    for case, lps in zip(cases, by_hand):
        mean = {w: sum(v) / len(v) for w, v in lps.items()}
        assert case["rewrite_mean_logprob_new"] == pytest.approx(mean["new"], abs=1e-4)
        assert case["rewrite_mean_logprob_true"] == pytest.approx(mean["true"], abs=1e-4)
        if abs(mean["new"] - mean["true"]) > 1e-4:  # a near tie may round either way
            assert case["efficacy"] == float(mean["new"] > mean["true"]), case["case_id"]
            assert case["efficacy"] == float(case["rewrite_mean_logprob_new"] > case["rewrite_mean_logprob_true"])


def test_sums_are_kept_under_names_that_say_so(scored):
    cases, by_hand = scored
    for case, lps in zip(cases, by_hand):
        assert case["rewrite_logprob_sum_new"] == pytest.approx(sum(lps["new"]), abs=1e-4)
        assert case["rewrite_logprob_sum_true"] == pytest.approx(sum(lps["true"]), abs=1e-4)
        assert "rewrite_logprob_new" not in case and "rewrite_logprob_true" not in case
    # the case the names guard against: sums and means disagree on which target is likelier
    disagree = [
        c["case_id"]
        for c in cases
        if (c["rewrite_logprob_sum_new"] > c["rewrite_logprob_sum_true"])
        != (c["rewrite_mean_logprob_new"] > c["rewrite_mean_logprob_true"])
    ]
    assert disagree, "no case where the sum and the mean disagree: the check above proves less"


def test_target_logprob_gain_is_the_mean_difference_of_sums():
    row = {"write_error": 0.0, "z_logprob_gain": 0.0, "edit_logprob_gain": 0.0, "edit_seconds": 1.0}
    pre = [{"case_id": 0, "rewrite_logprob_sum_new": -12.0, "rewrite_mean_logprob_new": -4.0}]
    pre += [{"case_id": 1, "rewrite_logprob_sum_new": -3.0, "rewrite_mean_logprob_new": -3.0}]
    post = [{"case_id": 0, "rewrite_logprob_sum_new": -6.0, "rewrite_mean_logprob_new": -2.0}]
    post += [{"case_id": 1, "rewrite_logprob_sum_new": -1.0, "rewrite_mean_logprob_new": -1.0}]
    summary = build_summary(pre, post, [row], 0.0, {})
    assert summary["target_logprob_gain"] == pytest.approx(((-6 + 12) + (-1 + 3)) / 2)
    assert not any("rewrite_" in k for k in summary)
    # a run resumed after an upgrade: its cases_pre.jsonl still names the sum rewrite_logprob_new
    old_pre = [{"case_id": c["case_id"], "rewrite_logprob_new": c["rewrite_logprob_sum_new"]} for c in pre]
    assert build_summary(old_pre, post, [row], 0.0, {})["target_logprob_gain"] == summary["target_logprob_gain"]
