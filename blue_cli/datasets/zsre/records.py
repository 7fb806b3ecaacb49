"""Load zsRE question-answering edits (MEND eval format) into :class:`EditRequest` records.

A MEND record holds ``subject``, ``src`` (the question), ``rephrase`` (a paraphrase),
``answers`` (gold answers), ``alt`` (MEND's alternative answer), ``loc`` (an unrelated
Natural Questions prompt, "nq question: ...") and ``loc_ans`` (its gold answer).

Mapping, as the reference (ROME/MEMIT/AlphaEdit/BLUE ``dsets/zsre.py``) builds it:

* ``prompt`` is ``src`` with the subject's first occurrence replaced by ``{}``
  (filling it gives ``src`` back; the reference replaces every occurrence, which
  fills to the same text);
* ``target_new`` is ``answers[0]``: the reference edits the model towards the gold
  answer, not towards MEND's ``alt`` (EasyEdit uses ``alt``; a few records leave it empty);
* ``target_true`` is ``alt`` (possibly ""). No zsRE metric and no editing method reads
  it, so an ``alt`` equal to the gold answer (8 of the bundled 300) leaves the run as
  meaningful as any other: it is accepted, with one info line in the log.
  Differs from reference: the reference stores the placeholder "<|endoftext|>";
* ``paraphrase_prompts = (rephrase,)``; ``neighborhood_prompts = (loc + "?",)`` with
  ``neighborhood_answers = (loc_ans,)``: the reference appends "?" to ``loc`` before
  the answer tokens;
* ``case_id`` is the record's position in the whole input (all files in name order),
  so it is stable whatever ``offset``/``limit`` select.

The bundled sample (:data:`BUNDLED_PATH`) is the first 300 records of
``random_subset_0.json`` from bhimanbaghel/ResolveUnderOverEdit (repo MIT; a slice of
MEND's ``zsre_mend_eval.json``; zsRE is Levy et al. 2017, no separate licence seen),
with that repo's extra ``neighborhood_samples`` key removed.
"""

from __future__ import annotations

import logging
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

CANONICAL_URL = "https://rome.baulab.info/data/dsets/zsre_mend_eval.json"
"""The file ROME/MEMIT's ``MENDQADataset`` downloads (19,086 records)."""
BUNDLED_PATH = ASSETS_DIR / "data" / "zsre_sample.json"
NQ_PREFIX = "nq question: "

log = logging.getLogger(__name__)

_TEXT_KEYS = ("subject", "src", "rephrase", "alt", "loc", "loc_ans")

__all__ = ["BUNDLED", "BUNDLED_PATH", "CANONICAL_URL", "load_zsre", "parse_zsre_record"]


def _parse(raw: Any, source: str, index: int, position: int) -> EditRequest:
    return parse_zsre_record(raw, source=source, index=index, case_id=position)


FORMAT = RecordFormat("zsRE", BUNDLED_PATH, "zsre_mend_eval.json", _parse)


def load_zsre(
    path: str | Path | None,
    *,
    offset: int = 0,
    limit: int | None = None,
    url: str = CANONICAL_URL,
    cache_dir: Path | None = None,
) -> list[EditRequest]:
    """Read zsRE edit requests and return ``records[offset:offset + limit]``.

    ``path`` means what it means for :func:`blue_cli.datasets.counterfact.records.load_counterfact`:
    a JSON file, a folder of ``*.json`` (sorted by name, concatenated), ``"bundled"``,
    or ``None`` to download ``url`` into ``cache_dir`` (default ``cache_root()/"data"``).
    Every record is validated before any is returned; extra keys are ignored.
    """
    selected = load_records(FORMAT, path, offset=offset, limit=limit, url=url, cache_dir=cache_dir)
    _note_alt_equal_to_answer(selected)
    return selected


def _note_alt_equal_to_answer(records: list[EditRequest]) -> None:
    """One info line when some records' ``alt`` is their gold answer: harmless (nothing reads
    ``target_true`` in zsRE), but a reader comparing with EasyEdit, which edits towards ``alt``, may ask."""
    same = [r.case_id for r in records if r.target_true.strip() == r.target_new.strip()]
    if same:
        log.info(
            "zsRE: %d of %d records have 'alt' equal to the gold answer (first: case_id %d); "
            "the edit targets the gold answer and no zsRE metric reads 'alt', so they count as any other",
            len(same),
            len(records),
            same[0],
        )


def validate_zsre_file(path: Path, *, name: str | None = None) -> None:
    """Raise DataError unless ``path`` is a non-empty JSON list of valid zsRE records."""
    validate_records(FORMAT, path, name=name)


def parse_zsre_record(raw: Any, *, source: str, index: int, case_id: int) -> EditRequest:
    """Convert one MEND-format dict, or raise a one-line DataError naming file and index."""

    def fail(problem: str) -> DataError:
        return DataError(f"{source}: record {index}: {problem}")

    if not isinstance(raw, dict):
        raise fail(f"expected an object, got {type(raw).__name__}")
    text = {key: field(raw, key, str, fail) for key in _TEXT_KEYS}
    answers = field(raw, "answers", list, fail)
    if not all(isinstance(a, str) for a in answers):
        raise fail("'answers' must be a list of strings")
    check_lengths({**text, "answers": answers}, fail)
    for key in ("subject", "src", "rephrase", "loc_ans"):
        if not text[key].strip():
            raise fail(f"'{key}' is empty")
    if not answers or not answers[0].strip():
        raise fail("'answers' is empty: its first entry is the gold answer")
    subject, src = text["subject"], text["src"]
    if "{}" in src:
        raise fail(f"src {src!r} holds '{{}}', the placeholder the subject's place is marked with")
    if subject not in src:
        raise fail(f"subject {subject!r} does not occur in src {src!r}")
    if not text["loc"].startswith(NQ_PREFIX):
        raise fail(f"loc {text['loc']!r} does not start with {NQ_PREFIX!r}")
    return EditRequest(
        case_id=case_id,
        subject=subject,
        prompt=src.replace(subject, "{}", 1),
        target_new=answers[0],
        target_true=text["alt"],
        paraphrase_prompts=(text["rephrase"],),
        neighborhood_prompts=(text["loc"] + "?",),
        neighborhood_answers=(text["loc_ans"],),
    )
