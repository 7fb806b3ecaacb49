"""Issue 3: every method composes with every strategy, through one -m sweep."""

import json

import pytest

from tests.e2e.conftest import METHODS, summary_of


def test_sweep_leaves_ten_run_folders(sweep_runs):
    assert set(sweep_runs) == {(m, s) for m in METHODS for s in ("spread", "blue")}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("strategy", ("spread", "blue"))
def test_every_combination_edits(sweep_runs, method, strategy):
    s = summary_of(sweep_runs[(method, strategy)])
    print(json.dumps({k: round(s[k], 4) for k in ("efficacy", "generalization", "specificity", "pre_efficacy", "target_logprob_gain", "write_error")}))
    assert s["efficacy"] > s["pre_efficacy"]
    assert s["target_logprob_gain"] >= 0.5
    assert s["written_layers"] == ([1, 3] if strategy == "blue" else [1, 2, 3])
