"""Classification scores for the general-capability tasks, in pure Python.

The reference scores each task with scikit-learn's ``f1_score(gold, pred,
average="weighted")`` and ``matthews_corrcoef(gold, pred)``. Both are reproduced here
without the dependency, including how an unparseable answer (label ``-1``) counts: it
is just another class in the label set, with no gold support. It therefore weighs
nothing in the weighted F1 average but lowers the recall of the item's true class, and
it enters the multiclass MCC as its own row of the confusion matrix.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

UNPARSED = -1
"""The label of an answer that matched no keyword; always wrong, never a gold label."""
SCORES = ("f1", "mcc", "accuracy")
"""The measured scores of a task (``n`` and ``unparsed`` are counts)."""


def _check(gold: Sequence[int], pred: Sequence[int]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"gold and pred differ in length ({len(gold)} vs {len(pred)})")
    if not gold:
        raise ValueError("cannot score an empty list of predictions")


def accuracy(gold: Sequence[int], pred: Sequence[int]) -> float:
    """Fraction of items whose prediction equals the gold label (unparsed ones are wrong)."""
    _check(gold, pred)
    return sum(g == p for g, p in zip(gold, pred)) / len(gold)


def weighted_f1(gold: Sequence[int], pred: Sequence[int]) -> float:
    """Per-class F1 averaged with weights = gold support (sklearn ``average="weighted"``).

    Classes are the union of gold and predicted labels. Per class,
    F1 = 2 TP / (2 TP + FP + FN), which equals 2PR / (P + R) and is 0 where sklearn's
    zero-division rule makes it 0 (no true positives). A predicted-only class such as
    ``-1`` has support 0, so it adds nothing to the average, while its items still count
    as false negatives of their true classes.
    """
    _check(gold, pred)
    support = Counter(gold)
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    for g, p in zip(gold, pred):
        if g == p:
            tp[g] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    total = 0.0
    for label in set(gold) | set(pred):
        denom = 2 * tp[label] + fp[label] + fn[label]
        f1 = 2 * tp[label] / denom if denom else 0.0
        total += f1 * support[label]
    return total / len(gold)


def matthews_corrcoef(gold: Sequence[int], pred: Sequence[int]) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K, sklearn's formula).

    With n items, c correct, t_k gold counts and p_k predicted counts per class k:
    MCC = (c n - sum_k p_k t_k) / sqrt((n^2 - sum_k p_k^2) (n^2 - sum_k t_k^2)),
    and 0 when the denominator is 0 (all gold or all predictions in one class), as in
    sklearn. For two classes this is (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).
    """
    _check(gold, pred)
    n = len(gold)
    t, p = Counter(gold), Counter(pred)
    correct = sum(g == q for g, q in zip(gold, pred))
    cov_tp = correct * n - sum(p[k] * t[k] for k in set(t) | set(p))
    cov_pp = n * n - sum(v * v for v in p.values())
    cov_tt = n * n - sum(v * v for v in t.values())
    if cov_pp * cov_tt == 0:
        return 0.0
    return cov_tp / math.sqrt(cov_pp * cov_tt)


def classification_scores(gold: Sequence[int], pred: Sequence[int]) -> dict[str, float]:
    """``f1`` (weighted), ``mcc``, ``accuracy``, ``n`` and ``unparsed`` for one task."""
    return {
        "f1": weighted_f1(gold, pred),
        "mcc": matthews_corrcoef(gold, pred),
        "accuracy": accuracy(gold, pred),
        "n": len(gold),
        "unparsed": sum(p == UNPARSED for p in pred),
    }
