"""Weighted F1, MCC and accuracy of the general-capability eval, against hand-computed values.

Each expected number is worked out from the confusion matrix in the comments, with the
formulas sklearn documents (the reference calls sklearn's ``f1_score(average="weighted")``
and ``matthews_corrcoef``); the -1 ("unparsed") cases pin sklearn's treatment of a
predicted-only label.
"""

from __future__ import annotations

import math
import random
import warnings

import pytest

from blue_cli.evaluation.general.metrics import (
    UNPARSED,
    accuracy,
    classification_scores,
    matthews_corrcoef,
    weighted_f1,
)


def test_binary_confusion_matrix():
    # gold: four 1s then six 0s. TP=3 (items 0-2), FN=1 (item 3), FP=2 (items 4-5), TN=4.
    gold = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    pred = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]
    tp, tn, fp, fn = 3, 4, 2, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert mcc == pytest.approx(10 / math.sqrt(600))
    assert matthews_corrcoef(gold, pred) == pytest.approx(mcc, abs=1e-12)
    # class 1: P = 3/5, R = 3/4, F1 = 2PR/(P+R) = 2/3, support 4.
    # class 0: P = 4/5, R = 4/6, F1 = 8/11, support 6.
    f1_pos = 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4)
    f1_neg = 2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6)
    assert f1_pos == pytest.approx(2 / 3) and f1_neg == pytest.approx(8 / 11)
    assert weighted_f1(gold, pred) == pytest.approx((4 * f1_pos + 6 * f1_neg) / 10, abs=1e-12)
    assert accuracy(gold, pred) == pytest.approx(7 / 10)


def test_unparsed_prediction_is_a_class_without_support():
    # Item 1 is unparsed (-1). sklearn's label set is {-1, 0, 1}.
    gold = [1, 1, 0, 0]
    pred = [1, UNPARSED, 0, 1]
    # class 1: TP=1, FP=1 (item 3), FN=1 (item 1) -> F1 = 2/4; class 0: TP=1, FN=1 -> 2/3;
    # class -1: support 0, weight 0. Weighted = (2 * 1/2 + 2 * 2/3) / 4 = 7/12.
    assert weighted_f1(gold, pred) == pytest.approx(7 / 12, abs=1e-12)
    # Multiclass MCC: n=4, c=2 correct; gold counts t = {0: 2, 1: 2, -1: 0},
    # predicted counts p = {0: 1, 1: 2, -1: 1}. sum p*t = 2 + 4 = 6.
    # (c n - sum p t) / sqrt((n^2 - sum p^2)(n^2 - sum t^2)) = (8 - 6) / sqrt((16 - 6)(16 - 8)).
    assert matthews_corrcoef(gold, pred) == pytest.approx(2 / math.sqrt(80), abs=1e-12)
    assert accuracy(gold, pred) == pytest.approx(2 / 4)
    # Not the same as dropping the item, or as counting it as the other class.
    assert weighted_f1(gold, pred) != pytest.approx(weighted_f1([1, 0, 0], [1, 0, 1]))
    assert matthews_corrcoef(gold, pred) != pytest.approx(matthews_corrcoef(gold, [1, 0, 0, 1]))


def test_all_unparsed_scores_zero():
    gold, pred = [1, 0, 1, 0], [UNPARSED] * 4
    assert weighted_f1(gold, pred) == 0.0
    assert matthews_corrcoef(gold, pred) == 0.0  # every prediction in one class: denominator 0
    scores = classification_scores(gold, pred)
    assert scores["unparsed"] == 4 and scores["n"] == 4 and scores["accuracy"] == 0.0


def test_three_classes_by_hand():
    gold = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    # n=6, c=4; t = (2, 2, 2); p = {0: 2, 1: 3, 2: 1}; sum p t = 4 + 6 + 2 = 12.
    # MCC = (24 - 12) / sqrt((36 - 14)(36 - 12)).
    assert matthews_corrcoef(gold, pred) == pytest.approx(12 / math.sqrt(22 * 24), abs=1e-12)
    # F1: class 0 TP1 FP1 FN1 -> 1/2; class 1 TP2 FP1 FN0 -> 4/5; class 2 TP1 FN1 -> 2/3.
    assert weighted_f1(gold, pred) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3, abs=1e-12)


def test_constant_prediction():
    # Everything predicted 1; 3 of 5 gold are 1. Class 1: P = 3/5, R = 1 -> F1 = 3/4; class 0: 0.
    gold, pred = [1, 1, 1, 0, 0], [1] * 5
    assert weighted_f1(gold, pred) == pytest.approx(3 * 0.75 / 5)
    assert matthews_corrcoef(gold, pred) == 0.0


def test_perfect_and_inverted():
    gold = [0, 1, 2, 3, 1, 0]
    assert weighted_f1(gold, gold) == pytest.approx(1.0)
    assert matthews_corrcoef(gold, gold) == pytest.approx(1.0)
    assert matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    assert weighted_f1([0, 1, 0, 1], [1, 0, 1, 0]) == 0.0


def test_bad_lengths_are_errors():
    with pytest.raises(ValueError, match="length"):
        weighted_f1([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        matthews_corrcoef([], [])


def test_classification_scores_keys():
    scores = classification_scores([1, 0, 1], [1, UNPARSED, 0])
    assert set(scores) == {"f1", "mcc", "accuracy", "n", "unparsed"}
    assert scores["n"] == 3 and scores["unparsed"] == 1 and scores["accuracy"] == pytest.approx(1 / 3)


def test_matches_sklearn_on_random_lists_when_installed():
    sk = pytest.importorskip(
        "sklearn.metrics", reason="scikit-learn not installed; the hand-computed tests cover the formulas"
    )
    rng = random.Random(0)
    for _ in range(300):
        n, k = rng.randint(1, 25), rng.randint(1, 4)
        gold = [rng.randrange(k) for _ in range(n)]
        pred = [rng.randrange(-1, k) for _ in range(n)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns about labels with no predictions
            expected_f1 = sk.f1_score(gold, pred, average="weighted")
            expected_mcc = sk.matthews_corrcoef(gold, pred)
        assert weighted_f1(gold, pred) == pytest.approx(expected_f1, abs=1e-12)
        assert matthews_corrcoef(gold, pred) == pytest.approx(expected_mcc, abs=1e-12)


# -- when a task's scores are measured at all ---------------------------------------------


def _result(predictions):
    from blue_cli.evaluation.general.harness import TaskResult

    golds = (1, 0, 1, 0)
    n = len(predictions)
    return TaskResult("sst2", ((1,),) * n, ("",) * n, golds[:n], tuple(predictions), truncated=0)


def test_no_parsed_answer_is_unavailable_not_zero():
    scores = _result([UNPARSED] * 4).scores()
    assert scores["f1"] is None and scores["mcc"] is None and scores["accuracy"] is None
    assert scores["unparsed"] == 4 and scores["n"] == 4


def test_one_parsed_answer_keeps_the_measured_scores():
    """Unparsed answers among parsed ones count as wrong, as in the reference."""
    predictions = [1, UNPARSED, UNPARSED, UNPARSED]
    scores = _result(predictions).scores()
    assert scores == {**classification_scores((1, 0, 1, 0), predictions), "truncated": 0}
    assert scores["accuracy"] == pytest.approx(1 / 4) and scores["unparsed"] == 3
