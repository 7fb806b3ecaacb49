"""The six general-capability tasks: records, prompts and answer parsing.

Protocol of the reference's ``glue_eval`` (AlphaEdit / BLUE, REFERENCE.md §5): each
data file is a fixed list whose first 10 records are reserved as few-shot
demonstrations and whose following records are test items; a prompt ends with an
answer cue ("Sentiment :", "Answer:", ...), the model greedily continues it, and the
continuation is mapped to a label by keyword: for the text after the last answer cue,
the first matching keyword in a fixed order wins (SST-2: positive/negative; MRPC and
CoLA: yes/no; RTE: false/true; NLI: true/false), and for MMLU the continuation must
contain "a\\n" ... "d\\n". Anything else is ``-1`` (unparsed, scored as wrong).
Keywords match as substrings, as in the reference, so "no" also matches "not".
The prompt wording, its spacing included, follows the reference so scores compare.

Differs from reference: GLUE's RTE labels are 0 = entailment, 1 = not_entailment, and
the reference reads label 1 as the answer "True", inverting the gold answers (its
RTE MCC has the wrong sign). Here gold RTE answers follow the real relation: "True"
when the first sentence entails the second.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blue_cli import ASSETS_DIR
from blue_cli.errors import ConfigError, DataError
from blue_cli.evaluation.general.metrics import UNPARSED

GENERAL_TASKS = ("sst2", "mrpc", "cola", "rte", "mmlu", "nli")
FEW_SHOT_RESERVE = 10
"""Records reserved at the head of every file for demonstrations (the reference's split)."""
BUNDLED = "bundled"
BUNDLED_DIR = ASSETS_DIR / "data" / "general"
"""110 records per task (10 reserved + 100 test), the head of each shared/data/glue set."""

Record = Mapping[str, Any]


@dataclass(frozen=True)
class TaskSpec:
    """How one task turns a record into a prompt, a gold label and a parsed answer."""

    name: str
    keys: tuple[str, ...]
    labels: tuple[int, ...]
    question: Callable[[Record], str]
    demonstration: Callable[[Record], str]
    gold: Callable[[Record], int]
    parse: Callable[[str], int]


def _keyword_parser(cue: str, keywords: Sequence[tuple[str, int]]) -> Callable[[str], int]:
    """Label of the first keyword found (case-insensitive) after the last ``cue``."""

    def parse(text: str) -> int:
        answer = text.split(cue)[-1].strip().lower()
        for word, label in keywords:
            if word in answer:
                return label
        return UNPARSED

    return parse


def _parse_choice(text: str) -> int:
    """MMLU: a letter followed by a newline anywhere in the continuation, A first."""
    lowered = text.lower()
    for label, letter in enumerate("abcd"):
        if f"{letter}\n" in lowered:
            return label
    return UNPARSED


def _yes_no(label: int) -> str:
    return "Yes" if label == 1 else "No"


def _true_false(label: int) -> str:
    return "True" if label == 1 else "False"


def _choices(rec: Record) -> str:
    return "".join(f"({letter}) {choice}\n" for letter, choice in zip("ABCD", rec["choices"]))


_MRPC_HEAD = "Are the sentences paraphrases of each other.\n"
_COLA_HEAD = "Is this sentence linguistically acceptable?\n"


def _mrpc_body(rec: Record) -> str:
    return f"{_MRPC_HEAD}Sentence 1: {rec['sentence1']}\nSentence 2: {rec['sentence2']}\n"


def _rte_gold(rec: Record) -> int:
    return 1 if rec["label"] == 0 else 0


def _nli_gold(rec: Record) -> int:
    return 1 if rec["label"] == "entailment" else 0


def _nli_question(rec: Record) -> str:
    return f"{rec['sentence1']} entails the {rec['sentence2']} True or False? Answer:"


TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(
        name="sst2",
        keys=("sentence", "label"),
        labels=(0, 1),
        question=lambda r: f"Review :{r['sentence']}\nSentiment :",
        demonstration=lambda r: (
            f"Review : {r['sentence']}\nSentiment : {'positive' if r['label'] == 1 else 'negative'}\n"
        ),
        gold=lambda r: int(r["label"]),
        parse=_keyword_parser("Sentiment :", (("positive", 1), ("negative", 0))),
    ),
    "mrpc": TaskSpec(
        name="mrpc",
        keys=("sentence1", "sentence2", "label"),
        labels=(0, 1),
        question=lambda r: f"{_mrpc_body(r)}Answer:",
        demonstration=lambda r: f"{_mrpc_body(r)}Answer: {_yes_no(r['label'])}\n",
        gold=lambda r: int(r["label"]),
        parse=_keyword_parser("Answer:", (("yes", 1), ("no", 0))),
    ),
    "cola": TaskSpec(
        name="cola",
        keys=("sentence", "label"),
        labels=(0, 1),
        question=lambda r: f"{_COLA_HEAD}Sentence: {r['sentence']}\nAnswer: ",
        demonstration=lambda r: f"{_COLA_HEAD}Sentence: {r['sentence']}\nAnswer: {_yes_no(r['label'])}\n",
        gold=lambda r: int(r["label"]),
        parse=_keyword_parser("Answer:", (("yes", 1), ("no", 0))),
    ),
    "rte": TaskSpec(
        name="rte",
        keys=("sentence1", "sentence2", "label"),
        labels=(0, 1),
        question=lambda r: f"{r['sentence1']}\nquestion: {r['sentence2']} True or False?\nanswer:",
        demonstration=lambda r: (
            f"{r['sentence1']}\nquestion: {r['sentence2']} True or False?\nanswer: {_true_false(_rte_gold(r))}\n"
        ),
        gold=_rte_gold,
        parse=_keyword_parser("answer:", (("false", 0), ("true", 1))),
    ),
    "mmlu": TaskSpec(
        name="mmlu",
        keys=("question", "choices", "answer"),
        labels=(0, 1, 2, 3),
        question=lambda r: f"Question: {r['question']}\n{_choices(r)}Answer:",
        demonstration=lambda r: f"Question: {r['question']}\n{_choices(r)}Answer: {'ABCD'[r['answer']]}\n",
        gold=lambda r: int(r["answer"]),
        parse=_parse_choice,
    ),
    "nli": TaskSpec(
        name="nli",
        keys=("sentence1", "sentence2", "label"),
        labels=(0, 1),
        question=_nli_question,
        demonstration=lambda r: f"{_nli_question(r)} {_true_false(_nli_gold(r))}\n",
        gold=_nli_gold,
        parse=_keyword_parser("True or False? Answer:", (("true", 1), ("false", 0))),
    ),
}


@dataclass(frozen=True)
class TaskData:
    """One task's reserved demonstrations and its test items, in file order."""

    spec: TaskSpec
    shots: tuple[Record, ...]
    tests: tuple[Record, ...]
    source: str

    @property
    def name(self) -> str:
        return self.spec.name


def task_spec(name: str) -> TaskSpec:
    """The spec of a task by name; an unknown name is a one-line ConfigError."""
    if name not in TASKS:
        raise ConfigError(f"unknown general task '{name}' (choose: {', '.join(GENERAL_TASKS)})")
    return TASKS[name]


def _task_file(name: str, path: str | Path | None) -> Path:
    if path is None or str(path) == BUNDLED:
        return BUNDLED_DIR / f"{name}.json"
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"general-eval data path {folder} is not a folder (expected one holding <task>.json, or '{BUNDLED}')"
        )
    return folder / f"{name}.json"


def _validate(spec: TaskSpec, raw: Any, file: Path, index: int) -> Record:
    if not isinstance(raw, dict):
        raise DataError(f"{file}: record {index} is a {type(raw).__name__}, expected an object")
    missing = [k for k in spec.keys if k not in raw]
    if missing:
        raise DataError(
            f"{file}: record {index} lacks {', '.join(missing)} (a {spec.name} record needs {', '.join(spec.keys)})"
        )
    if spec.name == "mmlu" and (not isinstance(raw["choices"], list) or len(raw["choices"]) != 4):
        raise DataError(f"{file}: record {index}: choices must be a list of 4 strings")
    if spec.name == "nli":
        if raw["label"] not in ("entailment", "not_entailment"):
            raise DataError(f"{file}: record {index}: label {raw['label']!r} (choose: entailment, not_entailment)")
    elif raw[spec.keys[-1]] not in spec.labels:
        raise DataError(f"{file}: record {index}: {spec.keys[-1]} {raw[spec.keys[-1]]!r} (choose: {spec.labels})")
    return raw


def load_task(name: str, path: str | Path | None = None) -> TaskData:
    """Read one task's records: ``path`` None / ``"bundled"`` is the packaged subset,
    else a folder holding ``<name>.json`` (e.g. shared/data/glue/json for the full sets).

    Every record is validated so a bad file fails before any model time is spent.
    """
    spec = task_spec(name)
    file = _task_file(name, path)
    if not file.is_file():
        raise DataError(f"no {name} data: {file} does not exist")
    try:
        records = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{file}: not readable JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(records, list):
        raise DataError(f"{file}: expected a JSON list of records, got {type(records).__name__}")
    if len(records) <= FEW_SHOT_RESERVE:
        raise DataError(f"{file}: {len(records)} records, need more than the {FEW_SHOT_RESERVE} reserved for few-shot")
    checked = tuple(_validate(spec, raw, file, i) for i, raw in enumerate(records))
    return TaskData(spec=spec, shots=checked[:FEW_SHOT_RESERVE], tests=checked[FEW_SHOT_RESERVE:], source=str(file))
