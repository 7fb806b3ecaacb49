"""Closed-form updates against exact algebra (tensors only, no model)."""

import torch

from blue_cli.editing.linalg import (
    alphaedit_update,
    compress_singular_values,
    emmet_update,
    keep_top_relative_change,
    memit_update,
    nullspace_projector,
    split_residual,
)


def _problem(d=12, dk=30, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = torch.randn(dk, n, generator=g, dtype=torch.float64)
    R = torch.randn(d, n, generator=g, dtype=torch.float64)
    X = torch.randn(dk, 200, generator=g, dtype=torch.float64)
    C = X @ X.T / 200
    return K, R, C


def test_memit_update_reproduces_residual_as_cov_weight_vanishes():
    K, R, C = _problem()
    delta = memit_update(K, R, C, cov_weight=1e-10)
    rel = (delta @ K - R).norm() / R.norm()
    assert rel < 1e-6


def test_memit_update_satisfies_normal_equations():
    K, R, C = _problem()
    C_prev = 0.3 * C
    for lam in (0.5, 10.0, 15000.0):
        delta = memit_update(K, R, C, cov_weight=lam, C_prev=C_prev)
        A = lam * C + C_prev + K @ K.T
        residual = delta @ A - R @ K.T
        assert residual.norm() / (R @ K.T).norm() < 1e-8


def test_memit_update_accepts_float32_inputs_and_returns_float64():
    K, R, C = _problem()
    delta = memit_update(K.float(), R.float(), C.float(), cov_weight=2.0)
    assert delta.dtype == torch.float64
    assert delta.shape == (R.shape[0], K.shape[0])


def test_memit_falls_back_when_system_is_singular():
    K, R, _ = _problem()
    C = torch.zeros(K.shape[0], K.shape[0], dtype=torch.float64)
    delta = memit_update(K, R, C, cov_weight=1.0)  # K K^T is rank n < d_k: not PD
    assert torch.isfinite(delta).all()


def test_nullspace_projector_is_symmetric_idempotent_and_kills_preserved_keys():
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64)).Q
    evals = torch.cat([torch.full((8,), 5.0), torch.full((12,), 1e-4)]).double()
    C = basis @ torch.diag(evals) @ basis.T
    P = nullspace_projector(C, threshold=2e-2)
    assert torch.allclose(P, P.T, atol=1e-10)
    assert (P @ P - P).abs().max() < 1e-6
    preserved = basis[:, :8]
    assert (P @ preserved).norm() < 1e-8
    assert torch.linalg.matrix_rank(P) == 12


def test_alphaedit_update_leaves_preserved_keys_untouched():
    g = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64)).Q
    C = basis @ torch.diag(torch.cat([torch.full((8,), 5.0), torch.full((12,), 1e-5)]).double()) @ basis.T
    P = nullspace_projector(C, 2e-2)
    K = torch.randn(20, 4, generator=g, dtype=torch.float64)
    R = torch.randn(6, 4, generator=g, dtype=torch.float64)
    delta = alphaedit_update(K, R, P, l2=1.0)
    k0 = basis[:, :8]
    assert (delta @ k0).norm() / delta.norm() < 1e-8
    # and it matches the closed form Delta = R K^T P (K K^T P + l2 I)^{-1}
    direct = R @ K.T @ P @ torch.linalg.inv(K @ K.T @ P + torch.eye(20, dtype=torch.float64))
    assert torch.allclose(delta, direct, atol=1e-8)


def test_split_residual_rules():
    R = torch.ones(3, 2) * 12
    assert torch.allclose(split_residual(R, 4), R / 4)
    assert torch.allclose(split_residual(R, 4, "sqrt"), R / 2)
    assert torch.allclose(split_residual(R, 1), R)


def test_keep_top_relative_change_keeps_stated_fraction():
    g = torch.Generator().manual_seed(3)
    delta = torch.randn(10, 20, generator=g)
    W = torch.randn(10, 20, generator=g)
    out = keep_top_relative_change(delta, W, 0.4)
    # the reference's rule: the 120th smallest score (int(200 * 60 / 100)) and all above it
    assert int((out != 0).sum()) == 200 - 120 + 1
    score = delta.abs() / W.abs()
    kept = score[out != 0]
    dropped = score[out == 0]
    assert kept.min() >= dropped.max()


def test_compress_singular_values_bounds_the_spectrum():
    g = torch.Generator().manual_seed(4)
    delta = torch.randn(15, 15, generator=g, dtype=torch.float64) * 3
    bound = 2.0
    s_before = torch.linalg.svdvals(delta)
    out = compress_singular_values(delta, bound)
    s_after = torch.linalg.svdvals(out)
    expected_max = bound + torch.log(s_before.max() / bound)
    assert s_after.max() <= expected_max + 1e-9
    small = s_before[s_before <= bound]
    assert torch.allclose(torch.sort(s_after).values[: len(small)], torch.sort(small).values, atol=1e-9)


def test_compress_singular_values_with_other_log_base():
    g = torch.Generator().manual_seed(5)
    delta = torch.randn(8, 8, generator=g, dtype=torch.float64) * 5
    bound = 1.5
    s_max = torch.linalg.svdvals(delta).max()
    out = compress_singular_values(delta, bound, log_base=1.2)
    expected = bound + torch.log(s_max / bound) / torch.log(torch.tensor(1.2, dtype=torch.float64))
    assert torch.isclose(torch.linalg.svdvals(out).max(), expected, atol=1e-9)


def test_compress_singular_values_never_enlarges():
    g = torch.Generator().manual_seed(6)
    delta = torch.randn(10, 10, generator=g, dtype=torch.float64)
    s = torch.linalg.svdvals(delta)
    bound = float(s[-3])  # most singular values just above the bound, where F(s) > s for base 1.1
    out = torch.linalg.svdvals(compress_singular_values(delta, bound, log_base=1.1))
    assert (out <= s + 1e-9).all()


# --- EMMET -------------------------------------------------------------------------------------


def _emmet_by_hand(K, R, C, weight, lam, alpha, C_prev):
    """The published formula with explicit inverses (numpy, float64)."""
    import numpy as np

    k, r, c = K.numpy(), R.numpy(), C.numpy()
    A = weight * c + alpha * np.eye(c.shape[0]) + (C_prev.numpy() if C_prev is not None else 0)
    A_inv = np.linalg.inv(A)
    D = k.T @ A_inv @ k + lam * np.eye(k.shape[1])
    return r @ np.linalg.inv(D) @ k.T @ A_inv


def test_emmet_update_is_the_published_formula():
    K, R, C = _problem()
    _, _, C_prev = _problem(seed=3)
    for weight, lam, alpha, prev in ((1.0, 0.1, 0.0, None), (30.0, 0.5, 2.0, C_prev), (0.2, 0.0, 0.0, C_prev)):
        delta = emmet_update(K, R, C, weight, lam, alpha, prev)
        expected = torch.from_numpy(_emmet_by_hand(K, R, C, weight, lam, alpha, prev))
        assert (delta - expected).norm() / expected.norm() < 1e-9, (weight, lam, alpha)


def test_emmet_with_unit_lambda_is_memit_on_the_same_system():
    """(K^T A^-1 K + I)^-1 K^T A^-1 = K^T (A + K K^T)^-1 (Woodbury)."""
    K, R, C = _problem()
    _, _, C_prev = _problem(seed=5)
    emmet = emmet_update(K, R, C, 40.0, 1.0, 0.0, C_prev)
    memit = memit_update(K, R, C, 40.0, C_prev)
    assert (emmet - memit).norm() / memit.norm() < 1e-9


def test_emmet_without_relaxation_writes_every_key_exactly():
    K, R, C = _problem(n=8)
    delta = emmet_update(K, R, C, 1.0, 0.0)
    assert (delta @ K - R).norm() / R.norm() < 1e-9
    relaxed = emmet_update(K, R, C, 1.0, 10.0)
    assert (relaxed @ K - R).norm() / R.norm() > 0.1  # the ridge trades the constraints away


def test_emmet_with_a_singular_constraint_system_uses_its_pseudo_inverse():
    """Two equal keys and lambda_e 0: K^T A^-1 K is singular; consistent residuals are still written."""
    K, R, C = _problem(n=3)
    K = torch.cat([K, K[:, :1]], dim=1)
    R = torch.cat([R, R[:, :1]], dim=1)
    delta = emmet_update(K, R, C, 1.0, 0.0)
    assert torch.isfinite(delta).all()
    assert (delta @ K - R).norm() / R.norm() < 1e-6
