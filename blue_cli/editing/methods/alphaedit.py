"""AlphaEdit (Fang et al. 2025): project the update onto the null space of preserved keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from blue_cli.config.registry import register_method
from blue_cli.config.schema import MethodConfig
from blue_cli.editing.methods.base import EditMethod, times

if TYPE_CHECKING:
    import torch

    from blue_cli.editing.linalg import Factor
    from blue_cli.editing.statistics.store import CovarianceStore


@dataclass
class AlphaEditConfig(MethodConfig):
    """``l2``: ridge term on the projected system; ``nullspace_threshold``: eigenvalue cut of C.

    AlphaEdit keeps C_prev (``keep_previous_keys: true``) as the reference does."""

    name: str = "alphaedit"
    keep_previous_keys: bool = True
    l2: float = 10.0
    nullspace_threshold: float = 2e-2


@register_method("alphaedit", config=AlphaEditConfig)
class AlphaEdit(EditMethod):
    """Delta^T = solve(P (K K^T + C_prev) + l2 I, P K R^T), P = U0 U0^T over the
    eigenvectors of C with eigenvalue < ``nullspace_threshold``.

    There is no lambda*C term: P already removes the directions of the preserved
    keys. P is computed once per model and layer, cached beside the statistics,
    and kept on the compute device.
    """

    updated_solver = True
    state_matrices = ("projector P",)
    solve_matrices = 3  # K K^T (+ C_prev), A = P M (+ l2 on its diagonal, in place) (linalg.alphaedit_update)
    solve_upcasts_state = True  # P (float32 on CUDA) is copied to float64 for the solve
    updated_state_matrices = ("projector P",)  # U = P K needs it
    factor_from_start = False  # B = l2 I until the first refactorisation
    symmetric_system = False  # B = l2 I + P C_prev: LU when refactorised (B kept beside it)
    low_rank_symmetric = False  # U = P K, V = K
    updated_solve_matrices = 2  # a refactorisation: B and its LU factor

    @staticmethod
    def solve_flops(d: int, dk: int, n: int) -> float:
        """K K^T, P M, an LU factorisation, the solve for P K and P K itself, and Delta."""
        return 2 * dk * dk * n + 2 * d * n * dk + 2 * dk**3 + 2 * dk**3 / 3 + 4 * dk * dk * n

    @staticmethod
    def updated_solve_flops(d: int, dk: int, n: int) -> float:
        """As EditMethod.updated_solve_flops once B has its LU (after d_k / 4 keys): P K for the
        batch's and the recorded keys, LU solves, B Q in the check, and a refactorisation
        (B plus the keys, an LU) every d_k / 8 keys, shared per key."""
        m = dk / 8
        solve = 2 * dk * dk * n + 2 * dk * dk * n + 4 * dk * m * n + 2 * m * m * n
        check = 2 * dk * dk * n + 4 * dk * m * n
        record = 2 * dk * dk * n + 2 * dk * dk * n + 4 * dk * m * n + 6 * m * m * n
        refactorise = (2 * dk * dk * m + 2 * dk**3 / 3) * n / m
        return solve + check + 2 * d * n * dk + record + refactorise

    def prepare(self, covariances: CovarianceStore, device: torch.device) -> None:
        from blue_cli.editing.linalg import nullspace_projector

        super().prepare(covariances, device)
        threshold = float(self.cfg.nullspace_threshold)
        self.P = {
            l: self.stored(
                covariances.cached_tensor(
                    l, f"nullspace_{threshold:g}", lambda C: nullspace_projector(C, threshold).float()
                )
            )
            for l in self.layers
        }

    def solve_direct(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        from blue_cli.editing.linalg import alphaedit_update

        P, C_prev = self.resident(self.P[layer]), self.resident(self.previous_keys(layer))
        return alphaedit_update(K, R, P, self.cfg.l2, C_prev)

    def low_rank_terms(self, layer: int, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """U = P K, V = K: A = l2 I + P C_prev + (P K) K^T."""
        import torch

        K64 = K.to(device=self.device, dtype=torch.float64)
        return times(self.P[layer], K64), K64

    def initial_factor(self, layer: int) -> Factor:
        """B = l2 I: nothing to factorise until the recorded keys are refactorised (LU)."""
        from blue_cli.editing.linalg import scaled_identity

        return scaled_identity(float(self.cfg.l2))
