"""Long streams: held-out perplexity, Norm-Anchor Scaling under every method and strategy,
the evaluation in the wild on a model, and the collapse monitor's batch rows."""

from __future__ import annotations

import math
import random

import pytest
import torch

from blue_cli.config.overrides import compose_config
from blue_cli.config.schema import group_choices
from blue_cli.editing.keys import values_at_subject
from blue_cli.editing.session import build_session, target_settings
from blue_cli.editing.targets import optimise_targets
from blue_cli.evaluation.perplexity import heldout_text, perplexity
from blue_cli.evaluation.wild import evaluate_wild, greedy_answers

SMALL = ["model=tiny-gpt2", "method.target.steps=2", "stats.samples=40", "context.n_prefixes=2"]


def test_perplexity_equals_the_models_own_loss_over_the_same_windows(load_tiny):
    """Independent: the HF model's own shifted cross-entropy (``labels=``) per window,
    weighted by the tokens each window predicts."""
    adapter = load_tiny("tiny-gpt2")
    text = heldout_text("bundled")
    got = perplexity(adapter, text, tokens=300, window=64, batch=3)
    ids = adapter.tok(text, add_special_tokens=False)["input_ids"][:300]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), 64):
            w = torch.tensor([ids[start : start + 64]])
            if w.shape[1] < 2:
                continue
            loss = adapter.model(input_ids=w, labels=w).loss
            total += float(loss) * (w.shape[1] - 1)
            count += w.shape[1] - 1
    assert got == pytest.approx(math.exp(total / count), rel=1e-5)


@pytest.mark.parametrize("strategy", ["spread", "blue"])
@pytest.mark.parametrize("method", group_choices("method"))
def test_norm_anchor_writes_every_value_vector_at_the_reference_norm(method, strategy, fresh_tiny, requests10):
    """Any method, any strategy, by config alone: after a batch every target layer's value
    vectors v* = v0 + delta (as written) have the reference norm, and the batch row says so."""
    cfg = compose_config(
        [
            *SMALL,
            f"method={method}",
            f"strategy={strategy}",
            "method.norm_anchor.enabled=true",
            "method.norm_anchor.samples=3",
            "method.norm_anchor.skip_factor=inf",
        ]
    )
    session = build_session(cfg, fresh_tiny("tiny-gpt2"), pool=requests10[:6])
    row = session.edit_batch(requests10[:2], 0)
    reference = session.norm_reference
    assert set(reference) == set(session.strategy.target_layers(session.critical))
    assert row["anchor_skipped"] == 0
    for layer, norm in reference.items():
        assert row["value_norm_mean"][str(layer)] == pytest.approx(norm, rel=1e-4)
        assert row["value_norm_max"][str(layer)] == pytest.approx(norm, rel=1e-4)


def test_the_reference_norm_is_measured_on_the_original_model_with_bare_prompts(fresh_tiny, requests10):
    """Independent: the trimmed mean (keep_quantile 0.6 of 3: floor(1.2) = 1, the longest, dropped)
    of ||v0 + delta|| of a seeded sample of the pool, optimised here on a fresh copy of the unedited model."""
    overrides = [*SMALL, "strategy=blue", "method.norm_anchor.enabled=true", "method.norm_anchor.samples=3"]
    cfg = compose_config([*overrides, "method.norm_anchor.keep_quantile=0.6"])
    pool = requests10[:6]
    session = build_session(cfg, fresh_tiny("tiny-gpt2"), pool=pool)
    session.edit_batch(requests10[6:8], 0)
    session.edit_batch(requests10[8:10], 1)  # a second batch leaves the reference as it was
    original = fresh_tiny("tiny-gpt2")
    sample = random.Random(cfg.seed).sample(pool, 3)
    for layer, got in session.norm_reference.items():
        result = optimise_targets(original, sample, ["{}"], layer, target_settings(cfg.method.target), ("block",))
        v0 = values_at_subject(original, sample, layer, "mlp").T
        norms = sorted((v0 + result.delta["block"]).norm(dim=1).tolist())
        assert got == pytest.approx(sum(norms[:2]) / 2, rel=1e-5)


def test_monitor_rows_hold_the_written_matrices_norms(fresh_tiny, requests10):
    adapter = fresh_tiny("tiny-gpt2")
    cfg = compose_config([*SMALL, "strategy=blue"])
    session = build_session(cfg, adapter, pool=requests10)
    original = {l: adapter.rewrite_weight(l).detach().clone() for l in session.written}
    row = session.edit_batch(requests10[:2], 0)
    for l in session.written:
        W = adapter.rewrite_weight(l).detach().double()
        assert row["weight_norm"][str(l)] == pytest.approx(float(torch.linalg.matrix_norm(W)), rel=1e-10)
        change = W - original[l].double()
        assert row["change_norm"][str(l)] == pytest.approx(float(torch.linalg.matrix_norm(change)), rel=1e-10)
        assert row["change_spectral_norm"][str(l)] == pytest.approx(
            float(torch.linalg.matrix_norm(change, 2)), rel=1e-3
        )
    assert "anchor_skipped" not in row and set(row["value_norm_mean"]) == {str(l) for l in session.written}


def test_wild_answers_stop_by_the_rule_and_the_unedited_model_is_its_own_reference(load_tiny, requests10):
    adapter = load_tiny("tiny-gpt2")
    answers = greedy_answers(adapter, [r.rewrite_prompt for r in requests10[:4]], max_tokens=12, batch_size=3)
    one_by_one = [greedy_answers(adapter, [r.rewrite_prompt], max_tokens=12)[0] for r in requests10[:4]]
    assert answers == one_by_one  # left padding changes nothing
    assert all("\n" not in a and "." not in a for a in answers)
    cases = evaluate_wild(adapter, requests10[:3], None, max_tokens=12)
    assert all(c["wild_specificity_em"] == 1.0 and c["wild_specificity_f1"] == 1.0 for c in cases)
    reference = {c["case_id"]: c["wild_neighborhood_answers"] for c in cases}
    again = evaluate_wild(adapter, requests10[:3], reference, max_tokens=12)
    assert [c["wild_specificity_em"] for c in again] == [1.0, 1.0, 1.0]
    assert all(math.isnan(c["wild_specificity_em"]) for c in evaluate_wild(adapter, requests10[:1], {}, 12))
