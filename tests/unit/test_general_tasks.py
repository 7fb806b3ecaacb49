"""General-capability tasks: data loading, prompt text, answer parsing, prompt fitting.

Expected prompts and parses are written out by hand from the reference protocol
(AlphaEdit glue_eval, REFERENCE.md §5); no model is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blue_cli.errors import ConfigError, DataError
from blue_cli.evaluation.general.answers import prompt_ids
from blue_cli.evaluation.general.metrics import UNPARSED
from blue_cli.evaluation.general.tasks import FEW_SHOT_RESERVE, GENERAL_TASKS, TASKS, load_task

SHARED_GLUE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "glue" / "json"


# --- parsing ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "text", "label"),
    [
        ("sst2", " positive review", 1),
        ("sst2", " Negative.", 0),
        ("sst2", " positive and negative", 1),  # positive is checked first
        ("sst2", " positive\nSentiment : negative", 0),  # only the text after the last cue counts
        ("sst2", " pos", UNPARSED),
        ("mrpc", " Yes, they", 1),
        ("mrpc", " No.", 0),
        ("mrpc", " not sure", 0),  # substring match, as the reference: "no" in "not"
        ("mrpc", " maybe", UNPARSED),
        ("cola", " yes no", 1),
        ("cola", " NO", 0),
        ("cola", "\n\n\n", UNPARSED),
        ("rte", " True", 1),
        ("rte", " true or false", 0),  # false is checked first for RTE
        ("rte", " unknown", UNPARSED),
        ("nli", " true or false", 1),  # true is checked first for NLI
        ("nli", " False", 0),
        ("mmlu", " B\n", 1),
        ("mmlu", " A\n(B)", 0),
        ("mmlu", " C\nA\n", 0),  # letters are tried in order A..D
        ("mmlu", " D", UNPARSED),  # a letter must be followed by a newline
        ("mmlu", " data\n", 0),  # the reference's substring quirk: "a\n"
    ],
)
def test_parse(task, text, label):
    assert TASKS[task].parse(text) == label


# --- prompts --------------------------------------------------------------------
def test_sst2_prompt_and_demonstration():
    rec = {"sentence": "a fine film ", "label": 1}
    assert TASKS["sst2"].question(rec) == "Review :a fine film \nSentiment :"
    assert TASKS["sst2"].demonstration(rec) == "Review : a fine film \nSentiment : positive\n"


def test_mmlu_prompt_and_demonstration():
    rec = {"question": "2+2?", "choices": ["1", "2", "3", "4"], "answer": 3}
    expected = "Question: 2+2?\n(A) 1\n(B) 2\n(C) 3\n(D) 4\nAnswer:"
    assert TASKS["mmlu"].question(rec) == expected
    assert TASKS["mmlu"].demonstration(rec) == expected + " D\n"
    assert TASKS["mmlu"].gold(rec) == 3


def test_pair_prompts():
    pair = {"sentence1": "A cat sat.", "sentence2": "A cat is sitting.", "label": 1}
    assert TASKS["mrpc"].question(pair) == (
        "Are the sentences paraphrases of each other.\nSentence 1: A cat sat.\nSentence 2: A cat is sitting.\nAnswer:"
    )
    assert TASKS["mrpc"].demonstration(pair).endswith("Answer: Yes\n")
    assert TASKS["cola"].question({"sentence": "Him went.", "label": 0}) == (
        "Is this sentence linguistically acceptable?\nSentence: Him went.\nAnswer: "
    )
    assert TASKS["cola"].demonstration({"sentence": "Him went.", "label": 0}).endswith("Answer: No\n")
    assert TASKS["rte"].question(pair) == "A cat sat.\nquestion: A cat is sitting. True or False?\nanswer:"
    nli = {"sentence1": "A cat sat.", "sentence2": "A cat is sitting.", "label": "entailment"}
    assert TASKS["nli"].question(nli) == "A cat sat. entails the A cat is sitting. True or False? Answer:"
    assert TASKS["nli"].demonstration(nli).endswith("Answer: True\n")
    assert TASKS["nli"].gold(nli) == 1 and TASKS["nli"].gold({**nli, "label": "not_entailment"}) == 0


def test_rte_gold_follows_glue_labels():
    # GLUE RTE: 0 = entailment -> the answer "True" (label 1 in our scoring).
    entailed = {"sentence1": "Kim sleeps.", "sentence2": "Kim sleeps.", "label": 0}
    assert TASKS["rte"].gold(entailed) == 1
    assert TASKS["rte"].demonstration(entailed).endswith("answer: True\n")
    assert TASKS["rte"].gold({**entailed, "label": 1}) == 0


# --- data -------------------------------------------------------------------------
@pytest.mark.parametrize("task", GENERAL_TASKS)
def test_bundled_sets_hold_reserve_and_100_items(task):
    data = load_task(task)
    assert len(data.shots) == FEW_SHOT_RESERVE and len(data.tests) == 100
    assert all(TASKS[task].gold(r) in TASKS[task].labels for r in data.tests)


@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="shared/data/glue/json not present on this machine")
@pytest.mark.parametrize("task", GENERAL_TASKS)
def test_bundled_sets_are_the_head_of_the_full_sets(task):
    full = json.loads((SHARED_GLUE / f"{task}.json").read_text(encoding="utf-8"))
    data = load_task(task, SHARED_GLUE)
    assert len(data.shots) + len(data.tests) == len(full)
    bundled = load_task(task)
    assert list(bundled.shots) == full[:10] and list(bundled.tests) == full[10:110]


def test_unknown_task_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown general task 'sst3'.*sst2, mrpc, cola, rte, mmlu, nli"):
        load_task("sst3")


def _write(folder: Path, name: str, records) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(records), encoding="utf-8")
    return folder


def test_local_folder_is_read(tmp_path):
    records = [{"sentence": f"s{i}", "label": i % 2} for i in range(13)]
    data = load_task("sst2", _write(tmp_path, "sst2", records))
    assert [r["sentence"] for r in data.tests] == ["s10", "s11", "s12"]
    assert data.source == str(tmp_path / "sst2.json")


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"sentence": "x", "label": 1}] * 10, "10 records, need more than the 10"),
        ([{"sentence": "x", "label": 1}] * 11 + [{"sentence": "y"}], "record 11 lacks label"),
        ([{"sentence": "x", "label": 1}] * 11 + [{"sentence": "y", "label": 2}], "record 11: label 2"),
        ([{"sentence": "x", "label": 1}] * 11 + ["oops"], "record 11 is a str"),
        ({"sentence": "x"}, "expected a JSON list"),
    ],
)
def test_bad_files_are_one_line_data_errors(tmp_path, records, message):
    folder = _write(tmp_path, "sst2", records)
    with pytest.raises(DataError, match=message) as err:
        load_task("sst2", folder)
    assert "\n" not in str(err.value)


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_task("sst2", tmp_path / "nope")
    with pytest.raises(DataError, match="does not exist"):
        load_task("mmlu", tmp_path)


# --- prompt fitting (a whitespace tokenizer with a BOS) --------------------------
class WordTokenizer:
    bos_token_id = 1

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [1] + [self.vocab.setdefault(w, len(self.vocab) + 10) for w in text.split()]}


SST = [{"sentence": f"w{i} w{i}", "label": i % 2} for i in range(3)]
ITEM = {"sentence": "good", "label": 1}


def test_demonstrations_added_in_order_when_they_fit():
    tok = WordTokenizer()
    spec = TASKS["sst2"]
    ids, cut = prompt_ids(tok, spec, ITEM, SST[:2], budget=1000)
    assert not cut
    assert ids == tok(spec.demonstration(SST[0]) + spec.demonstration(SST[1]) + spec.question(ITEM))["input_ids"]
    ids, _ = prompt_ids(tok, spec, ITEM, SST[:2], budget=None)
    assert ids == tok(spec.demonstration(SST[0]) + spec.demonstration(SST[1]) + spec.question(ITEM))["input_ids"]


def test_demonstrations_stop_at_the_budget():
    tok = WordTokenizer()
    spec = TASKS["sst2"]
    # question "Review :good \nSentiment :" -> BOS + 4 words = 5 tokens; each demonstration
    # "Review : wi wi \nSentiment : label" -> BOS + 7 words = 8 tokens (counted alone, as the reference).
    assert len(tok(spec.question(ITEM))["input_ids"]) == 5
    assert len(tok(spec.demonstration(SST[0]))["input_ids"]) == 8
    ids, cut = prompt_ids(tok, spec, ITEM, SST, budget=5 + 8 + 7)  # room for one demonstration only
    assert not cut
    assert ids == tok(spec.demonstration(SST[0]) + spec.question(ITEM))["input_ids"]


def test_overlong_question_keeps_bos_and_tail():
    tok = WordTokenizer()
    spec = TASKS["sst2"]
    long_item = {"sentence": " ".join(f"t{i}" for i in range(20)), "label": 0}
    full = tok(spec.question(long_item))["input_ids"]
    ids, cut = prompt_ids(tok, spec, long_item, (), budget=6)
    assert cut
    assert ids == [1] + full[-5:]
