"""Training text of the tiny models: WikiText paragraphs and CounterFact fact sentences.

What the models read, and how it is cut, mixed per epoch and packed into rows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blue_cli.datasets.counterfact.records import BUNDLED_PATH as COUNTERFACT_FILE
from blue_cli.editing.statistics.corpus import BUNDLED_WIKITEXT_PATH as WIKITEXT_FILE  # noqa: F401 (train.py reads it here)

SEQ_LEN = 64
HELDOUT_FRACTION = 0.1
# Copies of each group's units per epoch: the whole part repeats the group, the fraction
# adds a seeded random sample of that share of it (``epoch_units``). So subject facts are
# seen 3 times an epoch and the other groups subsampled.
MIX = {"subject": 3.0, "neighborhood": 0.5, "attribute": 0.5, "wikitext": 0.3}


def load_counterfact_sample(path: Path = COUNTERFACT_FILE) -> list[dict[str, Any]]:
    """The bundled CounterFact records (MEMIT multi_counterfact format)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def split_wikitext(text: str, heldout_fraction: float = HELDOUT_FRACTION) -> tuple[list[str], list[str]]:
    """Split the excerpt into (train, held-out) paragraphs; the held-out slice is the tail."""
    paragraphs = [line.strip() for line in text.splitlines() if line.strip()]
    total = sum(len(p) for p in paragraphs)
    cut, seen = len(paragraphs), 0
    for i, p in enumerate(paragraphs):
        if seen >= total * (1 - heldout_fraction):
            cut = i
            break
        seen += len(p)
    return paragraphs[:cut], paragraphs[cut:]


def fact_corpus(records: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """True-fact sentences from CounterFact records, in three groups.

    ``subject``: per record, the rewrite prompt and every other prompt template of the same
    relation applied to the subject, the paraphrase prompts and the (deduplicated)
    generation prompts, each followed by the true object. ``neighborhood``: the
    neighbourhood prompts (other subjects with the same true object) with the true object.
    ``attribute``: the attribute prompts (other subjects whose true object is the record's
    new object) with the new object, so that both candidate objects are plausible answers
    for the relation and only the subject decides between them.
    """
    templates: dict[str, list[str]] = {}
    for r in records:
        rw = r["requested_rewrite"]
        bucket = templates.setdefault(rw["relation_id"], [])
        if rw["prompt"] not in bucket:
            bucket.append(rw["prompt"])
    groups: dict[str, list[str]] = {"subject": [], "neighborhood": [], "attribute": []}
    for r in records:
        rw = r["requested_rewrite"]
        subject, true, new = rw["subject"], rw["target_true"]["str"], rw["target_new"]["str"]
        about_subject = [t.format(subject) for t in templates[rw["relation_id"]]]
        about_subject += list(r.get("paraphrase_prompts", []))
        about_subject += list(r.get("generation_prompts", []))
        groups["subject"] += [f"{p} {true}" for p in dict.fromkeys(about_subject)]
        neighbours = dict.fromkeys(r.get("neighborhood_prompts", []))
        groups["neighborhood"] += [f"{p} {true}" for p in neighbours]
        groups["attribute"] += [f"{p} {new}" for p in dict.fromkeys(r.get("attribute_prompts", []))]
    return groups


def fact_sentences(records: Sequence[dict[str, Any]]) -> list[str]:
    """All fact sentences of ``fact_corpus``, subject group first."""
    return [s for group in fact_corpus(records).values() for s in group]


def subject_swapped(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Control records: each rewrite prompt gets the next record's subject, no paraphrases.

    A model that recalls objects from the subject should do much worse on these with
    ``fact_scores`` than on the real records; one that only learnt relation priors won't.
    """
    out = []
    for r, other in zip(records, list(records[1:]) + list(records[:1])):
        rw = dict(r["requested_rewrite"], subject=other["requested_rewrite"]["subject"])
        out.append({"requested_rewrite": rw, "paraphrase_prompts": []})
    return out


def encode_units(tokenizer, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids of each text (no special tokens), long texts cut into ``max_len`` pieces."""
    # The backend tokenizer, so long paragraphs raise no "longer than the maximum" warning.
    encodings = tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    enc = [e.ids for e in encodings]
    units: list[list[int]] = []
    for ids in enc:
        for start in range(0, len(ids), max_len):
            piece = ids[start : start + max_len]
            if piece:
                units.append(piece)
    return units


def pack_units(
    units: Sequence[list[int]], *, seq_len: int, bos_id: int | None, eos_id: int, pad_id: int
) -> tuple[list[list[int]], list[list[int]]]:
    """Greedily pack whole units into rows ``[bos] unit eos [bos] unit eos ... pad``.

    Every row starts at a unit boundary, so the model sees facts both at position 0 (as
    prompts are fed at evaluation) and after earlier text. Returns (input_ids, labels) with
    labels -100 on padding and on BOS tokens.
    """
    rows: list[list[int]] = []
    cur: list[int] = []
    for unit in units:
        piece = ([bos_id] if bos_id is not None else []) + list(unit) + [eos_id]
        piece = piece[:seq_len]
        if len(cur) + len(piece) > seq_len:
            rows.append(cur)
            cur = []
        cur = cur + piece
    if cur:
        rows.append(cur)
    out_ids, out_labels = [], []
    for row in rows:
        lab = [(-100 if t == bos_id else t) for t in row]
        pad = seq_len - len(row)
        out_ids.append(row + [pad_id] * pad)
        out_labels.append(lab + [-100] * pad)
    return out_ids, out_labels


def epoch_units(pools: dict[str, list[list[int]]], rng: random.Random) -> list[list[int]]:
    """One epoch's units, shuffled: each pool repeated ``int(MIX[key])`` times plus a seeded
    random sample of the fractional share."""
    units: list[list[int]] = []
    for key in sorted(pools):
        whole, frac = divmod(MIX[key], 1.0)
        units += pools[key] * int(whole)
        if frac:
            units += rng.sample(pools[key], round(frac * len(pools[key])))
    rng.shuffle(units)
    return units
