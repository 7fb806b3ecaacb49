"""Run-level means: a rate no case of a run has is null, not 0; a rate some cases lack is the
mean over the others, with how many lack it."""

from __future__ import annotations

import json
import math

from blue_cli.evaluation.summary import summarise
from blue_cli.runs.files import write_json

NAN = float("nan")


def test_a_rate_some_cases_lack_is_the_mean_over_the_others_with_a_count():
    cases = [
        {"case_id": 1, "efficacy": 1.0, "generalization": NAN, "specificity": 0.5},
        {"case_id": 2, "efficacy": 0.0, "generalization": 0.25, "specificity": 0.5},
        {"case_id": 3, "efficacy": 1.0, "generalization": 0.75, "specificity": 0.5},
    ]
    out = summarise(cases, prefix="pre_")
    assert out["pre_generalization"] == 0.5 and out["pre_generalization_cases_without"] == 1
    assert "pre_efficacy_cases_without" not in out and "pre_specificity_cases_without" not in out


def test_a_rate_no_case_has_is_null_in_the_summary_file(tmp_path):
    cases = [{"case_id": i, "efficacy": 1.0, "generalization": NAN, "generalization_gap": NAN} for i in range(2)]
    out = summarise(cases)
    assert math.isnan(out["generalization"]) and out["generalization_cases_without"] == 2
    written = json.loads(write_json(tmp_path, "summary.json", out).read_text())
    assert written["generalization"] is None and written["generalization_gap"] is None
    assert written["generalization_cases_without"] == 2 and written["efficacy"] == 1.0


def test_the_console_shows_a_missing_rate_as_a_dash_with_the_count():
    from rich.console import Console

    from blue_cli.reporting.console import summary_table

    summary = {"efficacy": 0.5, "generalization": NAN, "generalization_cases_without": 4, "pre_generalization": NAN}
    console = Console(width=100, record=True)
    console.print(summary_table(summary))
    text = console.export_text()
    [row] = [line for line in text.splitlines() if "generalization (" in line]
    assert "generalization (4 cases without)" in row and "nan" not in text.lower()
    assert row.split("│")[2].strip() == row.split("│")[3].strip() == "-"


def test_files_of_an_older_blue_read_their_renamed_gains_under_the_current_names(tmp_path):
    """target_gain / edit_gain (older runs) read as z_logprob_gain / edit_logprob_gain, in
    summary.json and in batches.jsonl; a current name already present is never overwritten."""
    from blue_cli.runs.files import current_names, read_jsonl, read_summary

    (tmp_path / "summary.json").write_text(json.dumps({"efficacy": 1.0, "target_gain": 2.5, "edit_gain": 1.5}))
    assert read_summary(tmp_path) == {"efficacy": 1.0, "z_logprob_gain": 2.5, "edit_logprob_gain": 1.5}
    (tmp_path / "batches.jsonl").write_text(json.dumps({"batch": 0, "edit_gain": 0.5}) + "\n")
    assert read_jsonl(tmp_path / "batches.jsonl") == [{"batch": 0, "edit_logprob_gain": 0.5}]
    both = {"edit_gain": 1.0, "edit_logprob_gain": 2.0}
    assert current_names(both) == both
