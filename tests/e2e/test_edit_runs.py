"""Issue 2's acceptance runs: 40 CounterFact edits in batches of 10, both strategies."""

import json

import pytest

from tests.e2e.conftest import run_blue, summary_of

CASES = [(m, s) for m in ("tiny-gpt2", "tiny-llama") for s in ("spread", "blue")]


@pytest.mark.parametrize("model,strategy", CASES)
def test_edit_improves_efficacy_and_target_logprob(edit_runs, model, strategy):
    s = summary_of(edit_runs[(model, strategy)])
    print(json.dumps({k: s[k] for k in ("efficacy", "generalization", "specificity", "target_logprob_gain", "write_error")}))
    assert s["efficacy"] > s["pre_efficacy"]
    assert s["target_logprob_gain"] >= 0.5
    for key in ("efficacy", "generalization", "specificity", "pre_efficacy", "pre_generalization", "pre_specificity"):
        assert 0.0 <= s[key] <= 1.0
    assert s["written_layers"] == ([1, 3] if strategy == "blue" else [1, 2, 3])


@pytest.mark.parametrize("model,strategy", CASES[:2])
def test_run_folder_contents(edit_runs, model, strategy):
    run_dir = edit_runs[(model, strategy)]
    for name in ("config.yaml", "summary.json", "batches.jsonl", "cases.jsonl", "cases_pre.jsonl", "run_info.json", "blue.log", "context_templates.json"):
        assert (run_dir / name).is_file(), name
    batches = [json.loads(line) for line in (run_dir / "batches.jsonl").read_text().splitlines()]
    assert [b["batch"] for b in batches] == [0, 1, 2, 3]
    assert all(b["edits"] == 10 and b["seconds"] > 0 and "write_error" in b for b in batches)
    cases = [json.loads(line) for line in (run_dir / "cases.jsonl").read_text().splitlines()]
    assert len(cases) == 40 and "pre_efficacy" in cases[0]
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 0 and info["torch"]


def test_report_reprints_the_tables(edit_runs, tmp_path):
    proc = run_blue(["report", str(edit_runs[("tiny-gpt2", "blue")])], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "efficacy" in proc.stdout and "write_error" in proc.stdout
