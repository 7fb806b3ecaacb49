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
