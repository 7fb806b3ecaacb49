"""zsRE loading (bundled sample, folders, offsets, errors) and token accuracy, BOS included.

Data: the bundled sample is the first 300 records of ResolveUnderOverEdit's
``random_subset_0.json`` (MIT; MEND's zsRE eval split, Levy et al. 2017).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from blue_cli.datasets.zsre.metrics import (
    evaluate_zsre,
    summarise,
    teacher_forced,
    token_accuracy,
)
from blue_cli.datasets.zsre.records import BUNDLED, BUNDLED_PATH, load_zsre
from blue_cli.errors import DataError, OfflineError

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SUBSET_0 = SHARED / "data" / "zsre" / "zsre_random_subsets_1000" / "random_subset_0.json"
TINY = Path(__file__).resolve().parents[2] / "blue_cli" / "assets" / "tiny"


def _raw(n: int) -> list[dict]:
    return json.loads(BUNDLED_PATH.read_text(encoding="utf-8"))[:n]


def _write(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


# --- loading -----------------------------------------------------------------


def test_bundled_sample_maps_fields_as_the_reference() -> None:
    records = load_zsre(BUNDLED)
    assert len(records) == 300
    first = records[0]
    assert first.case_id == 0 and first.subject == "Life Electric"
    assert first.prompt == "The designer for {} was?"
    assert first.rewrite_prompt == "The designer for Life Electric was?"
    # The reference edits towards the gold answer (answers[0]), not MEND's alt.
    assert (first.target_new, first.target_true) == ("Daniel Libeskind", "Mitsumasa Anno")
    assert first.paraphrase_prompts == ("What architect did Life Electric design?",)
    assert first.neighborhood_prompts == ("nq question: most consecutive games with 20+ points - nba history?",)
    assert first.neighborhood_answers == ("126",)
    raw = _raw(300)
    assert [r.rewrite_prompt for r in records] == [r["src"] for r in raw]
    assert [r.case_id for r in records] == list(range(300))


def test_bundled_sample_is_the_head_of_the_shared_subset_without_extra_key() -> None:
    if not SUBSET_0.is_file():
        pytest.skip(f"shared data not present at {SUBSET_0}")
    shared = json.loads(SUBSET_0.read_text(encoding="utf-8"))[:300]
    for rec in shared:
        rec.pop("neighborhood_samples")
    assert _raw(300) == shared
    assert load_zsre(SUBSET_0, limit=300) == load_zsre(BUNDLED)


def test_case_ids_are_stable_under_offset_and_limit() -> None:
    everything = load_zsre(BUNDLED)
    part = load_zsre(BUNDLED, offset=5, limit=3)
    assert [r.case_id for r in part] == [5, 6, 7]
    assert part == everything[5:8]


def test_folder_concatenates_files_by_name_with_running_case_ids(tmp_path: Path) -> None:
    raw = _raw(5)
    _write(tmp_path / "b.json", raw[3:])
    _write(tmp_path / "a.json", raw[:3])
    records = load_zsre(tmp_path)
    assert [r.subject for r in records] == [r["subject"] for r in raw]
    assert [r.case_id for r in records] == [0, 1, 2, 3, 4]
    assert load_zsre(tmp_path, offset=4)[0].case_id == 4


def test_empty_alt_is_accepted_because_the_target_is_the_gold_answer(tmp_path: Path) -> None:
    raw = _raw(1)
    raw[0]["alt"] = ""
    record = load_zsre(_write(tmp_path / "z.json", raw))[0]
    assert (record.target_new, record.target_true) == ("Daniel Libeskind", "")


def test_alt_equal_to_the_gold_answer_is_accepted_with_an_info_line(tmp_path: Path, caplog) -> None:
    """Nothing reads target_true in zsRE (the edit targets the gold answer), so the run stays
    meaningful: no error, no console warning; one info line for whoever compares with EasyEdit."""
    raw = _raw(3)
    raw[1]["alt"] = raw[1]["answers"][0]
    with caplog.at_level("INFO", logger="blue_cli.datasets.zsre.records"):
        records = load_zsre(_write(tmp_path / "z.json", raw))
    assert records[1].target_true == records[1].target_new
    [line] = [r for r in caplog.records if "equal to the gold answer" in r.getMessage()]
    assert line.levelname == "INFO" and "1 of 3 records" in line.getMessage() and "case_id 1" in line.getMessage()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("rephrase"), "missing key 'rephrase'"),
        (lambda r: r.update(src="Who made {} " + r["src"]), "holds '{}', the placeholder"),
        (lambda r: r.update(answers="Paris"), "'answers' should be list, got str"),
        (lambda r: r.update(answers=[]), "'answers' is empty"),
        (lambda r: r.update(subject="Nobody"), "subject 'Nobody' does not occur in src"),
        (lambda r: r.update(loc="where is x"), "does not start with 'nq question: '"),
        (lambda r: r.update(loc_ans=" "), "'loc_ans' is empty"),
    ],
)
def test_bad_records_name_file_and_index(tmp_path: Path, change, message: str) -> None:
    raw = _raw(3)
    bad = copy.deepcopy(raw[2])
    change(bad)
    raw[2] = bad
    path = _write(tmp_path / "bad.json", raw)
    with pytest.raises(DataError) as info:
        load_zsre(path)
    text = str(info.value)
    assert text.startswith(f"{path}: record 2: ") and message in text
    assert "\n" not in text


def test_not_a_list_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="JSON list"):
        load_zsre(_write(tmp_path / "d.json", {"a": 1}))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="zsRE file not found: .*nope.json"):
        load_zsre(tmp_path / "nope.json")
    with pytest.raises(DataError, match="offset 300 is past the end"):
        load_zsre(BUNDLED, offset=300)


def test_none_downloads_validates_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLUE_OFFLINE", raising=False)
    (tmp_path / "served").mkdir()
    served = _write(tmp_path / "served" / "zsre_mend_eval.json", _raw(4))
    cache = tmp_path / "cache"
    records = load_zsre(None, url=served.as_uri(), cache_dir=cache)
    assert [r.subject for r in records] == [r["subject"] for r in _raw(4)]
    assert (cache / "zsre_mend_eval.json").is_file()
    # Second time the cached file is used: no network needed.
    monkeypatch.setenv("BLUE_OFFLINE", "1")
    served.unlink()
    assert len(load_zsre(None, url=served.as_uri(), cache_dir=cache)) == 4


def test_invalid_download_leaves_nothing_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BLUE_OFFLINE", raising=False)
    raw = _raw(2)
    del raw[1]["loc"]
    served = _write(tmp_path / "zsre_mend_eval.json", raw)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"not valid: .*record 1: missing key 'loc'"):
        load_zsre(None, url=served.as_uri(), cache_dir=cache)
    assert not cache.exists() or not any(cache.iterdir())
    monkeypatch.setenv("BLUE_OFFLINE", "1")
    with pytest.raises(OfflineError, match="BLUE_OFFLINE"):
        load_zsre(None, url=served.as_uri(), cache_dir=cache)


# --- token accuracy -------------------------------------------------------------


def test_token_accuracy_known_values() -> None:
    assert token_accuracy([5, 7, 9], [5, 8, 9]) == pytest.approx(2 / 3)
    assert token_accuracy([1], [1]) == 1.0
    assert token_accuracy([2, 2], [1, 3]) == 0.0
    with pytest.raises(ValueError, match="2 predictions for 3 target tokens"):
        token_accuracy([1, 2], [1, 2, 3])


def _tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY / name)


def test_bos_is_never_a_target_token_with_llama_tokenizer() -> None:
    tok = _tokenizer("tiny-llama")
    assert tok("Paris")["input_ids"][0] == tok.bos_token_id  # this tokenizer prepends a BOS
    seq = teacher_forced(tok, "The capital of France is", "Paris")
    prompt_ids = tok("The capital of France is")["input_ids"]
    answer_ids = tok(" Paris", add_special_tokens=False)["input_ids"]
    assert seq.ids == tuple(prompt_ids + answer_ids)
    assert seq.ids.count(tok.bos_token_id) == 1 and seq.ids[0] == tok.bos_token_id
    assert seq.target == tuple(answer_ids) and tok.bos_token_id not in seq.target
    # The first scored position is the prompt's last token, so target[j] is read at len(prompt)-1+j.
    assert seq.positions == tuple(range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(answer_ids)))
    assert [seq.ids[p + 1] for p in seq.positions] == list(seq.target)


def test_no_bos_with_gpt2_tokenizer() -> None:
    tok = _tokenizer("tiny-gpt2")
    seq = teacher_forced(tok, "The capital of France is", "Paris")
    assert tok.bos_token_id not in seq.ids
    assert seq.positions[0] == len(tok("The capital of France is")["input_ids"]) - 1


class _OracleAdapter:
    """A fake model that predicts the true next token except one chosen token id.

    Hidden states are one-hot rows over the vocabulary and ``logits_at`` is the
    identity, so the argmax at position t is ``ids[t + 1]`` unless that id is ``miss``.
    """

    def __init__(self, tok, miss: int) -> None:
        self.tok, self.miss, self.device = tok, miss, torch.device("cpu")
        self.vocab = len(tok)

    def base_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        nxt = torch.roll(input_ids, -1, dims=1)
        nxt[nxt == self.miss] = 0 if self.miss != 0 else 1
        return torch.nn.functional.one_hot(nxt, self.vocab).float()

    def logits_at(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def test_evaluate_zsre_counts_answer_tokens_only_with_bos() -> None:
    tok = _tokenizer("tiny-llama")
    req = load_zsre(BUNDLED, limit=1)[0]
    new_ids = tok(" " + req.target_new, add_special_tokens=False)["input_ids"]
    nq_ids = tok(" " + req.neighborhood_answers[0], add_special_tokens=False)["input_ids"]
    assert len(new_ids) >= 2 and new_ids[0] not in new_ids[1:]
    perfect = evaluate_zsre(_OracleAdapter(tok, miss=-1), [req])
    assert perfect == [{"case_id": 0, "efficacy": 1.0, "generalization": 1.0, "specificity": 1.0}]
    # Missing exactly the answer's first token costs 1/len(answer tokens): the BOS is
    # not a scored token (it would add one to the denominator) and nothing else moved.
    missed = evaluate_zsre(_OracleAdapter(tok, miss=new_ids[0]), [req])[0]
    expected = 1 - new_ids.count(new_ids[0]) / len(new_ids)
    assert missed["efficacy"] == pytest.approx(expected)
    assert missed["generalization"] == pytest.approx(expected)
    assert missed["specificity"] == pytest.approx(1 - nq_ids.count(new_ids[0]) / len(nq_ids))


def test_evaluate_zsre_rejects_missing_neighbour_answers_and_summarises() -> None:
    tok = _tokenizer("tiny-gpt2")
    req = load_zsre(BUNDLED, limit=1)[0]
    with pytest.raises(DataError, match="case 0: 1 neighbourhood prompts but 0 neighbourhood answers"):
        evaluate_zsre(_OracleAdapter(tok, miss=-1), [replace(req, neighborhood_answers=())])
    no_para = replace(req, paraphrase_prompts=())
    cases = evaluate_zsre(_OracleAdapter(tok, miss=-1), [no_para, req])
    assert math.isnan(cases[0]["generalization"])
    assert summarise(cases) == {
        "efficacy": 1.0,
        "generalization": 1.0,
        "generalization_cases_without": 1,
        "specificity": 1.0,
    }
