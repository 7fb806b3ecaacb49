"""EMMET (Gupta et al. 2024, arXiv 2403.14236): the batch's keys as equality constraints."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blue_cli.config.registry import register_method
from blue_cli.editing.methods.memit import Memit, MemitConfig
from blue_cli.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass
class EmmetConfig(MemitConfig):
    """``cov_weight``: lambda on C (EMMET's published settings: 1, ``mom2_update_weight``);
    ``emmet_lambda``: the ridge on the n x n constraint system (0.1 published; 0: every key
    written exactly); ``norm_weight``: alpha in A = lambda C + alpha I (EasyEdit's
    ``update_norm_lambda``, 0 published). ``emmet`` has no key cache; ``emmet_seq`` adds C_prev."""

    name: str = "emmet"
    cov_weight: float = 1.0
    emmet_lambda: float = 0.1
    norm_weight: float = 0.0

    @classmethod
    def check(cls, node) -> None:
        """emmet_lambda and norm_weight at least 0 and finite, besides MEMIT's checks."""
        for key in ("emmet_lambda", "norm_weight"):
            value = node.get(key, 0.0)
            if not 0 <= value < math.inf:
                raise ConfigError(f"method.{key} must be >= 0 and finite, got {value}")
        super().check(node)


@register_method("emmet", config=EmmetConfig, variants=("emmet_seq",))
class Emmet(Memit):
    """Delta = R (K^T A^{-1} K + emmet_lambda I)^{-1} K^T A^{-1} per written layer, A = lambda C
    + alpha I (+ C_prev for ``emmet_seq``): the closed form of minimising the change to the
    preserved keys' outputs subject to (nearly) writing every key of the batch. One d_k x d_k
    factorisation of A and an n x n system per layer; solved directly (no updated solver:
    this batch's keys are not a low-rank term of A here). Targets, keys and residual sharing
    are MEMIT's, so either strategy drives it as it drives MEMIT.

    Differs from EasyEdit's EMMET: its keys are one column per context template (each
    request's target repeated), blue's the mean over templates, as MEMIT's; the solve
    uses a Cholesky factorisation where EasyEdit inverts A and the n x n matrix.
    """

    solve_matrices = 3  # lambda C, A's factor, K^T A^{-1} K's system (n x n, small)

    @staticmethod
    def solve_flops(d: int, dk: int, n: int) -> float:
        """A Cholesky factorisation, A^{-1} K (two triangular solves, n columns), K^T Y, the
        n x n solve, and Delta = R (D^{-1} Y^T)."""
        return dk**3 / 3 + 2 * dk * dk * n + 2 * dk * n * n + n**3 / 3 + 2 * dk * n * n + 2 * d * n * dk

    def solve_direct(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        from blue_cli.editing.linalg import emmet_update

        C, C_prev = self.resident(self.C[layer]), self.resident(self.previous_keys(layer))
        cfg = self.cfg
        return emmet_update(K, R, C, cfg.cov_weight, cfg.emmet_lambda, cfg.get("norm_weight", 0.0), C_prev)
