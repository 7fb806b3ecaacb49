"""Batched top-k sampling on tiny models: padding, top-k, budgets, seeding, per-case metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from blue_cli.datasets.counterfact.consistency import (
    Unavailable,
    load_consistency_resources,
    tfidf_cosine,
)
from blue_cli.datasets.counterfact.generation import (
    Sampling,
    clean_text,
    evaluate_generation,
    generate,
    left_pad,
    sample_ids,
)
from blue_cli.evaluation.fluency import fluency

PROMPTS = ["The trademark of LinkedIn is owned by", "Paris is", "The native language of Jean Rostand is"]


def test_sampling_refuses_an_empty_top_k_or_batch() -> None:
    for key in ("top_k", "batch_size"):
        with pytest.raises(ValueError, match=f"{key} must be >= 1, got 0"):
            Sampling(**{key: 0})


def test_left_pad_by_hand() -> None:
    got = left_pad([[5, 6, 7], [8]], pad=0, device=torch.device("cpu"))
    assert got["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert got["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert got["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


def _greedy_alone(model, ids: list[int], steps: int) -> list[int]:
    """Greedy continuation of one unpadded prompt, full forward each step, no cache."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_batched_greedy_equals_one_prompt_at_a_time(load_tiny, name: str) -> None:
    """top_k=1 makes sampling greedy: the left-padded, cached batch must reproduce
    each prompt run alone (positions and masks right, BOS kept once)."""
    adapter = load_tiny(name)
    got = sample_ids(adapter, PROMPTS, Sampling(max_new_tokens=6, top_k=1, seed=0))
    for prompt, row in zip(PROMPTS, got):
        start = adapter.tok(prompt)["input_ids"]
        assert row == _greedy_alone(adapter.model, start, 6), prompt


def test_every_sampled_token_is_in_the_top_k(load_tiny) -> None:
    adapter = load_tiny("tiny-gpt2")
    k = 3
    rows = sample_ids(adapter, PROMPTS, Sampling(max_new_tokens=8, top_k=k, seed=1))
    for prompt, row in zip(PROMPTS, rows):
        n = len(adapter.tok(prompt)["input_ids"])
        with torch.no_grad():
            logits = adapter.model(input_ids=torch.tensor([row])).logits[0]  # (T, V)
        for pos in range(n, len(row)):
            top = logits[pos - 1].topk(k).indices.tolist()
            assert row[pos] in top, (prompt, pos)
    # Sampling, not greedy: with k=3 over 24 draws some token is not the argmax.
    greedy = sample_ids(adapter, PROMPTS, Sampling(max_new_tokens=8, top_k=1, seed=1))
    assert rows != greedy


def test_same_seed_same_texts_other_seed_other_texts(load_tiny) -> None:
    adapter = load_tiny("tiny-llama")
    side = adapter.tok.padding_side
    a = generate(adapter, PROMPTS, Sampling(max_new_tokens=8, seed=3, batch_size=2))
    b = generate(adapter, PROMPTS, Sampling(max_new_tokens=8, seed=3, batch_size=2))
    c = generate(adapter, PROMPTS, Sampling(max_new_tokens=8, seed=4, batch_size=2))
    assert a == b and a != c
    assert adapter.tok.padding_side == side
    for prompt, text in zip(PROMPTS, a):
        assert text.startswith(prompt) and len(text) > len(prompt)
        assert "<s>" not in text


def test_length_budget_counts_the_prompt_as_the_reference(load_tiny) -> None:
    adapter = load_tiny("tiny-gpt2")
    lengths = [len(adapter.tok(p)["input_ids"]) for p in PROMPTS]
    total = max(lengths) + 3
    rows = sample_ids(adapter, PROMPTS, Sampling(max_length=total, seed=0))
    assert [len(r) for r in rows] == [total] * len(PROMPTS)
    capped = sample_ids(adapter, PROMPTS, Sampling(max_length=total, max_new_tokens=2, seed=0))
    assert [len(r) for r in capped] == [min(total, n + 2) for n in lengths]
    # A prompt already at the budget comes back unchanged.
    assert sample_ids(adapter, ["Paris is"], Sampling(max_length=1))[0] == adapter.tok("Paris is")["input_ids"]


def test_clean_text_as_the_reference() -> None:
    assert clean_text("a\n\nb<|endoftext|>c\u00e9") == "a bc" + "e\u0301"


def test_evaluate_generation_groups_texts_per_case(load_tiny, requests10, tmp_path) -> None:
    adapter = load_tiny("tiny-gpt2")
    reqs = requests10[:4]
    chosen = reqs[::2]
    # Hand-made resources: snippets only for the first chosen case's (relation, target).
    vocab = {w: i for i, w in enumerate(["the", "is", "of", "in", "microsoft", "paris", "language"])}
    idf = np.linspace(1.0, 2.0, len(vocab))
    snippet = "the language of paris is the language in microsoft"
    key = {"relation_id": chosen[0].relation_id, "target_id": chosen[0].target_new_id}
    groups = [{**key, "samples": [{"text": snippet}]}]
    (tmp_path / "s.json").write_text(json.dumps(groups))
    (tmp_path / "v.json").write_text(json.dumps(vocab))
    np.save(tmp_path / "i.npy", idf)
    res = load_consistency_resources(tmp_path / "s.json", tmp_path / "i.npy", tmp_path / "v.json")

    sampling = Sampling(max_new_tokens=6, seed=2, batch_size=8)
    cases = evaluate_generation(adapter, reqs, resources=res, every_n_cases=2, sampling=sampling)
    texts = generate(adapter, [p for r in chosen for p in r.generation_prompts], sampling)
    assert [c["case_id"] for c in cases] == [r.case_id for r in chosen]
    first = texts[: len(chosen[0].generation_prompts)]
    assert cases[0]["fluency"] == pytest.approx(fluency(first))
    assert cases[1]["fluency"] == pytest.approx(fluency(texts[len(first) :]))
    assert cases[0]["consistency"] == pytest.approx(tfidf_cosine(" ".join(first), snippet, idf, vocab))
    assert 0 < cases[0]["consistency"] <= 1
    assert math.isnan(cases[1]["consistency"])  # no snippets for that (relation, target)
    unavailable = evaluate_generation(adapter, reqs[:1], resources=Unavailable("offline"), sampling=sampling)
    assert set(unavailable[0]) == {"case_id", "fluency"}
