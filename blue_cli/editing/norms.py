"""Norms that show a long edit stream collapsing, and Norm-Anchor Scaling's rescaling.

Pure functions: tensors in, numbers or tensors out; no model access.

Liu et al. 2026 ("Norm Anchors Make Model Edits Last", arXiv 2602.02543) trace the
collapse of sequential locate-then-edit methods to a loop in which the solved value
vectors v* and the edited MLP matrices grow each other's norms. The monitor therefore
records, after each batch, ||W||_F and ||W - W0||_F of every written matrix (and an
estimate of the change's spectral norm), and the norms of the batch's v*.
"""

from __future__ import annotations

import torch

SPECTRAL_ITERATIONS = 30


def spectral_norm_estimate(A: torch.Tensor, iterations: int = SPECTRAL_ITERATIONS) -> float:
    """sigma_max(A) by power iteration on A^T A from a fixed start vector (float64).

    A lower bound that converges to sigma_max; ``iterations`` matrix-vector pairs cost
    4 * iterations * m * n flops, against O(m n min(m, n)) for an SVD, so it is cheap
    enough to run after every batch on a 4096 x 14336 matrix. Deterministic: the start
    vector comes from a private generator with a fixed seed.
    """
    A = A.detach().double()
    if A.numel() == 0 or not bool(A.any()):
        return 0.0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(A.shape[1], generator=gen, dtype=torch.float64).to(A.device)
    x = x / x.norm()
    sigma = 0.0
    for _ in range(iterations):
        y = A @ x
        sigma = float(y.norm())
        if sigma == 0.0:
            return 0.0
        x = A.T @ (y / sigma)
        x = x / x.norm().clamp_min(1e-300)
    return sigma


def matrix_norms(W: torch.Tensor, W0: torch.Tensor, spectral: bool = True) -> dict[str, float]:
    """``weight``: ||W||_F; ``change``: ||W - W0||_F; ``change_spectral``: sigma_max(W - W0) (estimate)."""
    # One float64 copy of W alive at a time (as checkpoint.fingerprint's): the change is formed in place.
    change = W.detach().to(torch.float64, copy=True)
    out = {"weight": float(change.norm())}
    change -= W0.detach().to(change.device)
    out["change"] = float(change.norm())
    if spectral:
        out["change_spectral"] = spectral_norm_estimate(change)
    return out


def trimmed_mean(values: torch.Tensor, keep_quantile: float) -> float:
    """Mean of ``values`` without the largest floor((1 - keep_quantile) * n) of them (float64).

    Norm-Anchor Scaling's reference norm: a few targets that the optimisation could not
    reach within its clamp have very long v*, and they would set the anchor too high.
    """
    v = torch.sort(values.detach().double().flatten()).values
    if v.numel() == 0:
        raise ValueError("no values to average")
    drop = int((1.0 - keep_quantile) * v.numel() + 1e-9)
    kept = v[: v.numel() - drop] if drop else v
    if kept.numel() == 0:
        raise ValueError(f"keep_quantile {keep_quantile} leaves none of {v.numel()} values")
    return float(kept.mean())


def anchor_values(
    v0: torch.Tensor, delta: torch.Tensor, reference: float, skip_factor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Norm-Anchor Scaling of one batch's value vectors; returns (new delta, skipped mask).

    ``v0`` (n x d): the rewrite matrix's output at each request's subject token on the
    current model; ``delta`` (n x d): the optimised shift of the write point, so the
    solved value vector is v* = v0 + delta. Each v* is rescaled to norm ``reference``,
    v*' = reference * v* / ||v*||, unless ||v*|| > ``skip_factor`` * reference, when the
    edit is dropped (v*' = v0). The new delta is v*' - v0, so the target the strategy
    writes becomes z' = h_init + v*' - v0 (the anchor's ``res_pre_mlp + v_star``).
    Computed in float64, returned in ``delta``'s dtype.
    """
    v0_64, d64 = v0.detach().double(), delta.detach().double()
    v_star = v0_64 + d64
    norms = v_star.norm(dim=1)
    skipped = norms > skip_factor * reference
    scaled = v_star * (reference / norms.clamp_min(1e-12))[:, None]
    new_v = torch.where(skipped[:, None], v0_64, scaled)
    return (new_v - v0_64).to(delta.dtype), skipped
