"""The pure parts of ``blue analyze``: per-layer statistics of a run's batches, summaries."""

from __future__ import annotations

import pytest

from blue_cli.errors import DataError
from blue_cli.tools.analysis import batch_layer_statistics, summary_of


def test_summary_is_mean_and_population_std():
    s = summary_of([1.0, 2.0, 4.0])
    assert s["mean"] == pytest.approx(7 / 3)
    assert s["std"] == pytest.approx(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) ** 0.5 / 3**0.5)
    assert summary_of([5.0])["std"] == 0.0


def test_blue_rows_give_steps_at_both_boundary_layers():
    rows = [
        {"batch": 0, "target_steps": [4.0, 2.0], "key_fit_error": [0.5, 0.1], "write_error": 0.3},
        {"batch": 1, "target_steps": [6.0, 1.0], "key_fit_error": [0.7, 0.3], "write_error": 0.5},
        {"batch": 2, "edits": 0, "skipped": "non-finite target"},
    ]
    out = batch_layer_statistics(rows, [1, 3])
    assert out["batches"] == 2
    assert [(s["layer"], s["mean"], s["std"]) for s in out["target_steps"]] == [(1, 5.0, 1.0), (3, 1.5, 0.5)]
    assert [(s["layer"], s["mean"]) for s in out["key_fit_error"]] == [(1, pytest.approx(0.6)), (3, pytest.approx(0.2))]
    assert out["write_error"] == pytest.approx(0.4)


def test_spread_rows_put_the_one_target_at_the_last_layer():
    rows = [{"batch": 0, "target_steps": [3.0], "key_fit_error": [0.2, 0.3, 0.4], "write_error": 0.1}]
    out = batch_layer_statistics(rows, [4, 5, 6])
    assert [s["layer"] for s in out["target_steps"]] == [6]
    assert [s["layer"] for s in out["key_fit_error"]] == [4, 5, 6]


def test_rows_that_do_not_fit_the_written_layers_are_refused():
    with pytest.raises(DataError, match="key_fit_error"):
        batch_layer_statistics(
            [{"batch": 0, "target_steps": [1.0], "key_fit_error": [0.1], "write_error": 0.1}], [1, 3]
        )
    with pytest.raises(DataError, match="no edited batch"):
        batch_layer_statistics([{"batch": 0, "skipped": "x"}], [1, 3])


def test_analysis_error_bars_stay_inside_each_quantitys_range():
    """A cosine of 0.9 ± 0.3 must not draw past 1, a probability of 0.1 ± 0.3 not below 0."""
    from matplotlib.figure import Figure

    from blue_cli.reporting.residual_analysis import COSINE, POSITIVE, PROBABILITY, _bars, clipped_interval

    cases = [
        ({"mean": 0.9, "std": 0.3}, COSINE, (0.3, 0.1)),
        ({"mean": -0.8, "std": 0.5}, COSINE, (0.2, 0.5)),
        ({"mean": 0.1, "std": 0.3}, PROBABILITY, (0.1, 0.3)),
        ({"mean": 0.5, "std": 0.1}, PROBABILITY, (0.1, 0.1)),  # inside: one std either side
        ({"mean": 2.0, "std": 5.0}, POSITIVE, (2.0, 5.0)),
    ]
    for stat, bounds, expected in cases:
        assert clipped_interval(stat, bounds) == pytest.approx(expected)
    ax = Figure().subplots()
    stats = [stat for stat, bounds, _ in cases if bounds == COSINE]
    _bars(ax, [0, 1], stats, "C0", COSINE)
    bars = next(c for c in ax.containers if hasattr(c, "errorbar")).errorbar
    (segments,) = [c.get_segments() for c in bars.lines[2]]
    for (_, low), (_, high) in segments:
        assert -1.0 <= low <= high <= 1.0
