"""The evaluation in the wild's scoring rules: normalisation, exact match, token F1, the stop rule."""

from __future__ import annotations

import pytest

from blue_cli.evaluation.wild import cut_answer, exact_match, normalise, token_f1


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("The  Eiffel Tower!", "eiffel tower"),
        ("an apple, a pear", "apple pear"),
        ("  Theatre ", "theatre"),  # "the" only as a word
        ("", ""),
    ],
)
def test_normalise(text, want):
    assert normalise(text) == want


def test_exact_match_ignores_case_punctuation_and_articles():
    assert exact_match("the French", "French") == 1.0
    assert exact_match("French language", "French") == 0.0


def test_token_f1_is_the_word_overlap_harmonic_mean():
    # answer "french language english" vs "english": precision 1/3, recall 1 -> F1 = 0.5
    assert token_f1("French language English", "English") == pytest.approx(0.5)
    assert token_f1("Paris Paris", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset: one match of two
    assert token_f1("Rome", "Paris") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("the", "Paris") == 0.0


def test_the_stop_rule_cuts_at_newline_or_sentence_end_never_at_the_target_length():
    assert cut_answer(" French. He was born") == ("French", True)
    assert cut_answer(" Paris\nThe city") == ("Paris", True)
    assert cut_answer(" still going") == ("still going", False)
    assert cut_answer("a\nb. c") == ("a", True)  # the first stop wins


def test_evaluated_positions_are_evenly_spread_and_capped():
    from blue_cli.runs.points import evaluated_positions

    assert evaluated_positions(5, None) == [0, 1, 2, 3, 4] == evaluated_positions(5, 9)
    assert evaluated_positions(10, 4) == [0, 2, 5, 7]
    picked = evaluated_positions(100_000, 2000)
    assert len(set(picked)) == 2000 and picked == sorted(picked) and picked[-1] < 100_000
