"""The docs' Python API example (docs/api.md) runs, and edits through the runner's code path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from blue_cli import api
from blue_cli.errors import DataError

API_PAGE = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _example() -> str:
    text = API_PAGE.read_text(encoding="utf-8")
    block = text[text.index("<!-- api-example") :]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


def test_readme_example_runs_and_edits(capsys):
    scope: dict = {}
    exec(compile(_example(), "docs/api.md", "exec"), scope)
    result, before, after = scope["result"], scope["before"], scope["after"]
    assert [b["batch"] for b in result.batches] == [0, 1] and all(b["edits"] == 2 for b in result.batches)
    assert after["rewrite_logprob_sum_new"] > before["rewrite_logprob_sum_new"] + 0.5
    assert "->" in capsys.readouterr().out


def test_api_edit_equals_a_session_run_on_the_same_config(fresh_tiny, requests10):
    """Same requests, same overrides: the API and an EditSession write the same matrices."""
    from blue_cli.config.overrides import compose_config
    from blue_cli.editing.session import build_session

    overrides = ["model.layers=[1,2,3]", "stats.samples=40", "method.target.steps=4"]
    a = fresh_tiny("tiny-gpt2")
    api.edit(a.model, a.tok, requests10[:2], method="memit_seq", strategy="spread", overrides=overrides)
    b = fresh_tiny("tiny-gpt2")
    cfg = compose_config(["method=memit_seq", "strategy=spread", "dataset=counterfact", *overrides])
    from blue_cli.editing.session import seed_everything

    seed_everything(cfg.seed)
    session = build_session(cfg, b)
    session.edit_batch(requests10[:2], 0)
    session.apply_evaluated_weights()
    for layer in (1, 2, 3):
        assert torch.equal(a.rewrite_weight(layer), b.rewrite_weight(layer)), layer


def test_requests_may_be_counterfact_or_zsre_dicts():
    cf = {
        "case_id": 7,
        "requested_rewrite": {
            "prompt": "{} plays",
            "subject": "Ann",
            "target_new": {"str": "jazz"},
            "target_true": {"str": "rock"},
        },
        "paraphrase_prompts": ["Ann is a player of"],
        "neighborhood_prompts": ["Bob plays"],
        "generation_prompts": [],
    }
    zs = {
        "subject": "Ann",
        "src": "What does Ann play?",
        "rephrase": "Ann plays what?",
        "alt": "jazz",
        "answers": ["rock"],
        "loc": "nq question: who is it",
        "loc_ans": "someone",
    }
    got = api.as_requests([cf, zs])
    assert got[0].case_id == 7 and got[0].target_new == "jazz"
    assert got[1].prompt == "What does {} play?"
    with pytest.raises(DataError, match=r"requests\[0\]"):
        api.as_requests([{"nonsense": 1}])
