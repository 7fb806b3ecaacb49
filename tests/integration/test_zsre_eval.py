"""zsRE token accuracy on tiny models, checked against argmaxes taken from the model by hand."""

from __future__ import annotations

import pytest
import torch

from blue_cli.datasets.zsre.metrics import RATES, evaluate_zsre
from blue_cli.datasets.zsre.records import BUNDLED, load_zsre


@pytest.fixture(scope="module")
def zsre5():
    return load_zsre(BUNDLED, limit=5)


def _by_hand(model, tok, prompt: str, answer: str) -> float:
    """Unpadded, one sequence, the HF LM head: argmax after prompt + answer prefix."""
    prompt_ids = tok(prompt)["input_ids"]
    answer_ids = tok(" " + answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]  # (T, V)
    hits = [int(logits[len(prompt_ids) - 1 + j].argmax()) == t for j, t in enumerate(answer_ids)]
    return sum(hits) / len(hits)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_accuracies_match_argmaxes_taken_by_hand(load_tiny, zsre5, name: str) -> None:
    adapter = load_tiny(name)
    cases = evaluate_zsre(adapter, zsre5)
    assert [c["case_id"] for c in cases] == [0, 1, 2, 3, 4]
    for case in cases:
        assert set(case) == {"case_id", *RATES}
        assert all(0.0 <= case[k] <= 1.0 for k in RATES)
    # The check means something only if some predictions are right and some wrong.
    assert 0 < sum(c[k] for c in cases for k in RATES) < len(cases) * len(RATES)
    for case, req in zip(cases, zsre5):
        model, tok = adapter.model, adapter.tok
        assert case["efficacy"] == pytest.approx(_by_hand(model, tok, req.rewrite_prompt, req.target_new))
        assert case["generalization"] == pytest.approx(_by_hand(model, tok, req.paraphrase_prompts[0], req.target_new))
        assert case["specificity"] == pytest.approx(
            _by_hand(model, tok, req.neighborhood_prompts[0], req.neighborhood_answers[0])
        )


def test_batching_does_not_change_results_and_progress_is_reported(load_tiny, zsre5) -> None:
    adapter = load_tiny("tiny-llama")
    seen: list[tuple[int, int]] = []
    one_at_a_time = evaluate_zsre(adapter, zsre5, chunk=1)
    batched = evaluate_zsre(adapter, zsre5, progress=lambda done, total: seen.append((done, total)))
    for x, y in zip(batched, one_at_a_time, strict=True):
        assert x["case_id"] == y["case_id"]
        for k in RATES:
            assert x[k] == pytest.approx(y[k]), (x["case_id"], k)
    assert seen[-1] == (15, 15)  # 5 cases x (rewrite, paraphrase, neighbour)


def test_a_head_that_always_says_the_first_answer_token(fresh_tiny, zsre5) -> None:
    """With a huge head bias on the answer's first token every prediction is that token,
    so accuracy = its share of the answer's tokens (a counted BOS would change the share)."""
    adapter = fresh_tiny("tiny-llama")
    req = zsre5[0]
    answer = adapter.tok(" " + req.target_new, add_special_tokens=False)["input_ids"]
    assert len(answer) >= 2
    head = adapter.unembed
    bias = torch.zeros(head.weight.shape[0])
    bias[answer[0]] = 1e4
    head.bias = torch.nn.Parameter(bias)
    forced = evaluate_zsre(adapter, [req])[0]
    expected = answer.count(answer[0]) / len(answer)
    assert forced["efficacy"] == pytest.approx(expected)
    assert forced["generalization"] == pytest.approx(expected)
    nq = adapter.tok(" " + req.neighborhood_answers[0], add_special_tokens=False)["input_ids"]
    assert forced["specificity"] == pytest.approx(nq.count(answer[0]) / len(nq))
