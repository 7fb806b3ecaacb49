"""Load CounterFact (ROME/MEMIT ``multi_counterfact`` format) into :class:`EditRequest` records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blue_cli import ASSETS_DIR
from blue_cli.datasets.files import (
    BUNDLED,
    RecordFormat,
    check_lengths,
    field,
    load_records,
    validate_records,
)
from blue_cli.datasets.records import EditRequest
from blue_cli.errors import DataError

CANONICAL_URL = "https://rome.baulab.info/data/dsets/multi_counterfact.json"
BUNDLED_PATH = ASSETS_DIR / "data" / "counterfact_sample.json"
"""300 records (the first of shared ``random_subset_1.json``; CounterFact is MIT) so runs work offline."""

_PROMPT_LISTS = ("paraphrase_prompts", "neighborhood_prompts", "generation_prompts")

__all__ = ["BUNDLED", "BUNDLED_PATH", "CANONICAL_URL", "load_counterfact", "parse_record", "validate_counterfact_file"]


def _parse(raw: Any, source: str, index: int, position: int) -> EditRequest:
    return parse_record(raw, source=source, index=index)  # a CounterFact record carries its own case_id


FORMAT = RecordFormat("CounterFact", BUNDLED_PATH, "multi_counterfact.json", _parse)


def load_counterfact(
    path: str | Path | None,
    *,
    offset: int = 0,
    limit: int | None = None,
    url: str = CANONICAL_URL,
    cache_dir: Path | None = None,
) -> list[EditRequest]:
    """Read edit requests and return ``records[offset:offset + limit]``.

    ``path`` is one of:

    * a JSON file holding a list of CounterFact records;
    * a folder: every ``*.json`` in it, sorted by file name, concatenated in that
      order (e.g. a folder of ``random_subset_*.json`` files);
    * ``"bundled"`` (:data:`BUNDLED`): the 300-record sample shipped in the package;
    * ``None``: the full file from ``url`` cached in ``cache_dir`` (default
      ``cache_root()/"data"``), downloaded and validated on first use.

    Every record is validated (not only the selected ones) so a bad file fails
    before any model time is spent; extra keys are ignored. Duplicate ``case_id``s
    are rejected because results are keyed by them.
    """
    return load_records(FORMAT, path, offset=offset, limit=limit, url=url, cache_dir=cache_dir)


def validate_counterfact_file(path: Path, *, name: str | None = None) -> None:
    """Raise DataError unless ``path`` is a non-empty JSON list of valid records (see
    :func:`blue_cli.datasets.files.validate_records`)."""
    validate_records(FORMAT, path, name=name)


def parse_record(raw: Any, *, source: str, index: int) -> EditRequest:
    """Convert one raw CounterFact dict, or raise a one-line DataError naming file and index."""

    def fail(problem: str) -> DataError:
        return DataError(f"{source}: record {index}: {problem}")

    if not isinstance(raw, dict):
        raise fail(f"expected an object, got {type(raw).__name__}")
    rewrite = field(raw, "requested_rewrite", dict, fail)
    case_id = field(raw, "case_id", int, fail)
    subject = field(rewrite, "subject", str, fail, "requested_rewrite.")
    prompt = field(rewrite, "prompt", str, fail, "requested_rewrite.")
    check_lengths({"requested_rewrite.subject": subject, "requested_rewrite.prompt": prompt}, fail)
    targets, target_objs = [], []
    for key in ("target_new", "target_true"):
        target = field(rewrite, key, dict, fail, "requested_rewrite.")
        text = field(target, "str", str, fail, f"requested_rewrite.{key}.")
        if not text.strip():
            raise fail(f"requested_rewrite.{key}.str is empty")
        check_lengths({f"requested_rewrite.{key}.str": text}, fail)
        targets.append(text)
        target_objs.append(target)
    check_placeholder(prompt, fail)
    if not subject.strip():
        raise fail("requested_rewrite.subject is empty")
    if targets[0].strip() == targets[1].strip():
        raise fail(
            f"requested_rewrite.target_new.str equals target_true.str ({targets[0]!r}): the edit would ask for "
            "what the model should already say, and efficacy could never count it"
        )
    lists = [_prompt_list(raw, key, fail) for key in _PROMPT_LISTS]
    # Optional: only consistency needs them (snippets are keyed by relation and target id).
    relation_id = _optional_str(rewrite, "relation_id", fail, "requested_rewrite.")
    target_new_id = _optional_str(target_objs[0], "id", fail, "requested_rewrite.target_new.")
    return EditRequest(
        case_id,
        subject,
        prompt,
        targets[0],
        targets[1],
        *lists,
        relation_id=relation_id,
        target_new_id=target_new_id,
    )


def check_placeholder(prompt: str, fail: Any) -> None:
    """Exactly one ``{}``: the subject fills the first only, so a second would stay in the text."""
    n = prompt.count("{}")
    if n == 0:
        raise fail(f"requested_rewrite.prompt {prompt!r} has no '{{}}' placeholder for the subject")
    if n > 1:
        raise fail(f"requested_rewrite.prompt {prompt!r} has {n} '{{}}' placeholders (one for the subject, no more)")


def _prompt_list(raw: dict, key: str, fail: Any) -> tuple[str, ...]:
    """A list of prompts; an empty list is allowed (its rate is null), a blank prompt is not
    (scored, it would give a number that means nothing)."""
    value = field(raw, key, list, fail)
    if not all(isinstance(item, str) for item in value):
        raise fail(f"{key} must be a list of strings")
    blank = [i for i, item in enumerate(value) if not item.strip()]
    if blank:
        raise fail(f"{key}[{blank[0]}] is empty")
    check_lengths({key: value}, fail)
    return tuple(value)


def _optional_str(obj: dict, key: str, fail: Any, prefix: str) -> str:
    """``obj[key]`` when present (must then be a string), else ""."""
    return field(obj, key, str, fail, prefix) if key in obj else ""
