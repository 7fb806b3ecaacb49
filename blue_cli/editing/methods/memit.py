"""MEMIT: Delta = R K^T (lambda C + C_prev + K K^T)^{-1} per layer (Meng et al. 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blue_cli.config.registry import register_method
from blue_cli.config.schema import MethodConfig
from blue_cli.editing.methods.base import EditMethod
from blue_cli.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from blue_cli.editing.linalg import Factor
    from blue_cli.editing.statistics.store import CovarianceStore


@dataclass
class MemitConfig(MethodConfig):
    """``cov_weight``: lambda, the reference's ``mom2_update_weight`` (per model, from
    ``model_hparams.cov_weight``). ``memit`` has no key cache; ``memit_seq`` keeps C_prev."""

    name: str = "memit"
    cov_weight: float = 15000.0

    # lambda in (cov_weight C + K K^T)^-1: published settings use 1e3-2e4; far above, cov_weight C
    # swamps the batch's keys and every update rounds to zero (the edit is a no-op).
    MAX_COV_WEIGHT = 1e10

    @classmethod
    def check(cls, node) -> None:
        """cov_weight positive, finite and at most :attr:`MAX_COV_WEIGHT`, besides the shared checks."""
        weight = node.cov_weight
        if not 0 < weight < math.inf:
            raise ConfigError(f"method.cov_weight must be positive and finite, got {weight}")
        if weight > cls.MAX_COV_WEIGHT:
            raise ConfigError(
                f"method.cov_weight must be at most {cls.MAX_COV_WEIGHT:g}, got {weight:g}: published settings use "
                "1e3-2e4, and far above that cov_weight*C swamps the edit's keys so that every edit is a no-op"
            )
        super().check(node)


@register_method("memit", config=MemitConfig, variants=("memit_seq",))
class Memit(EditMethod):
    """Least-squares write of the residual onto the keys, regularised by the key covariance.

    As the reference, ``memit`` (plain MEMIT, the paper's baseline rows) solves with
    lambda C + K K^T only; ``memit_seq`` adds C_prev, the keys of earlier batches.
    """

    updated_solver = True

    def prepare(self, covariances: CovarianceStore, device: torch.device) -> None:
        super().prepare(covariances, device)
        # the updated solver keeps lambda C's factor instead of C (initial_factor)
        self.C = {l: self.stored(covariances.get(l)) for l in self.layers} if self.solver == "direct" else {}

    def solve_direct(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        from blue_cli.editing.linalg import memit_update

        C, C_prev = self.resident(self.C[layer]), self.resident(self.previous_keys(layer))
        return memit_update(K, R, C, self.cfg.cov_weight, C_prev)

    def low_rank_terms(self, layer: int, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """U = V = K: A = lambda C + C_prev + K K^T."""
        import torch

        K64 = K.to(device=self.device, dtype=torch.float64)
        return K64, K64

    def initial_factor(self, layer: int) -> Factor:
        """The Cholesky factor of lambda C, cached beside the statistics (as AlphaEdit's P);
        LU when lambda C is not positive definite (not cached)."""
        import torch

        from blue_cli.editing.linalg import Factor, factorise

        weight = float(self.cfg.cov_weight)

        def cholesky(C: torch.Tensor) -> torch.Tensor:
            L, info = torch.linalg.cholesky_ex(weight * C.to(torch.float64))
            return L if int(info) == 0 else L[:0, :0]

        L = self.covariances.cached_tensor(layer, f"cholesky_{weight!r}", cholesky)
        if L.numel() == 0:
            return factorise(weight * self.covariances.get(layer).to(torch.float64), symmetric=False)
        return Factor("cholesky", L.to(self.home))
