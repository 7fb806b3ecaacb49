"""The facts causal tracing runs on: ROME's knowns and CounterFact's true facts, kept where the model knows them.

A fact is a prompt holding a subject and the true object that should follow it. ROME traces
only facts the model states itself (its ``known_1000.json`` holds GPT-2 XL's correct
predictions); here a fact is kept when the model's greedy next token is the first token of
``" " + object``, so every model is traced on facts it knows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from blue_cli import ASSETS_DIR
from blue_cli.datasets.files import BUNDLED, read_json_list
from blue_cli.datasets.records import EditRequest
from blue_cli.errors import DataError
from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.tokens import pad_right, target_ids

KNOWNS_PATH = ASSETS_DIR / "data" / "known_1000.json"
"""ROME's knowns (1209 records; MIT), bundled: see blue_cli/assets/data/README.md."""

SOURCES = ("knowns", "counterfact")


@dataclass(frozen=True)
class Fact:
    """``prompt`` (subject filled in) should continue with ``target``; the subject starts at character ``subject_at``.

    ``key`` names it in files: ``knowns:<known_id>`` or ``counterfact:<case_id>``.
    """

    key: str
    prompt: str
    subject: str
    subject_at: int
    target: str

    def as_dict(self) -> dict:
        return {"key": self.key, "prompt": self.prompt, "subject": self.subject, "target": self.target}


@dataclass(frozen=True)
class EncodedFact:
    """A fact's tokens: ``ids`` (T,), the subject's token range ``start .. end - 1``, the object's first token."""

    fact: Fact
    ids: torch.Tensor
    start: int
    end: int
    target_id: int


def knowns_path(path: str | Path) -> Path:
    """``bundled`` is the packaged copy; anything else a path to a knowns JSON file."""
    return KNOWNS_PATH if str(path) == BUNDLED else Path(path).expanduser()


def load_knowns(path: str | Path = BUNDLED) -> list[Fact]:
    """The records of a ROME knowns file (``known_id, subject, attribute, template, prediction, prompt``) as facts.

    ``prompt`` is the text traced and ``attribute`` the true object. A bad record is one
    line naming the file and the index.
    """
    file = knowns_path(path)
    if not file.is_file():
        raise DataError(f"knowns file not found: {file} (give a ROME known_1000.json, or 'bundled')")
    facts = []
    for index, raw in enumerate(read_json_list(file, name=str(file), label="knowns")):
        if not isinstance(raw, dict):
            raise DataError(f"{file}: record {index}: expected an object, got {type(raw).__name__}")
        values = {}
        for key, kind in (("known_id", int), ("subject", str), ("attribute", str), ("prompt", str)):
            if not isinstance(raw.get(key), kind):
                raise DataError(f"{file}: record {index}: '{key}' missing or not a {kind.__name__}")
            values[key] = raw[key]
        prompt, subject = values["prompt"], values["subject"]
        template = raw.get("template") if isinstance(raw.get("template"), str) else ""
        at = template.find("{}")
        if at < 0 or prompt[at : at + len(subject)] != subject:
            at = prompt.find(subject)
        if at < 0 or not subject.strip() or not values["attribute"].strip():
            raise DataError(f"{file}: record {index}: subject {subject!r} is not in prompt {prompt!r}")
        facts.append(Fact(f"knowns:{values['known_id']}", prompt, subject, at, values["attribute"].strip()))
    return facts


def counterfact_facts(requests: Iterable[EditRequest]) -> list[Fact]:
    """CounterFact's rewrite prompts with their true object (``target_true``), the fact before the edit."""
    return [
        Fact(f"counterfact:{r.case_id}", r.rewrite_prompt, r.subject, r.prompt.index("{}"), r.target_true.strip())
        for r in requests
    ]


def subject_tokens(tok, prompt: str, start_char: int, end_char: int) -> tuple[list[int], int, int] | None:
    """``(ids, start, end)``: the prompt's tokens and the range of those overlapping characters
    ``start_char .. end_char - 1``; None when no token does.

    A fast tokenizer's offsets say where each token sits in the text (a byte-level token " M"
    of " Massif" overlaps the subject); without them the count of ``prompt[:end_char]``'s tokens
    gives the end, as :func:`blue_cli.models.tokens.subject_last_index` does, and that of the
    stripped text before the subject the start.
    """
    if getattr(tok, "is_fast", False):
        enc = tok(prompt, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and b > start_char and a < end_char]
        if not inside:
            return None
        return ids, inside[0], inside[-1] + 1
    ids = list(tok(prompt)["input_ids"])
    start = len(tok(prompt[:start_char].rstrip())["input_ids"])
    end = len(tok(prompt[:end_char])["input_ids"])
    return (ids, start, end) if start < end else None


def encode_fact(tok, fact: Fact) -> EncodedFact | None:
    """The fact's tokens and subject range; None when the subject covers no token or the object has none."""
    found = subject_tokens(tok, fact.prompt, fact.subject_at, fact.subject_at + len(fact.subject))
    target = target_ids(tok, fact.target)
    if found is None or not target:
        return None
    ids, start, end = found
    return EncodedFact(fact, torch.tensor(ids, dtype=torch.long), start, end, target[0])


@torch.no_grad()
def known_facts(
    adapter: ModelAdapter, candidates: Sequence[Fact], limit: int, batch_size: int = 32
) -> list[EncodedFact]:
    """The first ``limit`` candidates (in their order) whose object's first token is the model's greedy next token.

    Facts whose subject or object gives no token, and prompts longer than the model's
    context, are passed over; a repeated prompt and object is kept once.
    """
    seen: set[tuple[str, str]] = set()
    usable = []
    for fact in candidates:
        encoded = encode_fact(adapter.tok, fact)
        too_long = encoded is not None and adapter.context_length and len(encoded.ids) > adapter.context_length
        if encoded is None or too_long or (fact.prompt, fact.target) in seen:
            continue
        seen.add((fact.prompt, fact.target))
        usable.append(encoded)
    kept: list[EncodedFact] = []
    pad = adapter.tok.pad_token_id if adapter.tok.pad_token_id is not None else 0
    for first in range(0, len(usable), batch_size):
        chunk = usable[first : first + batch_size]
        batch = pad_right([e.ids.tolist() for e in chunk], pad, adapter.device)
        hidden = adapter.base_forward(batch["input_ids"], batch["attention_mask"])  # (B, T, d), right-padded
        last = batch["attention_mask"].sum(dim=1) - 1
        greedy = adapter.logits_at(hidden[torch.arange(len(chunk), device=hidden.device), last]).argmax(dim=-1)
        kept += [e for e, top in zip(chunk, greedy.tolist()) if top == e.target_id]
        if len(kept) >= limit:
            break
    return kept[:limit]
