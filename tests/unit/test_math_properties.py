"""Properties of the closed-form editing math that a wrong reimplementation breaks.

Every expected value here is derived inside the test from a definition (normal
equations, an objective's gradient, an eigen-decomposition, a hand-built SVD),
never copied from a run and never obtained by calling the function under test
a second time. Each test names the slip it is meant to catch.
"""

from __future__ import annotations

import math

import pytest
import torch

from blue_cli.editing.linalg import (
    RECT_EPSILON,
    alphaedit_update,
    compress_singular_values,
    keep_top_relative_change,
    memit_update,
    nullspace_projector,
    split_residual,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spd(dim: int, samples: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """A random second-moment matrix X X^T / samples (positive definite when samples >= dim)."""
    X = scale * torch.randn(dim, samples, generator=g, dtype=F64)
    return X @ X.T / samples


def _orthonormal(dim: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64)).Q


# --- memit_update ---------------------------------------------------------------


def _memit_problem(seed=0, d=7, dk=16, n=4):
    """Non-square shapes (d != d_k != n) so a transposed or wrong-side solve cannot pass."""
    g = _gen(seed)
    K = torch.randn(dk, n, generator=g, dtype=F64)
    R = torch.randn(d, n, generator=g, dtype=F64)
    C = _spd(dk, 3 * dk, g)
    C_prev = _spd(dk, 5, g, scale=2.0)  # low rank, not a multiple of C
    return K, R, C, C_prev


@pytest.mark.parametrize("lam", [0.3, 4.0, 250.0])
def test_memit_normal_equations_hold_with_every_term(lam):
    """Delta (lam C + C_prev + K K^T) = R K^T: catches a dropped C, C_prev or K K^T, an unscaled C."""
    K, R, C, C_prev = _memit_problem()
    delta = memit_update(K, R, C, cov_weight=lam, C_prev=C_prev)
    assert delta.shape == (R.shape[0], K.shape[0])
    lhs = delta @ (lam * C + C_prev + K @ K.T)
    rhs = R @ K.T
    assert (lhs - rhs).norm() / rhs.norm() < 1e-9


def test_memit_update_is_the_stationary_point_of_its_objective():
    """Autograd of J(D) = ||D K - R||^2 + lam tr(D C D^T) + tr(D C_prev D^T) vanishes at Delta.

    An independent route to the same optimality condition (no algebra shared with the
    solve); it also shows Delta is a minimum: any perturbation raises J.
    """
    K, R, C, C_prev = _memit_problem(seed=3)
    lam = 2.5
    delta = memit_update(K, R, C, cov_weight=lam, C_prev=C_prev)

    def objective(D):
        return ((D @ K - R) ** 2).sum() + lam * torch.trace(D @ C @ D.T) + torch.trace(D @ C_prev @ D.T)

    D = delta.clone().requires_grad_(True)
    objective(D).backward()
    assert D.grad.norm() / (R @ K.T).norm() < 1e-8
    g = _gen(9)
    base = objective(delta)
    for _ in range(3):
        bump = 1e-3 * torch.randn(delta.shape, generator=g, dtype=F64)
        assert objective(delta + bump) > base


def test_memit_update_reproduces_residual_as_cov_weight_vanishes():
    """lam -> 0 and no C_prev: Delta K = R exactly (n < d_k keys can be fitted)."""
    K, R, C, _ = _memit_problem(seed=1)
    delta = memit_update(K, R, C, cov_weight=1e-9)
    assert (delta @ K - R).norm() / R.norm() < 1e-6


def test_memit_previous_keys_are_preserved_in_the_small_lambda_limit():
    """lam -> 0 with C_prev = K_old K_old^T (n + m < d_k): Delta K = R and Delta K_old = 0.

    Both can be met exactly, so the minimiser meets both; dropping C_prev leaves
    Delta K_old far from zero.
    """
    g = _gen(4)
    dk, n, m = 20, 3, 6
    K = torch.randn(dk, n, generator=g, dtype=F64)
    R = torch.randn(5, n, generator=g, dtype=F64)
    K_old = torch.randn(dk, m, generator=g, dtype=F64)
    C = _spd(dk, 60, g)
    with_prev = memit_update(K, R, C, cov_weight=1e-9, C_prev=K_old @ K_old.T)
    without = memit_update(K, R, C, cov_weight=1e-9)
    assert (with_prev @ K - R).norm() / R.norm() < 1e-5
    assert (with_prev @ K_old).norm() < 1e-5 * R.norm()
    assert (without @ K_old).norm() > 0.1 * R.norm()


def test_memit_previous_keys_change_less_with_c_prev_at_realistic_lambda():
    """With lam C in play, adding C_prev = K_old K_old^T still shrinks the change on old keys."""
    g = _gen(5)
    dk, n, m = 20, 3, 6
    K = torch.randn(dk, n, generator=g, dtype=F64)
    R = torch.randn(5, n, generator=g, dtype=F64)
    K_old = 3.0 * torch.randn(dk, m, generator=g, dtype=F64)
    C = _spd(dk, 60, g)
    with_prev = memit_update(K, R, C, cov_weight=0.5, C_prev=K_old @ K_old.T)
    without = memit_update(K, R, C, cov_weight=0.5)
    assert (with_prev @ K_old).norm() < 0.2 * (without @ K_old).norm()


def test_memit_fallback_solves_systems_cholesky_rejects():
    """Not positive definite: a singular K K^T alone (C = 0) still fits Delta K = R, and an
    indefinite but invertible system still meets its normal equations (the LU fallback)."""
    K, R, _, _ = _memit_problem(seed=6)
    zero = torch.zeros(K.shape[0], K.shape[0], dtype=F64)
    singular = memit_update(K, R, zero, cov_weight=1.0)
    assert (singular @ K - R).norm() / R.norm() < 1e-8
    X = torch.randn(K.shape[0], K.shape[0], generator=_gen(7), dtype=F64)
    indefinite = X + X.T
    indefinite[0, 0] = -(K @ K.T)[0, 0] - 5.0  # even the first pivot is negative
    assert torch.linalg.eigvalsh(indefinite + K @ K.T)[0] < 0
    delta = memit_update(K, R, zero, cov_weight=1.0, C_prev=indefinite)
    assert (delta @ (indefinite + K @ K.T) - R @ K.T).norm() / (R @ K.T).norm() < 1e-9


# --- nullspace_projector ----------------------------------------------------------


def _covariance_with_spectrum(g: torch.Generator, big: int, small: int):
    """C = U diag(evals) U^T with ``big`` eigenvalues in [1, 5] and ``small`` in [1e-6, 1e-3]."""
    dim = big + small
    U = _orthonormal(dim, g)
    hi = 1.0 + 4.0 * torch.rand(big, generator=g, dtype=F64)
    lo = 10 ** (-6 + 3 * torch.rand(small, generator=g, dtype=F64))
    evals = torch.cat([hi, lo])
    return U @ torch.diag(evals) @ U.T, U[:, :big], U[:, big:]


@pytest.mark.parametrize("threshold", [1e-2, 0.5])
def test_nullspace_projector_is_an_orthogonal_projector_of_the_right_rank(threshold):
    """P = P^T = P^2 and trace P = #{eigenvalues < threshold} (counted with eigvalsh).

    Catches a flipped threshold (keeping eigenvalues > threshold) and a non-orthogonal P.
    """
    g = _gen(11)
    U = _orthonormal(18, g)
    C = U @ torch.diag(10 ** (-5 + 6 * torch.rand(18, generator=g, dtype=F64))) @ U.T
    expected_rank = int((torch.linalg.eigvalsh(C) < threshold).sum())
    assert 0 < expected_rank < 18 and expected_rank != 9  # a flip would change the count
    P = nullspace_projector(C, threshold)
    assert torch.allclose(P, P.T, atol=1e-12)
    assert (P @ P - P).abs().max() < 1e-10
    assert abs(float(torch.trace(P)) - expected_rank) < 1e-8


def test_nullspace_threshold_is_strict():
    """An eigenvalue equal to the threshold is not in the null space (eigenvalue < threshold)."""
    C = torch.diag(torch.tensor([0.25, 1.0, 1.0, 4.0], dtype=F64))
    assert int((torch.linalg.eigvalsh(C) < 1.0).sum()) == 1
    P = nullspace_projector(C, threshold=1.0)
    assert torch.allclose(P, torch.diag(torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=F64)), atol=1e-12)


def test_nullspace_projector_kills_preserved_directions_and_keeps_the_rest():
    g = _gen(12)
    C, keep_out, keep_in = _covariance_with_spectrum(g, big=7, small=5)
    P = nullspace_projector(C, threshold=2e-2)
    assert (P @ keep_out).norm() < 1e-10
    assert torch.allclose(P @ keep_in, keep_in, atol=1e-10)


# --- alphaedit_update ----------------------------------------------------------------


def _alphaedit_problem(seed=21, big=9, small=6, d=5, n=3):
    g = _gen(seed)
    C, preserved, free = _covariance_with_spectrum(g, big, small)
    P = nullspace_projector(C, 2e-2)
    K = torch.randn(big + small, n, generator=g, dtype=F64)
    R = torch.randn(d, n, generator=g, dtype=F64)
    C_prev = _spd(big + small, 4, g, scale=1.5)
    return K, R, P, C_prev, preserved


def test_alphaedit_update_lies_in_the_null_space():
    """Delta = Delta P, so Delta k = 0 for every preserved key direction.

    Catches the projector applied on the wrong side of the system matrix.
    """
    K, R, P, C_prev, preserved = _alphaedit_problem()
    delta = alphaedit_update(K, R, P, l2=0.7, C_prev=C_prev)
    assert (delta @ P - delta).norm() / delta.norm() < 1e-9
    assert (delta @ preserved).norm() / delta.norm() < 1e-9


@pytest.mark.parametrize("l2", [0.05, 1.0, 30.0])
def test_alphaedit_update_matches_the_projected_closed_form(l2):
    """Delta = R K^T P ((K K^T + C_prev) P + l2 I)^{-1}, inverted explicitly here.

    Catches a missing l2, a missing C_prev, and P on the wrong side.
    """
    K, R, P, C_prev, _ = _alphaedit_problem(seed=22)
    delta = alphaedit_update(K, R, P, l2=l2, C_prev=C_prev)
    eye = torch.eye(P.shape[0], dtype=F64)
    direct = R @ K.T @ P @ torch.linalg.inv((K @ K.T + C_prev) @ P + l2 * eye)
    assert (delta - direct).norm() / direct.norm() < 1e-9


def test_alphaedit_minimises_its_projected_objective():
    """Delta = D* P where D* minimises ||D P K - R||^2 + tr(D P C_prev P D^T) + l2 ||D P||^2.

    The gradient of that objective (autograd, in the test) vanishes at D = Delta, because
    Delta P = Delta. A second, formula-free route to AlphaEdit's eq. 13.
    """
    K, R, P, C_prev, _ = _alphaedit_problem(seed=23)
    l2 = 0.9
    delta = alphaedit_update(K, R, P, l2=l2, C_prev=C_prev)
    D = delta.clone().requires_grad_(True)
    DP = D @ P
    J = ((DP @ K - R) ** 2).sum() + torch.trace(DP @ C_prev @ DP.T) + l2 * (DP**2).sum()
    J.backward()
    assert D.grad.norm() / (R @ K.T).norm() < 1e-8


# --- split_residual -----------------------------------------------------------------


def test_split_residual_rules_scale_as_documented():
    R = torch.arange(1.0, 7.0, dtype=F64).reshape(2, 3)
    for left in (1, 2, 3, 5):
        assert torch.allclose(split_residual(R, left), R / left)
        assert torch.allclose(split_residual(R, left, "linear"), R / left)
        assert torch.allclose(split_residual(R, left, "sqrt"), R / math.sqrt(left))


@pytest.mark.parametrize("rule", ["linear", "sqrt"])
@pytest.mark.parametrize("n_layers", [1, 3, 5])
def test_a_spread_schedule_writes_the_whole_residual(rule, n_layers):
    """Each layer writes exactly its share and the residual shrinks by it: the shares sum to R.

    With the linear rule every layer's share is R / L (computed here by hand); the
    schedule is simulated in the test, scalar bookkeeping alongside.
    """
    g = _gen(31)
    R = torch.randn(4, 3, generator=g, dtype=F64)
    written = torch.zeros_like(R)
    scalar_left = 1.0  # the fraction of R still unwritten, tracked by hand
    for i in range(n_layers):
        left = n_layers - i
        share = split_residual(R - written, left, rule)
        frac = scalar_left / (left if rule == "linear" else math.sqrt(left))
        assert torch.allclose(share, frac * R, atol=1e-12)
        if rule == "linear":
            assert torch.allclose(share, R / n_layers, atol=1e-12)
        written = written + share
        scalar_left -= frac
    assert torch.allclose(written, R, atol=1e-12)


def test_split_residual_rejects_bad_input():
    R = torch.ones(2, 2)
    with pytest.raises(ValueError, match="layers_left"):
        split_residual(R, 0)
    with pytest.raises(ValueError, match="cubic"):
        split_residual(R, 2, "cubic")


# --- keep_top_relative_change ----------------------------------------------------------


def test_keep_top_ranks_by_relative_not_absolute_change():
    """|delta| ranks 3 > 2 > 1 > 0 but |delta| / |W| ranks 0 > 1 > 2 > 3."""
    delta = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    weight = torch.tensor([[0.1, -1.0], [10.0, -100.0]])  # negative W: the ratio uses |W|
    kept = keep_top_relative_change(delta, weight, 0.5)  # the reference's rule keeps 4 - int(4 * 0.5) + 1 = 3
    assert torch.equal(kept, torch.tensor([[1.0, -2.0], [3.0, 0.0]]))


@pytest.mark.parametrize("fraction", [0.005, 0.01, 0.05, 0.3, 0.4, 0.5, 0.77, 1.0])
def test_keep_top_keeps_what_the_reference_rule_keeps(fraction):
    """The reference keeps every entry whose |delta / (W + 1e-8)| reaches the k-th smallest
    score, k = int(numel * (100 - 100 fraction) / 100): numel - k + 1 entries (no ties here),
    unchanged, and they are the top ratios (sorted in plain Python here); all others are zero."""
    g = _gen(41)
    delta = torch.randn(6, 9, generator=g)
    weight = torch.randn(6, 9, generator=g) * torch.rand(6, 9, generator=g) * 10
    kept = keep_top_relative_change(delta, weight, fraction)
    numel = delta.numel()
    k = int(numel * (100 - 100 * fraction) / 100)
    n_keep = numel if k == 0 else numel - k + 1
    if fraction == 0.4:
        assert n_keep == 54 - 32 + 1 == round(0.4 * 54) + 1  # one more than 40%: the count the old rule missed
    ratios = [abs(float(d) / (float(w) + 1e-8)) for d, w in zip(delta.flatten(), weight.flatten())]
    top = set(sorted(range(len(ratios)), key=lambda i: -ratios[i])[:n_keep])
    by_abs = set(sorted(range(len(ratios)), key=lambda i: -abs(float(delta.flatten()[i])))[:n_keep])
    if 3 <= n_keep < numel:
        assert top != by_abs  # the data really separates the two rankings
    flat = kept.flatten()
    assert int((flat != 0).sum()) == n_keep
    for i in range(len(ratios)):
        assert float(flat[i]) == (float(delta.flatten()[i]) if i in top else 0.0)


def test_keep_top_keeps_ties_at_the_threshold():
    """Entries tied with the k-th smallest score all survive, as the reference's >= does."""
    delta = torch.ones(2, 5)
    weight = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0], [2.0, 4.0, 8.0, 16.0, 32.0]])
    # scores: five of 1, then 1/2 ... 1/32; k = int(10 * 0.6) = 6: the 6th smallest is 1
    kept = keep_top_relative_change(delta, weight, 0.4)
    assert torch.equal(kept != 0, torch.tensor([[True] * 5, [False] * 5]))


def test_keep_top_counts_as_the_reference_on_a_model_sized_matrix():
    """A 128 x 512 matrix (the tiny models' FFN output): 26216 entries, two more than round(0.4 numel)."""
    g = _gen(5)
    delta, weight = torch.randn(128, 512, generator=g), torch.randn(128, 512, generator=g)
    kept = keep_top_relative_change(delta, weight, 0.4)
    assert int((kept != 0).sum()) == 65536 - int(65536 * 60 / 100) + 1 == round(0.4 * 65536) + 2


def test_keep_top_ranks_a_zero_over_zero_score_lowest():
    """0 / (W + 1e-8) with W = -1e-8 is 0 / 0: it scores 0 (lowest), it does not push the threshold up."""
    delta = torch.tensor([[0.0, 0.5, 2.0, 3.0]], dtype=torch.float64)
    weight = torch.tensor([[-RECT_EPSILON, 1.0, 1.0, 1.0]], dtype=torch.float64)
    kept = keep_top_relative_change(delta, weight, 0.5)  # k = int(4 * 0.5) = 2: scores 0, 0.5, 2, 3 -> threshold 0.5
    assert kept.tolist() == [[0.0, 0.5, 2.0, 3.0]]


def test_keep_top_adds_epsilon_to_w_before_dividing():
    """W = 1e-8 divides by 2e-8 (score 0.05, dropped), not by 0 (an infinite score, kept)."""
    delta = torch.tensor([[1e-9, 0.5, 2.0, 3.0]], dtype=torch.float64)
    weight = torch.tensor([[RECT_EPSILON, 1.0, 1.0, 1.0]], dtype=torch.float64)
    kept = keep_top_relative_change(delta, weight, 0.5)  # scores 0.05, 0.5, 2, 3 -> threshold 0.5
    assert kept.tolist() == [[0.0, 0.5, 2.0, 3.0]]


def test_keep_top_scores_in_the_changes_dtype():
    """A float32 change against float64 weights: W = 1, 1 + 1e-12 and 1 + 2e-12 are all 1.0 in float32,
    so their three scores tie at the threshold and all stay (in float64 the smallest would go)."""
    delta = torch.ones(1, 4, dtype=torch.float32)
    weight = torch.tensor([[1.0, 1.0 + 1e-12, 1.0 + 2e-12, 2.0]], dtype=torch.float64)
    kept = keep_top_relative_change(delta, weight, 0.25)  # k = int(4 * 0.75) = 3: the third smallest score
    assert kept.dtype == torch.float32
    assert kept.tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_keep_top_keeps_every_entry_when_the_rank_is_zero():
    """keep_fraction = 1: the reference's k is 0, and every entry stays, the smallest included."""
    delta = torch.tensor([[0.1, -0.2, 0.3, 0.05]], dtype=torch.float64)  # scores 0.1, 0.1, 0.1, 0.0125
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    assert torch.equal(keep_top_relative_change(delta, weight, 1.0), delta)


def test_keep_top_rejects_bad_fraction():
    with pytest.raises(ValueError, match="keep_fraction"):
        keep_top_relative_change(torch.ones(2, 2), torch.ones(2, 2), 0.0)
    with pytest.raises(ValueError, match="keep_fraction"):
        keep_top_relative_change(torch.ones(2, 2), torch.ones(2, 2), 1.5)


# --- compress_singular_values -----------------------------------------------------------


def _with_singular_values(s: torch.Tensor, rows: int, seed: int):
    """delta = U diag(s) V^T from orthonormal U, V built in the test."""
    g = _gen(seed)
    U = _orthonormal(rows, g)[:, : len(s)]
    V = _orthonormal(len(s), g)
    return U @ torch.diag(s) @ V.T, U, V


@pytest.mark.parametrize("log_base", [math.e, 10.0, 2.0])
def test_compress_maps_large_singular_values_to_bound_plus_log(log_base):
    """s > bound -> bound + log_base(s / bound); s <= bound unchanged; U and V unchanged."""
    bound = 2.0
    s = torch.tensor([40.0, 9.0, 3.0, 1.5, 0.2], dtype=F64)
    delta, U, V = _with_singular_values(s, rows=8, seed=51)
    out = compress_singular_values(delta, bound, log_base)
    expected_s = []
    for value in s.tolist():
        if value > bound:
            f = bound + math.log(value / bound) / math.log(log_base)
            expected_s.append(min(value, f))
        else:
            expected_s.append(value)
    assert expected_s[0] < 40.0 and expected_s[-2:] == [1.5, 0.2]
    expected = U @ torch.diag(torch.tensor(expected_s, dtype=F64)) @ V.T
    assert torch.allclose(out, expected, atol=1e-10)


def test_compress_never_enlarges_a_singular_value():
    """With a base below e, F(s) > s just above the bound; the documented min(s, F(s)) keeps s."""
    bound, base = 2.0, 1.2
    s = torch.tensor([2.5, 1.0], dtype=F64)  # F(2.5) = 2 + ln(1.25)/ln(1.2) = 3.22 > 2.5
    assert bound + math.log(2.5 / bound) / math.log(base) > 2.5
    delta, U, V = _with_singular_values(s, rows=4, seed=52)
    out = compress_singular_values(delta, bound, base)
    assert torch.allclose(out, delta.to(F64), atol=1e-10)


def test_compress_rejects_bad_parameters():
    with pytest.raises(ValueError, match="bound"):
        compress_singular_values(torch.eye(2), 0.0)
    with pytest.raises(ValueError, match="log_base"):
        compress_singular_values(torch.eye(2), 1.0, log_base=1.0)
