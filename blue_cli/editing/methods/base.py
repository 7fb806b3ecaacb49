"""What every locate-then-edit method is: a closed-form solve, declared properties, state.

A method turns a residual at a layer into a weight update and keeps its own state
across batches (covariance, C_prev, projectors). It never touches the model and
never knows which strategy drives it; strategies read its declared properties.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a method module imports torch only when it runs (see registry.py)
    import torch

    from blue_cli.editing.statistics.store import CovarianceStore


class EditMethod:
    """Base: MEMIT-style targets on the residual stream; subclasses define :meth:`solve`.

    Declared properties, read by strategies:
    ``points``: where target vectors are optimised (kinds of the adapter's hook points);
    ``write_point``: the point whose residual is written (the rewrite matrix adds into it);
    ``residual_split``: how ``spread`` shares a residual over layers ("linear" or "sqrt");
    ``final_view``: whether :meth:`final_weights` differs from the weights as edited
    (PRUNE), so evaluation points swap it in only when it does.

    Declared for the plans (tools/memory_plan.py, tools/compute_plan.py), which never
    name a method: ``state_matrices``, the d_k x d_k matrices kept per written layer
    besides C_prev; ``solve_matrices``, the d_k x d_k float64 matrices alive at a solve's
    peak (a float32 state matrix that the solve copies to float64 adds one:
    ``solve_upcasts_state``); :meth:`solve_flops`, one layer's closed form.
    """

    name = "base"
    points: tuple[str, ...] = ("block",)
    write_point = "block"
    residual_split = "linear"
    final_view = False
    state_matrices: tuple[str, ...] = ("statistics C",)
    solve_matrices = 3  # lambda C, K K^T and their sum (linalg.memit_update)
    solve_upcasts_state = False  # lambda C is formed in float64 from C, already counted

    def __init__(self, cfg, layers: Sequence[int]):
        self.cfg = cfg
        self.layers = list(layers)
        self.keep_previous_keys = bool(cfg.keep_previous_keys)
        self.C_prev: dict[int, torch.Tensor] = {}

    @staticmethod
    def solve_flops(d: int, dk: int, n: int) -> float:
        """One layer's write with ``n`` keys: K K^T, a Cholesky factorisation, two triangular
        solves for n right-hand sides, and Delta = R Q^T."""
        return 2 * dk * dk * n + 2 * d * n * dk + dk**3 / 3 + 2 * dk * dk * n

    def prepare(self, stats: CovarianceStore, device: torch.device) -> None:
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
        self.key_sizes = {l: stats.get(l).shape[0] for l in self.layers}

    def stored(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` as the method keeps it between batches (state dtype, home device)."""
        return tensor.to(self.home, self.state_dtype)

    def resident(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """A stored tensor on the compute device for one solve."""
        return None if tensor is None else tensor.to(self.device)

    def solve(self, layer: int, K: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """The update (d x d_k) that maps keys K (d_k x n) to residuals R (d x n) at ``layer``."""
        raise NotImplementedError

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
        """Sequential editing: add this batch's K K^T so later batches preserve these keys.

        Nothing of it is checkpointed: a resume replays the batches, which recollects
        these keys on the replayed weights (checkpoint.py).
        """
        C_prev = self.previous_keys(layer)
        if C_prev is not None:
            import torch

            K64 = K.to(device=self.device, dtype=torch.float64)
            C_prev += (K64 @ K64.T).to(C_prev.device, C_prev.dtype)

    def revise_batch(
        self, changes: dict[int, torch.Tensor], before: dict[int, torch.Tensor]
    ) -> dict[int, torch.Tensor]:
        """After every layer of a batch is written: the changes (d x d_k) to keep, per layer.

        ``before`` holds the rewrite matrices as the batch found them. Default: keep all.
        """
        return changes

    def final_weights(
        self, current: dict[int, torch.Tensor], originals: dict[int, torch.Tensor]
    ) -> tuple[dict[int, torch.Tensor], dict[str, float]]:
        """The weights as the method leaves them after the stream, and diagnostics.

        Evaluation points, the final checkpoint and exports all see these. Default: as edited.
        """
        return current, {}
