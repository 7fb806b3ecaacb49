"""The real-model protocol page (blue_cli/reporting/real_results.py): BLUE's paired effect per
rate, computed by hand here, and the verdict it earns."""

from __future__ import annotations

import math

import pytest

from blue_cli.reporting.real_results import pair_rows, paired_difference, render_protocol, verdict


def _cases(values: dict[int, float], metric: str = "efficacy") -> list[dict]:
    return [{"case_id": k, metric: v} for k, v in values.items()]


def test_the_paired_difference_is_the_mean_of_per_case_differences_with_its_interval():
    spread = _cases({1: 0.0, 2: 1.0, 3: 0.5, 4: 1.0})
    blue = _cases({4: 1.0, 3: 1.0, 2: 1.0, 1: 1.0, 9: 0.0})  # case 9 has no partner: left out
    mean, half, n = paired_difference(spread, blue, "efficacy")
    diffs = [1.0, 0.0, 0.5, 0.0]
    m = sum(diffs) / 4
    sd = math.sqrt(sum((d - m) ** 2 for d in diffs) / 3)
    assert n == 4 and mean == pytest.approx(m) and half == pytest.approx(1.96 * sd / 2)


def test_a_gain_or_a_loss_needs_an_interval_that_excludes_zero():
    assert verdict(0.3, 0.2) == "gain" and verdict(-0.3, 0.2) == "loss"
    assert verdict(0.1, 0.2) == "no difference shown" and verdict(0.5, math.nan) == "not measured"


def _record(strategy, method, eff):
    cases = [{"case_id": i, "efficacy": e, "generalization": 0.5, "specificity": 0.6} for i, e in enumerate(eff)]
    rates = {"efficacy": sum(eff) / len(eff), "generalization": 0.5, "specificity": 0.6}
    return {
        "dataset": "counterfact",
        "method": method,
        "strategy": strategy,
        "num_edits": len(eff),
        "batch_size": 2,
        "perplexity": 20.0,
        "pre_perplexity": 19.0,
        "edit_seconds": 90.0,
        "evaluation_seconds": 30.0,
        **rates,
        **{f"pre_{k}": 0.1 for k in rates},
        **{f"{k}_pm": 0.05 for k in rates},
        "cases": cases,
    }


def test_the_page_pairs_the_strategies_and_counts_the_verdicts():
    records = [
        _record("spread", "memit", [0, 0, 0, 1]),
        _record("blue", "memit", [1, 1, 1, 1]),
        _record("blue", "prune", [1, 1, 1, 1]),  # no spread run: not a pair
    ]
    rows = pair_rows(records)
    assert [r["method"] for r in rows] == ["memit"]
    assert rows[0]["efficacy_diff"]["mean"] == pytest.approx(0.75)
    assert rows[0]["generalization_diff"]["verdict"] == "no difference shown"  # every difference 0
    text = render_protocol({"store": "x.json", "description": "d", "rows": rows})
    assert "| memit | efficacy | 0.25 ± 0.05 | 1.00 ± 0.05 | +0.75 ± " in text
    assert "Time, all 2 runs: 3 min editing, 1 min evaluating." in text  # 2 x 90 s, 2 x 30 s
    # differences 1, 1, 1, 0: mean 0.75, 95% half-width 1.96 * 0.5 / 2 = 0.49, so a gain
    assert (
        "- efficacy: BLUE gains in 1 of 1 pairs (memit (counterfact): +0.75 ± 0.49), loses in 0, "
        "no difference shown in 0." in text
    )


def test_the_docs_protocol_block_is_the_rendering_of_the_stored_runs():
    import json
    from pathlib import Path

    from blue_cli.reporting.readme_results import current_block
    from blue_cli.reporting.real_results import PROTOCOL_BEGIN, PROTOCOL_END

    root = Path(__file__).resolve().parents[2]
    store = root / "benchmarks" / "results" / "protocol-smollm2-135m.json"
    if not store.is_file():
        pytest.skip("no stored protocol (make real-protocol writes it)")
    payload = json.loads(store.read_text(encoding="utf-8"))
    page = (root / "docs" / "real-model-results.md").read_text(encoding="utf-8")
    assert current_block(page, PROTOCOL_BEGIN, PROTOCOL_END) == render_protocol(payload)
