"""Closed-form weight updates and projectors: tensors in, tensors out, float64.

Shapes: K (d_k x n) keys, R (d x n) residuals, C and C_prev (d_k x d_k) second
moments, Delta (d x d_k) an update to the rewrite matrix W (d x d_k).
Float64 throughout: MEMIT's and PMET's reference solves are float64 (AlphaEdit's
is float32, which float64 only makes more exact), a d_k x d_k system with lambda
in the thousands loses digits in float32, and the tests compare against exact algebra.
"""

from __future__ import annotations

import math

import torch


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64)


def _solve_spd(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A^{-1} B for symmetric A: Cholesky where A is positive definite, else LU."""
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(B, L)
    return torch.linalg.solve(A, B)


def memit_update(
    K: torch.Tensor, R: torch.Tensor, C: torch.Tensor, cov_weight: float, C_prev: torch.Tensor | None = None
) -> torch.Tensor:
    """Delta = R K^T (cov_weight C + C_prev + K K^T)^{-1}  (MEMIT eq. 14, sequential form).

    The system matrix is symmetric positive (semi)definite, so it is solved with a
    Cholesky factorisation, for the n columns of Q = A^{-1} K, then Delta = R Q^T:
    the same algebra as solving for Delta^T = A^{-1} (K R^T), without the d right-hand
    sides (on Llama3, d_k = 14336, n = 100, d = 4096: 0.04 instead of 1.7 TFLOP of
    triangular solves beside the 1 TFLOP factorisation; the reference solves for
    the d columns).
    """
    K64, R64 = _f64(K), _f64(R)
    A = cov_weight * _f64(C) + K64 @ K64.T
    if C_prev is not None:
        A = A + _f64(C_prev)
    return R64 @ _solve_spd(A, K64).T


def emmet_update(
    K: torch.Tensor,
    R: torch.Tensor,
    C: torch.Tensor,
    cov_weight: float,
    emmet_lambda: float,
    norm_weight: float = 0.0,
    C_prev: torch.Tensor | None = None,
) -> torch.Tensor:
    """Delta = R (K^T A^{-1} K + emmet_lambda I)^{-1} K^T A^{-1}, A = cov_weight C + norm_weight I
    (+ C_prev)  (EMMET, Gupta et al. 2024: the batch's keys as equality constraints, relaxed
    by emmet_lambda; 0 asks Delta K = R exactly).

    One d_k x d_k factorisation of A for the n columns of Y = A^{-1} K, then an n x n system.
    With emmet_lambda = 1 it is MEMIT's update on the same A (Woodbury). An n x n matrix that
    is singular (emmet_lambda 0 with dependent keys) is solved by its pseudo-inverse, as EasyEdit does.
    """
    K64, R64 = _f64(K), _f64(R)
    A = cov_weight * _f64(C)
    if norm_weight:
        A = A + norm_weight * torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    if C_prev is not None:
        A = A + _f64(C_prev)
    Y = _solve_spd(A, K64)
    D = K64.T @ Y + emmet_lambda * torch.eye(K64.shape[1], dtype=A.dtype, device=A.device)
    L, info = torch.linalg.cholesky_ex(D)
    if int(info) == 0:
        return R64 @ torch.cholesky_solve(Y.T, L)
    return R64 @ torch.linalg.pinv(D, hermitian=True) @ Y.T


def nullspace_projector(C: torch.Tensor, threshold: float) -> torch.Tensor:
    """P = U0 U0^T over eigenvectors of the symmetric C with eigenvalue < threshold.

    AlphaEdit's projector onto the (approximate) null space of the preserved keys.
    Differs from reference: a symmetric eigendecomposition instead of a general SVD
    (same subspace for a PSD matrix, faster, and it runs on GPU).
    """
    evals, evecs = torch.linalg.eigh(_f64(C))
    U0 = evecs[:, evals < threshold]
    return U0 @ U0.T


def alphaedit_update(
    K: torch.Tensor, R: torch.Tensor, P: torch.Tensor, l2: float, C_prev: torch.Tensor | None = None
) -> torch.Tensor:
    """Delta with Delta^T = solve(P (K K^T + C_prev) + l2 I, P K R^T)  (AlphaEdit eq. 13).

    The system matrix is not symmetric, so a general LU solve is used, for the n
    columns of Q = A^{-1} P K, then Delta = R Q^T (n right-hand sides, not d; see
    :func:`memit_update`).
    """
    K64, R64, P64 = _f64(K), _f64(R), _f64(P)
    M = K64 @ K64.T
    if C_prev is not None:
        M = M + _f64(C_prev)
    A = P64 @ M
    A.diagonal().add_(l2)  # + l2 I, without forming a d_k x d_k identity
    return R64 @ torch.linalg.solve(A, P64 @ K64).T


def split_residual(R: torch.Tensor, layers_left: int, rule: str = "linear") -> torch.Tensor:
    """Share of the residual a layer takes when ``layers_left`` layers remain.

    ``linear``: R / layers_left (MEMIT); ``sqrt``: R / sqrt(layers_left) (PMET).
    """
    if layers_left < 1:
        raise ValueError(f"layers_left must be >= 1, got {layers_left}")
    if rule == "linear":
        return R / layers_left
    if rule == "sqrt":
        return R / math.sqrt(layers_left)
    raise ValueError(f"unknown residual split rule {rule!r} (choose: linear, sqrt)")


RECT_EPSILON = 1e-8  # added to W before dividing, as the reference's sparsification


def rect_threshold_rank(numel: int, keep_fraction: float) -> int:
    """k of RECT's threshold, the k-th smallest score (1-based; 0: keep every entry).

    The reference takes k = int(numel * (100 - p) / 100) for a kept percentage p (40), so
    it keeps numel - k + 1 entries plus ties at the threshold, not exactly p percent.
    """
    percent = 100.0 * keep_fraction
    return int(numel * (100.0 - percent) / 100.0)


def keep_top_relative_change(delta: torch.Tensor, weight: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """RECT: zero the entries of ``delta`` whose score |delta / (W + 1e-8)| is below the
    k-th smallest score, k = :func:`rect_threshold_rank` (numel, ``keep_fraction``).

    As the reference: every entry at or above that threshold is kept, which is
    numel - floor((1 - keep_fraction) numel) + 1 entries plus any ties at the threshold
    (the score is computed in ``delta``'s dtype).
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    score = (delta / (weight.to(delta.dtype) + RECT_EPSILON)).abs().flatten()
    score[score.isnan()] = 0.0  # 0 / 0 (a zero change where W = -1e-8) ranks lowest
    k = max(rect_threshold_rank(score.numel(), keep_fraction), 1)  # k = 1: the smallest score, every entry kept
    threshold = torch.kthvalue(score, k).values
    return delta * (score >= threshold).view_as(delta)


def compress_singular_values(delta: torch.Tensor, bound: float, log_base: float = math.e) -> torch.Tensor:
    """PRUNE: singular values s of ``delta`` above ``bound`` become bound + log_base(s / bound).

    The PRUNE paper's restraint F(s) = log_a(s) - log_a(bound) + bound, with bound the
    largest singular value of the original matrix (a = e in its released code): the
    accumulated change keeps its directions but its large singular values grow only
    logarithmically. Differs from reference: the result is min(s, F(s)), so a
    singular value is never enlarged (F(s) > s happens for a bound below 1, or a
    base below e, when s is close to the bound).
    """
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    if log_base <= 1:
        raise ValueError(f"log_base must be > 1, got {log_base}")
    U, S, Vh = torch.linalg.svd(_f64(delta), full_matrices=False)
    F = bound + torch.log(S.clamp_min(bound) / bound) / math.log(log_base)  # = bound, so min(S, F) = S, below it
    S = torch.minimum(S, F)
    return (U * S) @ Vh


# --- Updated solves: one factorisation per layer, rank-n updates per batch ------------------
#
# Every method's system has the form A = B + U_h V_h^T + U V^T: B factorised once (lambda C for
# MEMIT and its kin, l2 I for AlphaEdit), U_h V_h^T the keys recorded since (C_prev's growth,
# P C_prev's for AlphaEdit), and U V^T this batch's keys (U = K, or P K for AlphaEdit; V = K).
# The right-hand side is always U. Woodbury's identity gives A^{-1} U in
# O(d_k^2 n + d_k m n + m^2 n) for n new and m recorded keys; see docs/solver.md.

HISTORY_FRACTION = 8  # a factorised B is refactorised with the recorded keys once m >= d_k / 8
IDENTITY_HISTORY_FRACTION = 4  # B = s I (nothing factorised yet): once m >= d_k / 4


class Factor:
    """B held factorised, float64: a scaled identity (``kind`` "scale", B = value I), a
    Cholesky factor ("cholesky", B = L L^T, L = value) or an LU factorisation ("lu",
    ``value`` and ``pivots`` from torch.linalg.lu_factor, B itself kept as ``matrix``)."""

    def __init__(
        self, kind: str, value: torch.Tensor, pivots: torch.Tensor | None = None, matrix: torch.Tensor | None = None
    ):
        self.kind = kind
        self.value = value
        self.pivots = pivots
        self.matrix = matrix

    def to_(self, device: torch.device | str) -> None:
        """Move the factorisation to ``device`` in place (offloaded state)."""
        self.value = self.value.to(device)
        self.pivots = None if self.pivots is None else self.pivots.to(device)
        self.matrix = None if self.matrix is None else self.matrix.to(device)

    def solve(self, X: torch.Tensor) -> torch.Tensor:
        """B^{-1} X for X (d_k x n), float64."""
        X = _f64(X)
        if self.kind == "scale":
            return X / self.value
        if self.kind == "cholesky":  # two triangular solves: torch.cholesky_solve copies L (3-8x slower here)
            Y = torch.linalg.solve_triangular(self.value, X, upper=False)
            return torch.linalg.solve_triangular(self.value.mT, Y, upper=True)
        return torch.linalg.lu_solve(self.value, self.pivots, X)

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        """B X for X (d_k x n), float64."""
        X = _f64(X)
        if self.kind == "scale":
            return X * self.value
        if self.kind == "cholesky":
            return self.value @ (self.value.T @ X)
        return self.matrix @ X

    def dense(self, like: torch.Tensor) -> torch.Tensor:
        """B itself (d_k x d_k, with ``like``'s first dimension, dtype and device), formed for a
        refactorisation."""
        if self.kind == "cholesky":
            return lower_gram(self.value)
        if self.kind == "lu":
            return self.matrix  # not a copy: LowRankSystem.refactorised consumes its system
        B = like.new_zeros(like.shape[0], like.shape[0])
        B.diagonal().fill_(float(self.value))
        return B


# The block size and the loops' steps below set only the cost: any block size gives the same
# L L^T, and a block computed twice (or one above the diagonal) is still exact. Mutation testing
# skips those three lines (their mutants change no result; tests/unit/test_updated_solver.py
# checks the product for several block sizes).
def lower_gram(L: torch.Tensor, block: int = 1024) -> torch.Tensor:  # pragma: no mutate
    """L L^T for a lower-triangular L (d_k x d_k), block by block: block (i, j) of the result
    needs only the first j + 1 block columns of L, which makes d_k^3 / 3 flops instead of a
    full product's 2 d_k^3 (LAPACK's lauum; torch has none). Exactly symmetric."""
    size = len(L)
    B = torch.empty_like(L)
    for i in range(0, size, block):  # pragma: no mutate
        i1 = min(i + block, size)
        for j in range(0, i + 1, block):  # pragma: no mutate
            j1 = min(j + block, size)
            product = L[i:i1, :j1] @ L[j:j1, :j1].T
            if j == i:  # a product X X^T need not come out exactly symmetric; its mean with its transpose is
                product = (product + product.T) / 2
            B[i:i1, j:j1] = product
            B[j:j1, i:i1] = product.T
    return B


def scaled_identity(scale: float) -> Factor:
    """B = scale I (AlphaEdit before its first refactorisation): nothing to factorise."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return Factor("scale", torch.tensor(float(scale), dtype=torch.float64))


def factorise(B: torch.Tensor, symmetric: bool) -> Factor:
    """One O(d_k^3) factorisation of B (d_k x d_k): Cholesky when ``symmetric`` and B is
    positive definite (MEMIT's lambda C + C_prev), else LU (AlphaEdit's l2 I + P C_prev)."""
    B = _f64(B)
    if symmetric:
        L, info = torch.linalg.cholesky_ex(B)
        if int(info) == 0:
            return Factor("cholesky", L)
    LU, pivots = torch.linalg.lu_factor(B)
    return Factor("lu", LU, pivots, matrix=B)


class LowRankSystem:
    """A_h = B + U_h V_h^T, with B factorised and the recorded keys kept as U_h, V_h (d_k x m;
    U_h is V_h itself when every recorded U was its V), G_h = B^{-1} U_h and
    S_inv = (I + V_h^T G_h)^{-1} (m x m)."""

    def __init__(self, factor: Factor, size: int):
        """No keys recorded yet; tensors on the factor's device (``to_`` moves them all)."""
        self.factor = factor
        empty = factor.value.new_zeros(size, 0)
        self.G, self.V, self.U = empty, empty.clone(), None
        self.S_inv = factor.value.new_zeros(0, 0)

    def to_(self, device: torch.device | str) -> None:
        """Move the factorisation and the recorded keys to ``device`` in place."""
        self.factor.to_(device)
        self.G, self.V, self.S_inv = self.G.to(device), self.V.to(device), self.S_inv.to(device)
        self.U = None if self.U is None else self.U.to(device)

    @property
    def recorded(self) -> int:
        """m, the keys recorded since B was factorised."""
        return self.V.shape[1]

    @property
    def size(self) -> int:
        return self.V.shape[0]

    @property
    def U_h(self) -> torch.Tensor:
        return self.V if self.U is None else self.U

    def apply_inverse(self, X: torch.Tensor) -> torch.Tensor:
        """A_h^{-1} X = B^{-1} X - G_h S_inv V_h^T B^{-1} X (Woodbury)."""
        Y = self.factor.solve(X)
        if self.recorded == 0:
            return Y
        return Y - self.G @ (self.S_inv @ (self.V.T @ Y))

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        """A_h X = B X + U_h (V_h^T X), from the factorisation and the recorded keys."""
        BX = self.factor.apply(X)
        if self.recorded == 0:
            return BX
        return BX + self.U_h @ (self.V.T @ _f64(X))

    def solve(self, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """Q = (A_h + U V^T)^{-1} U for U, V (d_k x n): Z = A_h^{-1} U, then Q = Z (I + V^T Z)^{-1}."""
        U64, V64 = _f64(U), _f64(V)
        Z = self.apply_inverse(U64)
        T = V64.T @ Z
        T.diagonal().add_(1.0)  # I + V^T Z
        return torch.linalg.solve(T, Z, left=False)

    def record(self, U: torch.Tensor, V: torch.Tensor) -> None:
        """A_h += U V^T: append U, V and B^{-1} U, and extend S_inv by the block inverse
        (Schur complement s = I + V^T B^{-1} U - V^T G_h S_inv V_h^T B^{-1} U)."""
        same = U is V
        U64, V64 = _f64(U), _f64(V)
        g = self.factor.solve(U64)
        b = self.V.T @ g  # m x n
        c = V64.T @ self.G  # n x m
        d = V64.T @ g
        d.diagonal().add_(1.0)  # I + V^T B^{-1} U
        Sb, cS = self.S_inv @ b, c @ self.S_inv
        s_inv = torch.linalg.inv(d - c @ Sb)
        top = torch.cat([self.S_inv + Sb @ s_inv @ cS, -Sb @ s_inv], dim=1)
        bottom = torch.cat([-s_inv @ cS, s_inv], dim=1)
        if not same or self.U is not None:
            self.U = torch.cat([self.U_h, U64], dim=1)
        self.S_inv = torch.cat([top, bottom])
        self.G = torch.cat([self.G, g], dim=1)
        self.V = torch.cat([self.V, V64], dim=1)

    def needs_refactorisation(self) -> bool:
        """Whether to fold the recorded keys into a new factorisation of B: once
        m >= d_k / HISTORY_FRACTION (d_k / IDENTITY_HISTORY_FRACTION while B is a scaled
        identity), past which keeping them costs more time (memory) than refactorising."""
        fraction = IDENTITY_HISTORY_FRACTION if self.factor.kind == "scale" else HISTORY_FRACTION
        return self.recorded * fraction >= self.size

    def refactorised(self, symmetric: bool) -> LowRankSystem:
        """A new system whose B is this A_h, factorised (O(d_k^3)), with no recorded keys.
        This system is consumed (its factorisation is freed, and reused as B's memory)."""
        B = self.factor.dense(self.V)
        if self.recorded:
            B = B.addmm_(self.U_h, self.V.T)
        del self.factor  # not needed any more: freed before factorising
        return LowRankSystem(factorise(B, symmetric), self.size)


def relative_residual(AQ: torch.Tensor, Y: torch.Tensor) -> float:
    """||Y - A Q||_F / ||Y||_F: the check that an updated solve still solves A Q = Y
    (0 when A Q = Y exactly, Y = 0 included; inf when only Y is 0)."""
    miss = float((_f64(Y) - _f64(AQ)).norm())
    if miss == 0.0:
        return 0.0
    scale = float(_f64(Y).norm())
    return miss / scale if scale > 0.0 else math.inf


def solve_checked(
    system: LowRankSystem, U: torch.Tensor, V: torch.Tensor, tolerance: float, symmetric: bool
) -> tuple[LowRankSystem, torch.Tensor, float]:
    """Q = (A_h + U V^T)^{-1} U with the residual check: when ||U - A Q|| / ||U|| (A Q from the
    factorisation and the keys, O(d_k^2 n)) exceeds ``tolerance`` (or is NaN), refactorise
    and solve again. Returns the system to keep, Q and the residual of the Q returned."""
    Q = system.solve(U, V)
    residual = relative_residual(system.apply(Q) + _f64(U) @ (_f64(V).T @ Q), U)
    if not residual <= tolerance:
        system = system.refactorised(symmetric)
        Q = system.solve(U, V)
        residual = relative_residual(system.apply(Q) + _f64(U) @ (_f64(V).T @ Q), U)
    return system, Q, residual
