"""The tiny-model build's corpus mixing and row packing (scripts/tiny_build/corpus.py)."""

from __future__ import annotations

import random
from collections import Counter

from tiny_build.corpus import MIX, epoch_units, pack_units, split_wikitext


def test_epoch_repeats_subject_facts_and_subsamples_the_rest():
    pools = {
        "subject": [[1], [2]],
        "neighborhood": [[10], [11], [12], [13]],
        "attribute": [[20], [21]],
        "wikitext": [[30 + i] for i in range(10)],
    }
    assert MIX == {"subject": 3.0, "neighborhood": 0.5, "attribute": 0.5, "wikitext": 0.3}
    units = epoch_units(pools, random.Random(0))
    counts = Counter(u[0] for u in units)
    assert counts[1] == counts[2] == 3  # every subject fact, three times
    # round(0.5 * 4) = 2, round(0.5 * 2) = 1, round(0.3 * 10) = 3 distinct units, once each
    assert sum(counts[t] for t in range(10, 14)) == 2
    assert sum(counts[t] for t in (20, 21)) == 1
    assert sum(counts[t] for t in range(30, 40)) == 3
    assert max(counts[t] for t in counts if t >= 10) == 1
    assert len(units) == 6 + 2 + 1 + 3
    assert units == epoch_units(pools, random.Random(0))  # seeded


def test_pack_units_fills_rows_greedily_and_masks_bos_and_padding():
    ids, labels = pack_units([[5, 6], [7], [8, 9, 4]], seq_len=6, bos_id=1, eos_id=0, pad_id=2)
    # [1 5 6 0] + [1 7 0] would be 7 > 6 tokens, so the second unit opens a new row.
    assert ids == [[1, 5, 6, 0, 2, 2], [1, 7, 0, 2, 2, 2], [1, 8, 9, 4, 0, 2]]
    assert labels == [
        [-100, 5, 6, 0, -100, -100],
        [-100, 7, 0, -100, -100, -100],
        [-100, 8, 9, 4, 0, -100],
    ]
    ids, _ = pack_units([[5], [6]], seq_len=6, bos_id=None, eos_id=0, pad_id=2)
    assert ids == [[5, 0, 6, 0, 2, 2]]


def test_split_wikitext_holds_out_the_tail_by_characters():
    text = "\n".join(["a" * 40, "", "b" * 40, "c" * 10, "d" * 10]) + "\n"
    train, held = split_wikitext(text, heldout_fraction=0.2)
    # 100 characters in all; the cut falls at the first paragraph starting at >= 80.
    assert train == ["a" * 40, "b" * 40]
    assert held == ["c" * 10, "d" * 10]
