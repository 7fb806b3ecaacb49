"""Fluency: the reference's weighted bi/tri-gram entropy of generated texts, in bits.

Per text (ROME/MEMIT ``compute_n_gram_entropy``): H_n is the entropy, in bits, of the
frequency distribution of the text's word n-grams; the text's score is the mean of
(2/3 * H_2, 4/3 * H_3), i.e. (2/3 H_2 + 4/3 H_3) / 2. The corpus value is the
arithmetic mean over texts. Repetitive (degenerate) text has few distinct n-grams and
so a low score. The reference's summary prints the mean x 100 (e.g. "Flu 626" = 6.26).

Differs from reference: words come from :func:`words`, a regex tokenizer, instead of
``nltk.word_tokenize`` (nltk is not a dependency). Both split off punctuation and
English clitics ("don't" -> "do", "n't"; "John's" -> "John", "'s"); the regex also
splits numbers and abbreviations at inner dots ("3.5" -> "3", ".", "5", where nltk
keeps "3.5"), and does not turn quotes into `` / ''. Scores on such texts can differ
slightly from the reference's.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

NGRAM_ORDERS = (2, 3)
NGRAM_WEIGHTS = (2 / 3, 4 / 3)

# "do" before "n't", "n't", "'s"/"'re" clitics, runs of word characters, single symbols.
_WORD = re.compile(r"\w+(?=n't\b)|n't\b|'\w+|\w+|[^\w\s]")

__all__ = ["NGRAM_ORDERS", "NGRAM_WEIGHTS", "fluency", "ngram_entropy", "text_entropy", "words"]


def words(text: str) -> list[str]:
    """Split a text into word and punctuation tokens (see the module note on nltk)."""
    return _WORD.findall(text)


def ngram_entropy(tokens: Sequence[str], n: int) -> float:
    """Entropy in bits of the n-gram frequency distribution; 0 when there are no n-grams
    (the reference's numpy sum over an empty array)."""
    counts = Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def text_entropy(text: str) -> float:
    """One text's score: mean of weight_n * H_n over n in (2, 3)."""
    tokens = words(text)
    parts = [w * ngram_entropy(tokens, n) for n, w in zip(NGRAM_ORDERS, NGRAM_WEIGHTS)]
    return sum(parts) / len(parts)


def fluency(texts: Sequence[str]) -> float:
    """Mean :func:`text_entropy` over texts; NaN for no texts (nothing was generated)."""
    if not texts:
        return float("nan")
    return sum(text_entropy(t) for t in texts) / len(texts)
