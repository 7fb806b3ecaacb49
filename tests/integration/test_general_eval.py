"""General-capability evaluation on the tiny models: batched greedy generation, parsing, scores.

The batched, left-padded generation is checked against a greedy loop written here
(one unpadded item at a time, full forward passes, no cache); the scoring path is
checked end to end by scripting the model's answer with a hook.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch

from blue_cli.errors import ConfigError
from blue_cli.evaluation.general import evaluate_general, load_task, run_task

N = 20


def _manual_greedy(adapter, ids: list[int], steps: int) -> str:
    """Greedy continuation of one unpadded prompt by repeated full forward passes."""
    eos = adapter.tok.eos_token_id
    seq = list(ids)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = adapter.model(input_ids=torch.tensor([seq])).logits[0, -1]
            token = int(logits.argmax())
            if token == eos:
                break
            seq.append(token)
            new.append(token)
    return adapter.tok.decode(new, skip_special_tokens=True)


@pytest.fixture(scope="module")
def gpt2_runs(load_tiny):
    """SST-2 and MMLU on tiny-gpt2, batches of 8 (evaluate_general below uses 16)."""
    adapter = load_tiny("tiny-gpt2")
    return {task: run_task(adapter, load_task(task), n_items=N, batch_size=8) for task in ("sst2", "mmlu")}


def test_scores_are_finite_or_unmeasured_and_deterministic(load_tiny, gpt2_runs):
    adapter = load_tiny("tiny-gpt2")
    scores = evaluate_general(adapter, ["sst2", "mmlu"], n_items=N, batch_size=16)
    assert set(scores) == {"sst2", "mmlu"}
    for task, got in scores.items():
        assert got["n"] == N
        assert 0 <= got["unparsed"] <= N
        if got["unparsed"] == N:  # nothing parsed, nothing measured (the random tiny model's usual case)
            assert all(got[k] is None for k in ("f1", "mcc", "accuracy"))
        else:
            assert all(math.isfinite(got[k]) for k in ("f1", "mcc", "accuracy"))
            assert 0.0 <= got["f1"] <= 1.0 and -1.0 <= got["mcc"] <= 1.0
        assert got == gpt2_runs[task].scores()  # a second call, other batches: same numbers
    assert adapter.tok.padding_side == "right"


def _check_against_manual_greedy(adapter, task: str, result, n: int) -> None:
    data = load_task(task)
    checked = 0
    for i, rec in enumerate(data.tests[:n]):
        ids = adapter.tok(data.spec.question(rec))["input_ids"]
        if len(ids) > 256 - 5:  # cut to the tiny context; the cut itself is unit-tested
            continue
        assert result.prompts[i] == list(ids)
        text = _manual_greedy(adapter, ids, steps=5)
        assert result.continuations[i] == text, (i, rec)
        assert result.predictions[i] == data.spec.parse(text)
        assert result.golds[i] == data.spec.gold(rec)
        checked += 1
    assert checked >= n // 2


@pytest.mark.parametrize("task", ["sst2", "mmlu"])
def test_batched_generation_matches_one_item_greedy(load_tiny, gpt2_runs, task):
    adapter = load_tiny("tiny-gpt2")
    # The first 10 of 20 items: prompts of several lengths, so most rows were left-padded.
    _check_against_manual_greedy(adapter, task, gpt2_runs[task], n=10)
    assert adapter.tok.padding_side == "right"


def test_batched_generation_matches_one_item_greedy_with_bos(load_tiny):
    adapter = load_tiny("tiny-llama")  # its tokenizer prepends BOS, unlike GPT-2's
    result = run_task(adapter, load_task("sst2"), n_items=6, batch_size=3)
    _check_against_manual_greedy(adapter, "sst2", result, n=6)


def test_few_shot_prompt_starts_with_the_reserved_demonstrations(load_tiny):
    adapter = load_tiny("tiny-gpt2")
    data = load_task("sst2")
    result = run_task(adapter, data, n_items=2, n_shots=2)
    text = adapter.tok.decode(result.prompts[0])
    demos = data.spec.demonstration(data.shots[0]) + data.spec.demonstration(data.shots[1])
    assert text == demos + data.spec.question(data.tests[0])


class _ScriptedAnswer:
    """Force the next token from the previous one, so every continuation is ``script``'s loop."""

    def __init__(self, adapter, script: str):
        ids = adapter.tok(script)["input_ids"]
        self.first = ids[0]
        self.after = {a: b for a, b in zip(ids, ids[1:] + ids[:1])}

    def __call__(self, module, args, kwargs, output):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        last = input_ids[:, -1].tolist()
        forced = torch.full_like(output.logits[:, -1], -1e4)
        for row, tok in enumerate(last):
            forced[row, self.after.get(tok, self.first)] = 0.0
        output.logits[:, -1] = forced
        return output


@pytest.mark.parametrize(("task", "script", "answer"), [("sst2", " positive\n", 1), ("mmlu", " B\n", 1)])
def test_scripted_answers_give_the_hand_computed_scores(fresh_tiny, task, script, answer):
    adapter = fresh_tiny("tiny-gpt2")
    handle = adapter.model.register_forward_hook(_ScriptedAnswer(adapter, script), with_kwargs=True)
    try:
        result = run_task(adapter, load_task(task), n_items=N, batch_size=8)
    finally:
        handle.remove()
    assert all(c.startswith(script) for c in result.continuations), result.continuations[:3]
    assert result.predictions == (answer,) * N
    hits = sum(g == answer for g in result.golds)
    assert 0 < hits < N
    # Constant prediction: the predicted class has P = hits/N, R = 1, F1 = 2 hits / (hits + N),
    # weighted by its support hits/N; every other class scores 0. MCC is 0 (one predicted class).
    scores = result.scores()
    assert scores["f1"] == pytest.approx((hits / N) * 2 * hits / (hits + N))
    assert scores["mcc"] == 0.0
    assert scores["accuracy"] == pytest.approx(hits / N)
    assert scores["unparsed"] == 0


def test_bad_settings_are_one_line_config_errors(load_tiny):
    adapter = load_tiny("tiny-gpt2")
    with pytest.raises(ConfigError, match="unknown general task 'glue'.*sst2, mrpc, cola, rte, mmlu, nli"):
        evaluate_general(adapter, ["sst2", "glue"])
    with pytest.raises(ConfigError, match="n_items 101 exceeds the 100 test items of sst2"):
        evaluate_general(adapter, ["sst2"], n_items=101)
    with pytest.raises(ConfigError, match="n_shots must be in 0..10"):
        evaluate_general(adapter, ["sst2"], n_shots=11)
    with pytest.raises(ConfigError, match="n_items must be >= 1"):
        evaluate_general(adapter, ["sst2"], n_items=0)


# -- a model that never answers in a parseable form is not a measured 0 ----------------------


def _never_parsed(adapter):
    """A forward hook making every continuation " maybe" on a loop: no keyword, no "a\\n".."d\\n"."""
    return adapter.model.register_forward_hook(_ScriptedAnswer(adapter, " maybe maybe"), with_kwargs=True)


def test_no_parseable_answer_is_null_with_the_count_and_one_warning(fresh_tiny, caplog):
    adapter = fresh_tiny("tiny-gpt2")
    handle = _never_parsed(adapter)
    try:
        with caplog.at_level(logging.WARNING, logger="blue_cli.evaluation.general.harness"):
            scores = evaluate_general(adapter, ["sst2", "mmlu"], n_items=6, batch_size=6)
    finally:
        handle.remove()
    for task in ("sst2", "mmlu"):
        assert scores[task]["unparsed"] == scores[task]["n"] == 6
        assert scores[task]["f1"] is None and scores[task]["mcc"] is None and scores[task]["accuracy"] is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "sst2" in warnings[0] and "mmlu" in warnings[0] and "6 of 6" in warnings[0]


class _RecordingProgress:
    """The runner's progress interface, recording each bar's total and updates."""

    def __init__(self):
        self.bars: dict[str, list] = {}

    @contextlib.contextmanager
    def track(self, description, total):
        seen = self.bars.setdefault(description, [total])

        def update(done, new_total=None):
            seen.append((done, new_total or total))

        yield update


def test_an_evaluation_point_reports_null_and_unparsed_and_its_bar_finishes(fresh_tiny, tmp_path):
    from blue_cli.runs.points import EvaluationPoints

    general = SimpleNamespace(
        general=["sst2", "mmlu"], general_every=None, general_items=4, general_shots=0, general_path=None
    )
    cfg = SimpleNamespace(eval_every=None, eval=general)
    progress = _RecordingProgress()
    points = EvaluationPoints(cfg, dataset=None, batches=[[None]], run_dir=tmp_path, progress=progress)
    adapter = fresh_tiny("tiny-gpt2")
    handle = _never_parsed(adapter)
    try:
        row = points.record(adapter, 0)
    finally:
        handle.remove()
    for task in ("sst2", "mmlu"):
        assert row[f"general.{task}.unparsed"] == 4
        assert all(row[f"general.{task}.{m}"] is None for m in ("f1", "mcc", "accuracy"))
    total, *updates = progress.bars["general capability"]
    assert updates and updates[-1] == (total, total)
    saved = json.loads((tmp_path / "evals.jsonl").read_text().splitlines()[0])
    assert saved["general.sst2.f1"] is None and saved["general.sst2.unparsed"] == 4
