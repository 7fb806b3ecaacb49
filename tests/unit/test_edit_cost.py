"""The efficiency protocol's summary numbers (the BLUE paper's Fig. 12 and Table 8) from batch rows."""

from __future__ import annotations

import pytest

from blue_cli.runs.runner import edit_cost


def test_seconds_per_edit_and_the_largest_batch_peak():
    rows = [
        {"edits": 1, "edit_seconds": 2.0, "edit_peak_memory_bytes": 300},
        {"edits": 1, "edit_seconds": 4.0, "edit_peak_memory_bytes": 500},
        {
            "edits": 0,
            "skipped": "non-finite target",
            "edit_peak_memory_bytes": 900,
        },  # a skipped batch counts for neither
        {"edits": 2, "edit_seconds": 3.0, "edit_peak_memory_bytes": 400},
    ]
    cost = edit_cost(rows)
    assert cost["seconds_per_edit"] == pytest.approx((2.0 + 4.0 + 3.0) / 4)
    assert cost["edit_peak_memory_bytes"] == 500


def test_no_peak_off_cuda_and_nothing_without_edits():
    assert edit_cost([{"edits": 3, "edit_seconds": 1.5}]) == {"seconds_per_edit": 0.5, "edit_peak_memory_bytes": None}
    assert edit_cost([]) == {"seconds_per_edit": None, "edit_peak_memory_bytes": None}
