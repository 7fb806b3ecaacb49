"""What every locate-then-edit method is: a closed-form solve, declared properties, state.

A method turns a residual at a layer into a weight update and keeps its own state
across batches (covariance, C_prev, projectors). It never touches the model and
never knows which strategy drives it; strategies read its declared properties.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a method module imports torch only when it runs (see registry.py)
    import torch

    from blue_cli.editing.linalg import Factor, LowRankSystem
    from blue_cli.editing.statistics.store import CovarianceStore

from blue_cli.config.registry import check_solver

log = logging.getLogger(__name__)

# Share of the memory free at prepare that the updated solver's extra state may take under
# ``solver: auto`` (the rest is left to target optimisation and the solves).
AUTO_SOLVER_SHARE = 0.5
# Rows of a float32 state matrix upcast to float64 at a time when it multiplies a few columns.
ROW_BLOCK = 2048


class EditMethod:
    """Base: MEMIT-style targets on the residual stream; subclasses define :meth:`solve`.

    Declared properties, read by strategies:
    ``points``: where target vectors are optimised (kinds of the adapter's hook points);
    ``write_point``: the point whose residual is written (the rewrite matrix adds into it);
    ``residual_split``: how ``spread`` shares a residual over layers ("linear" or "sqrt");
    ``evaluated_weights_differ``: whether :meth:`evaluated_weights` differs from the weights as edited
    (PRUNE), so evaluation points swap it in only when it does.

    Declared for the plans (tools/memory_plan.py, tools/compute_plan.py), which never
    name a method: ``state_matrices``, the d_k x d_k matrices kept per written layer
    besides C_prev; ``solve_matrices``, the d_k x d_k float64 matrices alive at a solve's
    peak (a float32 state matrix that the solve copies to float64 adds one:
    ``solve_upcasts_state``); :meth:`solve_flops`, one layer's closed form.

    Updated solver (``solver: updated``, docs/solver.md), declared by ``updated_solver``: a method
    that supports it defines :meth:`low_rank_terms` and :meth:`initial_factor` for the same
    system its :meth:`solve_direct` solves; one that does not is solved directly under ``auto``,
    and ``solver: updated`` is refused for it. A class that defines its own :meth:`solve_direct`
    supports the updated solver only if it says so again (``updated_solver = True`` in its own
    body): an inherited updated solver would solve the parent's system, not the new one.
    The system is A = B + U_h V_h^T + U V^T
    with B factorised once per written layer (:meth:`initial_factor`), U_h V_h^T the keys
    recorded since and U V^T this batch's (:meth:`low_rank_terms`; U is also the right-hand
    side). C_prev is then not kept as a matrix: the recorded keys are it. Declared for the
    plans: ``updated_state_matrices`` (state-dtype d_k x d_k matrices it still keeps),
    ``factor_from_start`` (B needs a factorisation before the first refactorisation),
    ``symmetric_system`` (Cholesky, else LU, which also keeps B), ``low_rank_symmetric``
    (U = V: two d_k x m history matrices, else three), ``updated_solve_matrices`` and
    :meth:`updated_solve_flops`.
    """

    name = "base"
    updated_solver = False
    points: tuple[str, ...] = ("block",)
    write_point = "block"
    residual_split = "linear"
    evaluated_weights_differ = False
    state_matrices: tuple[str, ...] = ("statistics C",)
    solve_matrices = 3  # lambda C, K K^T and their sum (linalg.memit_update)
    solve_upcasts_state = False  # lambda C is formed in float64 from C, already counted
    updated_state_matrices: tuple[str, ...] = ()  # C only builds lambda C's factor (cached)
    factor_from_start = True  # lambda C is factorised before the first batch
    symmetric_system = True  # B is symmetric positive definite: Cholesky (else LU)
    low_rank_symmetric = True  # U = V = K
    updated_solve_matrices = 2  # a refactorisation: B and its factor (float64)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "solve_direct" in cls.__dict__ and "updated_solver" not in cls.__dict__:
            cls.updated_solver = False  # a new direct solve voids the inherited updated one

    def __init__(self, cfg, layers: Sequence[int], num_edits: int | None = None):
        """``num_edits``: how many edits the stream will make, when known (the run's
        ``num_edits``); ``solver: auto`` sizes the updated solver's state by it, as ``blue plan``."""
        self.cfg = cfg
        self.layers = list(layers)
        self.num_edits = num_edits
        self.keep_previous_keys = bool(cfg.keep_previous_keys)
        self.C_prev: dict[int, torch.Tensor] = {}

    @staticmethod
    def solve_flops(d: int, dk: int, n: int) -> float:
        """One layer's write with ``n`` keys: K K^T, a Cholesky factorisation, two triangular
        solves for n right-hand sides, and Delta = R Q^T."""
        return 2 * dk * dk * n + 2 * d * n * dk + dk**3 / 3 + 2 * dk * dk * n

    @staticmethod
    def updated_solve_flops(d: int, dk: int, n: int) -> float:
        """One layer's write under the updated solver with the most recorded keys (m = d_k / 8):
        two triangular solves and the Woodbury terms for the batch's keys, the residual check
        (L L^T Q and the recorded keys), Delta = R Q^T, recording the keys after the batch, and
        the refactorisation every d_k / 8 keys (L L^T, the keys, a Cholesky) shared per key."""
        m = dk / 8
        solve = 2 * dk * dk * n + 4 * dk * m * n + 2 * m * m * n
        check = 4 * dk * dk * n + 4 * dk * m * n
        record = 2 * dk * dk * n + 4 * dk * m * n + 6 * m * m * n
        refactorise = (2 * dk**3 + 2 * dk * dk * m + dk**3 / 3) * n / m
        return solve + check + 2 * d * n * dk + record + refactorise

    def prepare(self, covariances: CovarianceStore, device: torch.device) -> None:
        """One-off work before the first batch (load C, build projectors) on ``device``.

        d_k x d_k state (C, C_prev, P) is stored in ``state_dtype`` (auto: float32 on
        CUDA, where a Llama3 matrix is 0.8 GB instead of 1.6 GB; float64 on CPU) and,
        with ``offload_state``, in CPU memory between solves; solves upcast to float64.
        """
        import torch

        self.device = device
        choice = self.cfg.get("state_dtype", "auto")
        if choice == "auto":
            choice = "float32" if device.type == "cuda" else "float64"
        self.state_dtype = getattr(torch, choice)
        self.home = torch.device("cpu") if self.cfg.get("offload_state", False) else device
        self.key_sizes = {l: covariances.get(l).shape[0] for l in self.layers}
        self.covariances = covariances
        self.systems: dict[int, LowRankSystem] = {}
        self.refactorisations = {l: 0 for l in self.layers}
        self.residuals: dict[int, float] = {}
        self.tolerance = float(self.cfg.get("solver_tolerance", 1e-6))
        self.solver = self.choose_solver(str(self.cfg.get("solver", "auto")))

    @classmethod
    def updated_state(
        cls, dk: int, state_bytes: int, keep_previous_keys: bool, num_edits: int | None = None
    ) -> list[tuple[str, int, str]]:
        """(name, bytes, note) of each matrix one written layer keeps under the updated solver,
        at most, over a run of ``num_edits`` edits (None: however long); ``blue plan`` lists them.
        Recorded keys: at most d_k / 8 columns beside a factorisation, d_k / 4 beside l2 I."""
        from blue_cli.editing.linalg import HISTORY_FRACTION, IDENTITY_HISTORY_FRACTION

        items = [(name, dk * dk * state_bytes, f"d_k^2 float{8 * state_bytes}") for name in cls.updated_state_matrices]
        limit = dk / HISTORY_FRACTION if cls.factor_from_start else dk / IDENTITY_HISTORY_FRACTION
        factored = cls.factor_from_start or (
            keep_previous_keys and (num_edits is None or num_edits >= dk / IDENTITY_HISTORY_FRACTION)
        )
        if factored:
            matrices = 1 if cls.symmetric_system else 2
            what = "Cholesky factor" if cls.symmetric_system else "B and its LU"
            items.append(("solver factorisation", matrices * dk * dk * 8, f"{what}, {matrices} x d_k^2 float64"))
        if keep_previous_keys:
            m = int(min(limit, num_edits)) if num_edits is not None else int(limit)
            vectors = 2 if cls.low_rank_symmetric else 3
            items.append(
                (
                    "recorded keys",
                    8 * (vectors * dk * m + m * m),
                    f"{vectors} x d_k x {m} + {m}^2 float64 (C_prev, as keys)",
                )
            )
        return items

    def state_bytes(self, solver: str) -> int:
        """The d_k x d_k state this method keeps under ``solver``, at most over ``num_edits`` edits."""
        state = self.state_dtype.itemsize
        total = 0
        for k in self.key_sizes.values():
            if solver == "direct":
                total += k * k * state * (len(self.state_matrices) + self.keep_previous_keys)
            else:
                total += sum(b for _, b, _ in self.updated_state(k, state, self.keep_previous_keys, self.num_edits))
        return int(total)

    def choose_solver(self, choice: str) -> str:
        """``auto``: updated when the method supports it and the state it keeps beyond the
        direct solver's fits in AUTO_SOLVER_SHARE of the memory free now on the compute device
        (CPU: available RAM), else direct."""
        check_solver(type(self), choice)
        if choice == "auto" and not self.updated_solver:
            return "direct"
        if choice != "auto":
            return choice
        extra = self.state_bytes("updated") - self.state_bytes("direct")
        return "updated" if extra <= AUTO_SOLVER_SHARE * free_bytes(self.device) else "direct"

    def stored(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` as the method keeps it between batches (state dtype, home device)."""
        return tensor.to(self.home, self.state_dtype)

    def resident(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """A stored tensor on the compute device for one solve."""
        return None if tensor is None else tensor.to(self.device)

    def solve(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """The update (d x d_k) that maps keys K (d_k x n) to residuals R (d x n) at ``layer``:
        Delta = R Q^T with Q = A^{-1} U, by the direct or the updated solver."""
        if self.solver == "direct":
            return self.solve_direct(layer, K, R)
        import torch

        from blue_cli.editing.linalg import solve_checked

        U, V = self.low_rank_terms(layer, K)
        before = self.system(layer)
        system, Q, residual = solve_checked(before, U, V, self.tolerance, self.symmetric_system)
        if system is not before:
            self.refactorisations[layer] += 1
            log.info(
                "layer %d: the updated solve's residual was above solver_tolerance %.3g: refactorised",
                layer,
                self.tolerance,
            )
        self.systems[layer] = system
        self.residuals[layer] = residual
        self.store_system(layer)
        return R.to(device=Q.device, dtype=torch.float64) @ Q.T

    def solve_direct(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """The same update from a fresh O(d_k^3) factorisation of A (``solver: direct``)."""
        raise NotImplementedError

    def low_rank_terms(self, layer: int, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, V), float64 d_k x n on the compute device: what keys K add to the system (U V^T);
        U is also the right-hand side. With ``low_rank_symmetric``, U is V (the same tensor)."""
        raise NotImplementedError

    def initial_factor(self, layer: int) -> Factor:
        """B factorised before any key is recorded."""
        raise NotImplementedError

    def system(self, layer: int) -> LowRankSystem:
        """The layer's factorised system on the compute device (built on first use)."""
        from blue_cli.editing.linalg import LowRankSystem

        if layer not in self.systems:
            self.systems[layer] = LowRankSystem(self.initial_factor(layer), self.key_sizes[layer])
        system = self.systems[layer]
        system.to_(self.device)
        return system

    def store_system(self, layer: int) -> None:
        """Back to the state's home after a solve (CPU with ``offload_state``; else a no-op)."""
        if layer in self.systems:
            self.systems[layer].to_(self.home)

    def adopt_state(self, other: EditMethod) -> None:
        """Take ``other``'s sequential state (C_prev, or the updated solver's systems), e.g. a
        replayed run's, for a method built on the same statistics and layers."""
        self.C_prev.update(other.C_prev)
        self.systems.update(getattr(other, "systems", {}))

    def previous_keys(self, layer: int) -> torch.Tensor | None:
        """C_prev for ``layer`` (float64), or None for a method without a key cache."""
        if not self.keep_previous_keys:
            return None
        if layer not in self.C_prev:
            import torch

            size = self.key_sizes[layer]
            self.C_prev[layer] = torch.zeros(size, size, dtype=self.state_dtype, device=self.home)
        return self.C_prev[layer]

    def record_keys(self, layer: int, K: torch.Tensor) -> None:
        """Sequential editing: add this batch's K K^T so later batches preserve these keys
        (into C_prev, or as recorded keys of the updated solver's system, refactorised with
        them once they are d_k / 8).

        Nothing of it is checkpointed: a resume replays the batches, which recollects
        these keys on the replayed weights (checkpoint.py).
        """
        if not self.keep_previous_keys:
            return
        import torch

        K64 = K.to(device=self.device, dtype=torch.float64)
        if self.solver == "updated":
            system = self.system(layer)
            system.record(*self.low_rank_terms(layer, K64))
            if system.needs_refactorisation():
                self.systems[layer] = system.refactorised(self.symmetric_system)
                self.refactorisations[layer] += 1
            self.store_system(layer)
            return
        C_prev = self.previous_keys(layer)
        C_prev += (K64 @ K64.T).to(C_prev.device, C_prev.dtype)

    def revise_batch(
        self, changes: dict[int, torch.Tensor], before: dict[int, torch.Tensor]
    ) -> dict[int, torch.Tensor]:
        """After every layer of a batch is written: the changes (d x d_k) to keep, per layer.

        ``before`` holds the rewrite matrices as the batch found them. Default: keep all.
        """
        return changes

    def evaluated_weights(
        self, current: dict[int, torch.Tensor], originals: dict[int, torch.Tensor]
    ) -> tuple[dict[int, torch.Tensor], dict[str, float]]:
        """The weights as the method leaves them after the stream, and diagnostics.

        Evaluation points, the final checkpoint and exports all see these. Default: as edited.
        """
        return current, {}


def planned_solver(method: type[EditMethod], choice: str) -> str:
    """The solver a plan assumes for ``choice`` before memory is known: ``auto`` plans the
    updated one where the method supports it (the plan then checks that it fits)."""
    check_solver(method, choice)
    if choice == "auto":
        return "updated" if method.updated_solver else "direct"
    return choice


def free_bytes(device: torch.device) -> int:
    """Memory free now on ``device``: CUDA's free memory, else the host's available RAM."""
    import os

    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # no sysconf: assume it fits, as on a plan without a budget
        return 2**62


def times(M: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """M X in float64 for a stored matrix M (d_k x d_k, any float dtype, any device) and X
    (d_k x n): a float32 M is upcast ROW_BLOCK rows at a time, never as a whole copy."""
    import torch

    M = M.to(X.device)
    if M.dtype == torch.float64:
        return M @ X
    return torch.cat([M[i : i + ROW_BLOCK].to(torch.float64) @ X for i in range(0, M.shape[0], ROW_BLOCK)])
