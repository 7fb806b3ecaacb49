"""The counted comparisons of docs/long-horizon.md (scripts/long_horizon_curves.py)."""

from __future__ import annotations

from long_horizon_curves import comparisons, pair_counts


def fake_run(norm: float, perplexity: float, specificity: float, efficacy: float) -> dict:
    return {
        "batches": [{"weight_norm": {"1": 1.0, "3": norm}}],
        "summary": {"perplexity": perplexity, "wild_specificity_em": specificity, "efficacy": efficacy},
    }


RUNS = {
    "memit:blue": fake_run(20.0, 570.0, 0.05, 0.36),
    "memit:blue:nas": fake_run(12.0, 513.0, 0.11, 0.48),
    "memit:spread": fake_run(11.0, 535.0, 0.16, 0.36),
    "memit:spread:nas": fake_run(13.0, 491.0, 0.16, 0.30),
}
W0 = {1: 1.0, 3: 2.0}  # the last written layer (3) is read relative to its pre-edit norm


def test_pair_counts_compare_the_second_run_of_each_pair_with_the_first():
    lines = pair_counts(RUNS, [("memit:blue", "memit:blue:nas"), ("memit:spread", "memit:spread:nas")], W0)
    assert lines == [
        "the last written layer's final ‖W‖_F: higher in 1, lower in 1, equal in 0",  # 6 < 10, 6.5 > 5.5
        "final perplexity: higher in 0, lower in 2, equal in 0",
        "wild specificity (EM): higher in 1, lower in 0, equal in 1",
        "teacher-forced efficacy: higher in 1, lower in 1, equal in 0",
    ]


def test_comparisons_pair_anchored_runs_and_blue_with_spread():
    text = comparisons(RUNS, W0)
    nas, strategies = text.split("\n\n")
    assert nas.startswith("With norm anchoring against without it (2 pairs")
    # blue against spread: memit:blue vs memit:spread and memit:blue:nas vs memit:spread:nas
    assert strategies.startswith("`blue` against `spread` (2 pairs")
    assert "final perplexity: higher in 2, lower in 0" in strategies
    assert "the last written layer's final ‖W‖_F: higher in 1, lower in 1" in strategies  # 10 > 5.5, 6 < 6.5


def test_runs_without_the_wild_evaluation_compare_specificity_teacher_forced():
    runs = {
        name: {"batches": run["batches"], "summary": {**run["summary"], "wild_specificity_em": None}}
        for name, run in RUNS.items()
    }
    specificity = {"memit:blue": 0.70, "memit:blue:nas": 0.72, "memit:spread": 0.75, "memit:spread:nas": 0.75}
    for name, value in specificity.items():
        runs[name]["summary"]["specificity"] = value
    nas, _ = comparisons(runs, W0).split("\n\n")
    assert "wild specificity" not in nas
    assert "teacher-forced specificity: higher in 1, lower in 0, equal in 1" in nas  # 0.72 > 0.70, 0.75 = 0.75
