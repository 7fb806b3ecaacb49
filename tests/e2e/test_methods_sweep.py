"""Every method composes with every strategy, through one -m sweep, and edits for real."""

import json

import pytest

from tests.e2e.conftest import METHODS, summary_of

# Measured on tiny-gpt2 (40 edits in batches of 10, seed 0, CPU): efficacy spread / blue.
# Floors sit 0.05 below, gains at 80% of the measured ones; pre-edit efficacy is 0.00.
MEASURED = {
    "memit": ((0.225, 1.42), (0.425, 1.68)),
    "memit_seq": ((0.25, 1.86), (0.425, 2.49)),
    "alphaedit": ((0.275, 1.77), (0.475, 2.15)),
    "pmet": ((0.10, 1.30), (0.25, 2.32)),
    "rect": ((0.15, 1.45), (0.425, 1.82)),
    "prune": ((0.20, 1.57), (0.20, 2.01)),
}


def test_sweep_leaves_one_run_folder_per_combination(sweep_runs):
    assert set(sweep_runs) == {(m, s) for m in METHODS for s in ("spread", "blue")}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("strategy", ("spread", "blue"))
def test_every_combination_edits(sweep_runs, method, strategy):
    s = summary_of(sweep_runs[(method, strategy)])
    print(
        json.dumps(
            {
                k: round(s[k], 4)
                for k in (
                    "efficacy",
                    "generalization",
                    "specificity",
                    "pre_efficacy",
                    "target_logprob_gain",
                    "write_error",
                )
            }
        )
    )
    efficacy, gain = MEASURED[method][strategy == "blue"]
    assert s["pre_efficacy"] == 0.0
    assert s["efficacy"] >= efficacy - 0.05
    assert s["target_logprob_gain"] >= 0.8 * gain
    assert s["written_layers"] == ([1, 3] if strategy == "blue" else [1, 2, 3])


@pytest.mark.parametrize("method", METHODS)
def test_blue_is_at_least_as_effective_as_spread_for_every_method(sweep_runs, method):
    spread, blue = summary_of(sweep_runs[(method, "spread")]), summary_of(sweep_runs[(method, "blue")])
    assert blue["efficacy"] >= spread["efficacy"]
    assert blue["target_logprob_gain"] >= spread["target_logprob_gain"]
