"""CounterFact loading: bundled sample, shared subsets, folders, slicing and error messages."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from blue_cli.datasets.counterfact.records import BUNDLED, BUNDLED_PATH, load_counterfact
from blue_cli.datasets.records import EditRequest
from blue_cli.errors import DataError

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SUBSET_1 = SHARED / "data" / "counterfact" / "mcf_random_subsets_1000" / "random_subset_1.json"


def _raw_records(n: int) -> list[dict]:
    return json.loads(BUNDLED_PATH.read_text())[:n]


def _write(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records))
    return path


def test_bundled_sample_loads_300_records() -> None:
    records = load_counterfact(BUNDLED)
    assert len(records) == 300
    first = records[0]
    assert isinstance(first, EditRequest)
    assert (first.case_id, first.subject, first.target_true) == (20962, "LinkedIn", "Microsoft")
    assert first.target_new == "Indianapolis"
    assert first.rewrite_prompt == "LinkedIn, by"
    assert len(first.paraphrase_prompts) == 2 and len(first.neighborhood_prompts) == 10
    assert isinstance(first.generation_prompts, tuple)
    assert len({r.case_id for r in records}) == 300


def test_rewrite_prompt_fills_only_the_first_placeholder() -> None:
    req = EditRequest(1, "A{x}", "{} is {} in {braces}", "b", "c")
    assert req.rewrite_prompt == "A{x} is {} in {braces}"


def test_shared_subset_via_relative_path() -> None:
    if not SUBSET_1.is_file():
        pytest.skip(f"shared data not present at {SUBSET_1}")
    records = load_counterfact(SUBSET_1)
    assert len(records) == 1000
    # The bundled sample is the first 300 records of this subset.
    assert [r.case_id for r in records[:300]] == [r.case_id for r in load_counterfact(BUNDLED)]


def test_extra_keys_are_ignored(tmp_path: Path) -> None:
    raw = _raw_records(2)
    raw[0]["neighborhood_samples"] = [{"subject": "x", "prompt": "{} y"}]
    raw[1]["something_new"] = 5
    assert len(load_counterfact(_write(tmp_path / "a.json", raw))) == 2


def test_folder_concatenates_json_files_sorted_by_name(tmp_path: Path) -> None:
    raw = _raw_records(5)
    _write(tmp_path / "b.json", raw[3:])
    _write(tmp_path / "a.json", raw[:3])
    (tmp_path / "notes.txt").write_text("ignored")
    records = load_counterfact(tmp_path)
    assert [r.case_id for r in records] == [r["case_id"] for r in raw]


def test_folder_rejects_duplicate_case_ids(tmp_path: Path) -> None:
    raw = _raw_records(2)
    _write(tmp_path / "a.json", raw)
    _write(tmp_path / "b.json", raw[1:])
    with pytest.raises(DataError, match=r"b\.json: record 0: case_id .* already appeared in a\.json"):
        load_counterfact(tmp_path)


def test_offset_and_limit() -> None:
    everything = load_counterfact(BUNDLED)
    window = load_counterfact(BUNDLED, offset=10, limit=5)
    assert window == everything[10:15]
    assert load_counterfact(BUNDLED, offset=295, limit=50) == everything[295:]
    assert load_counterfact(BUNDLED, offset=299) == everything[299:]


@pytest.mark.parametrize("offset", [300, 10_000, -1])
def test_bad_offset_says_how_many_records(offset: int) -> None:
    with pytest.raises(DataError) as info:
        load_counterfact(BUNDLED, offset=offset)
    if offset >= 0:
        assert "300 records" in str(info.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match="nope.json"):
        load_counterfact(missing)


def _break(record: dict, how: str) -> dict:
    record = copy.deepcopy(record)
    if how == "missing_subject":
        del record["requested_rewrite"]["subject"]
    elif how == "case_id_str":
        record["case_id"] = "7"
    elif how == "no_placeholder":
        record["requested_rewrite"]["prompt"] = "The capital is"
    elif how == "neighborhood_not_list":
        record["neighborhood_prompts"] = "Paris is in"
    elif how == "target_missing_str":
        del record["requested_rewrite"]["target_new"]["str"]
    elif how == "two_placeholders":
        record["requested_rewrite"]["prompt"] = "{}, by {}"
    elif how == "same_targets":
        record["requested_rewrite"]["target_new"]["str"] = record["requested_rewrite"]["target_true"]["str"] + " "
    elif how == "blank_paraphrase":
        record["paraphrase_prompts"] = [record["paraphrase_prompts"][0], "  "]
    return record


@pytest.mark.parametrize(
    ("how", "problem"),
    [
        ("missing_subject", "missing key 'requested_rewrite.subject'"),
        ("case_id_str", "'case_id' should be int, got str"),
        ("no_placeholder", "no '{}' placeholder"),
        ("neighborhood_not_list", "'neighborhood_prompts' should be list"),
        ("target_missing_str", "missing key 'requested_rewrite.target_new.str'"),
        ("two_placeholders", "requested_rewrite.prompt '{}, by {}' has 2 '{}' placeholders (one for the subject"),
        ("same_targets", "requested_rewrite.target_new.str equals target_true.str ('football ')"),
        ("blank_paraphrase", "paraphrase_prompts[1] is empty"),
    ],
)
def test_malformed_record_message_names_file_index_and_problem(tmp_path: Path, how: str, problem: str) -> None:
    raw = _raw_records(4)
    raw[2] = _break(raw[2], how)
    path = _write(tmp_path / "broken_set.json", raw)
    with pytest.raises(DataError) as info:
        load_counterfact(path)
    message = str(info.value)
    assert "broken_set.json" in message and "record 2" in message and problem in message
    assert "\n" not in message


def test_an_empty_paraphrase_list_is_accepted(tmp_path: Path) -> None:
    """Its generalization is null (see tests/unit/test_summary.py), not a reason to refuse the file."""
    raw = _raw_records(2)
    raw[1]["paraphrase_prompts"] = []
    assert load_counterfact(_write(tmp_path / "a.json", raw))[1].paraphrase_prompts == ()


def test_not_a_list_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="JSON list"):
        load_counterfact(_write(tmp_path / "obj.json", {"a": 1}))
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_counterfact(tmp_path / "bad.json")
