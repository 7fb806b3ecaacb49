"""Collapse monitoring norms and Norm-Anchor Scaling's rescaling, against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blue_cli.editing.norms import anchor_values, matrix_norms, spectral_norm_estimate, trimmed_mean


def _rows(seed: int, n: int, d: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_anchor_rescales_each_value_vector_to_the_reference_norm_or_drops_it():
    """Independent computation per request in plain Python: v* = v0 + delta, its length by a
    sum of squares; |v*| > skip x ref keeps v0 (delta 0), else v* is stretched to ref."""
    v0, delta = _rows(0, 7, 5), _rows(1, 7, 5) * 3.0
    delta[2] *= 20.0  # one far too long: dropped
    v_star = (v0 + delta).tolist()
    lengths = [math.sqrt(sum(x * x for x in row)) for row in v_star]
    reference = sorted(lengths)[3]  # some requests above, some below it
    new_delta, skipped = anchor_values(v0, delta, reference, skip_factor=2.0)
    for i, (row, length) in enumerate(zip(v_star, lengths)):
        if length > 2.0 * reference:
            want = [0.0] * 5
            assert bool(skipped[i])
        else:
            want = [x * reference / length - v for x, v in zip(row, v0[i].tolist())]
            assert not bool(skipped[i])
        assert new_delta[i].tolist() == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert int(skipped.sum()) == sum(length > 2.0 * reference for length in lengths) >= 1
    kept = ~skipped
    written = (v0 + new_delta)[kept].norm(dim=1)
    assert torch.allclose(written, torch.full_like(written, reference), rtol=1e-12)


def test_anchor_keeps_dtype_and_an_infinite_skip_factor_never_drops():
    v0, delta = _rows(2, 4, 3).float(), _rows(3, 4, 3).float() * 100
    new_delta, skipped = anchor_values(v0, delta, 1.0, skip_factor=float("inf"))
    assert new_delta.dtype == torch.float32 and not bool(skipped.any())
    assert torch.allclose((v0 + new_delta).norm(dim=1), torch.ones(4), rtol=1e-5)


def test_trimmed_mean_drops_the_largest_share():
    values = [
        5.0,
        1.0,
        100.0,
        2.0,
        3.0,
        4.0,
        6.0,
        7.0,
        8.0,
        9.0,
        10.0,
        11.0,
        12.0,
        13.0,
        14.0,
        15.0,
        16.0,
        17.0,
        18.0,
        50.0,
    ]
    kept = sorted(values)[: len(values) - math.floor(0.05 * len(values))]  # 20 values: the largest one goes
    assert trimmed_mean(torch.tensor(values), 0.95) == pytest.approx(sum(kept) / len(kept), rel=1e-15)
    assert trimmed_mean(torch.tensor(values), 1.0) == pytest.approx(sum(values) / len(values), rel=1e-15)
    assert trimmed_mean(torch.tensor(values[:10]), 0.95) == pytest.approx(sum(values[:10]) / 10)  # floor(0.5) = 0
    with pytest.raises(ValueError):
        trimmed_mean(torch.tensor([]), 0.95)


def test_spectral_estimate_matches_the_largest_singular_value():
    A = _rows(4, 40, 25)
    assert spectral_norm_estimate(A, iterations=200) == pytest.approx(float(np.linalg.svd(A.numpy())[1][0]), rel=1e-8)
    low = _rows(5, 30, 1) @ _rows(6, 1, 20)  # rank one: one step is exact
    assert spectral_norm_estimate(low, iterations=2) == pytest.approx(float(np.linalg.norm(low.numpy(), 2)), rel=1e-10)
    assert spectral_norm_estimate(torch.zeros(3, 4)) == 0.0
    assert spectral_norm_estimate(A) <= float(np.linalg.svd(A.numpy())[1][0]) * (1 + 1e-12)  # a lower bound


def test_matrix_norms_of_weight_and_change():
    W0, step = _rows(7, 6, 9), _rows(8, 6, 9)
    out = matrix_norms((W0 + step).float(), W0)
    assert out["weight"] == pytest.approx(float(np.linalg.norm((W0 + step).float().double().numpy())), rel=1e-12)
    change = (W0 + step).float().double() - W0
    assert out["change"] == pytest.approx(float(np.linalg.norm(change.numpy())), rel=1e-12)
    assert 0 < out["change_spectral"] <= out["change"] + 1e-12
    assert matrix_norms(W0, W0)["change"] == 0.0 and matrix_norms(W0, W0)["change_spectral"] == 0.0
