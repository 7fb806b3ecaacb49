"""The dataset is an axis: zsRE and CounterFact through one runner, evaluation points,
general capability and consistency, run in-process on the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from blue_cli.config.overrides import compose_config
from blue_cli.datasets.counterfact import CounterFact
from blue_cli.datasets.counterfact.consistency import tfidf_cosine
from blue_cli.datasets.counterfact.records import load_counterfact
from blue_cli.datasets.zsre import Zsre
from blue_cli.errors import DataError
from blue_cli.runs import runner

FAST = ["method.target.steps=5", "stats.samples=40", "eval.wild=false", "eval.perplexity_tokens=0"]


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_zsre_on_tiny_llama_reports_the_three_accuracies_before_and_after(tmp_path):
    cfg = compose_config(
        [
            "model=tiny-llama",
            "dataset=zsre",
            "num_edits=20",
            "batch_size=10",
            "stats.samples=40",
            "eval.wild=false",
            "eval.perplexity_tokens=0",
        ]
    )
    s = runner.run_experiment(cfg, tmp_path)
    for key in ("efficacy", "generalization", "specificity"):
        assert 0.0 <= s[f"pre_{key}"] <= 1.0 and 0.0 <= s[key] <= 1.0
    assert s["efficacy"] > s["pre_efficacy"] + 0.03  # measured 0.072 -> 0.132 (20 edits): the tiny model never saw zsRE
    assert s["generalization"] > s["pre_generalization"]
    cases = _jsonl(tmp_path / "cases.jsonl")
    assert len(cases) == 20 and "efficacy_gap" not in cases[0]  # zsRE's evaluator, not CounterFact's
    assert s["dataset"] == "zsre"


def test_runner_uses_the_configured_datasets_loader_and_evaluator(tmp_path, monkeypatch):
    calls = []

    def spy(self, adapter, requests, progress=None):
        calls.append([r.case_id for r in requests])
        return [{"case_id": r.case_id, "efficacy": 0.5, "generalization": 0.25, "specificity": 0.125} for r in requests]

    def refuse(*args, **kwargs):
        raise AssertionError("the CounterFact evaluator ran on a zsRE run")

    monkeypatch.setattr(Zsre, "evaluate", spy)
    monkeypatch.setattr(CounterFact, "evaluate", refuse)
    cfg = compose_config(["model=tiny-gpt2", "dataset=zsre", "num_edits=4", "batch_size=2", "eval_every=1", *FAST])
    s = runner.run_experiment(cfg, tmp_path)
    assert calls[0] == calls[-1] == [0, 1, 2, 3] and [0, 1] in calls  # pre, the point after batch 1, post
    assert (s["efficacy"], s["generalization"], s["specificity"]) == (0.5, 0.25, 0.125)


def test_runner_never_names_a_dataset():
    text = (runner.__file__ and open(runner.__file__).read()).lower()
    assert "counterfact" not in text and "zsre" not in text


def test_general_capability_is_scored_at_every_batch_boundary(tmp_path):
    cfg = compose_config(
        [
            "model=tiny-gpt2",
            "num_edits=4",
            "batch_size=2",
            "eval.general=[sst2,mmlu]",
            "eval.general_items=20",
            "eval.general_every=1",
            "eval.generation=false",
            *FAST,
        ]
    )
    s = runner.run_experiment(cfg, tmp_path)
    rows = _jsonl(tmp_path / "evals.jsonl")
    assert [r["batches"] for r in rows] == [0, 1, 2] and [r["edits"] for r in rows] == [0, 2, 4]
    for row in rows:
        for task in ("sst2", "mmlu"):
            for metric in ("f1", "mcc"):
                value = row[f"general.{task}.{metric}"]
                # measured, or null because not one of the 20 answers parsed (and then the count says so)
                assert isinstance(value, float) or row[f"general.{task}.unparsed"] == 20, (row["batches"], task)
    assert (
        s["general.sst2.f1"] == rows[-1]["general.sst2.f1"] and s["pre_general.mmlu.f1"] == rows[0]["general.mmlu.f1"]
    )
    assert {k: v for k, v in rows[-1].items() if k.startswith("general.")} == {
        k: v for k, v in s.items() if k.startswith("general.")
    }


def test_unknown_general_task_fails_before_the_run_folder_is_made(tmp_path):
    cfg = compose_config(["model=tiny-gpt2", "eval.general=[sst3]"])
    with pytest.raises(Exception, match="sst3"):
        runner.run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_too_many_edits_for_the_dataset_is_an_error_unless_allowed(tmp_path):
    cfg = compose_config(["model=tiny-gpt2", "num_edits=400"])
    with pytest.raises(DataError, match=r"num_edits=400 but dataset 'counterfact' has only 300 records"):
        runner.run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    allowed = CounterFact(compose_config(["dataset.allow_fewer=true"]).dataset, compose_config([]).eval)
    assert len(allowed.load(400)) == 300


def _consistency_files(folder, records):
    """Snippets for each record's (relation, target_new) and a small IDF/vocabulary."""
    snippets = {}
    for r in records:
        snippets.setdefault(r.relation_id, {}).setdefault(r.target_new_id, []).append(
            {"text": f"{r.target_new} is known for {r.target_new} things in the city"}
        )
    vocab = {w: i for i, w in enumerate(["is", "known", "for", "things", "the", "city", "in"])}
    idf = np.array([1.0, 2.0, 1.5, 2.5, 0.5, 3.0, 0.7])
    rows = [
        {"relation_id": rel, "target_id": tid, "samples": samples}
        for rel, by in snippets.items()
        for tid, samples in by.items()
    ]
    (folder / "attribute_snippets.json").write_text(json.dumps(rows))
    np.save(folder / "idf.npy", idf)
    (folder / "tfidf_vocab.json").write_text(json.dumps(vocab))
    return idf, vocab


def test_consistency_is_unavailable_offline_and_a_number_with_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("BLUE_OFFLINE", "1")
    monkeypatch.setenv("BLUE_CACHE", str(tmp_path / "empty-cache"))
    base = ["model=tiny-gpt2", "num_edits=2", "batch_size=2", "eval.generation_length=30", *FAST]
    s = runner.run_experiment(compose_config(base), tmp_path / "offline")
    assert s["consistency"] is None and "attribute_snippets.json" in s["consistency_unavailable"]
    assert s["fluency"] > 0 and s["pre_fluency"] > 0

    records = load_counterfact("bundled", limit=2)
    files = tmp_path / "files"
    files.mkdir()
    idf, vocab = _consistency_files(files, records)
    paths = [
        f"dataset.snippets_path={files / 'attribute_snippets.json'}",
        f"dataset.idf_path={files / 'idf.npy'}",
        f"dataset.vocab_path={files / 'tfidf_vocab.json'}",
    ]
    s = runner.run_experiment(compose_config([*base, *paths]), tmp_path / "local")
    assert "consistency_unavailable" not in s and isinstance(s["consistency"], float)
    cases = _jsonl(tmp_path / "local" / "cases.jsonl")
    assert all(0.0 <= c["consistency"] <= 1.0 for c in cases)
    assert tfidf_cosine("the city", "the city", idf, vocab) == pytest.approx(1.0)


def test_a_prompt_longer_than_the_models_context_is_one_line_naming_the_record(tmp_path, load_tiny):
    records = json.loads(
        (Path(__file__).resolve().parents[2] / "blue_cli" / "assets" / "data" / "counterfact_sample.json").read_text()
    )[:2]
    records[1]["paraphrase_prompts"][0] = " ".join(["word"] * 300) + " and so"  # 300+ tokens, the tiny models take 256
    path = tmp_path / "long.json"
    path.write_text(json.dumps(records))
    cfg = compose_config(["model=tiny-gpt2", "num_edits=2", f"dataset.path={path}", *FAST])
    dataset = CounterFact(cfg.dataset, cfg.eval)
    requests = dataset.load(2)
    with pytest.raises(
        DataError,
        match=rf"case_id {records[1]['case_id']}: a prompt of \d+ tokens .* does not fit the model's 256 positions",
    ):
        dataset.check_fits(load_tiny("tiny-gpt2"), requests, cfg.context.n_tokens)
    dataset.check_fits(load_tiny("tiny-gpt2"), requests[:1], cfg.context.n_tokens)


def test_logger_tensorboard_logs_every_batch_and_evaluation_point(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = compose_config(
        [
            "model=tiny-gpt2",
            "num_edits=4",
            "batch_size=2",
            "eval_every=1",
            "eval.generation=false",
            "logger=tensorboard",
            *FAST,
        ]
    )
    s = runner.run_experiment(cfg, tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    batches = _jsonl(tmp_path / "batches.jsonl")
    write_errors = acc.Scalars("batch/write_error")
    assert [e.step for e in write_errors] == [1, 2]
    assert [e.value for e in write_errors] == pytest.approx([b["write_error"] for b in batches], rel=1e-6)
    efficacy = acc.Scalars("eval/efficacy")
    assert [e.step for e in efficacy] == [2, 4]
    assert efficacy[-1].value == pytest.approx(s["efficacy"])
