"""What a strategy decides: which critical layers are written, where and when targets
are optimised, and how the residual is shared. It owns the model access of a batch
and drives any method through the method's declared properties, never branching on
which method it is.

Like the method modules, a strategy module imports torch and the editing code only inside
the functions that compute: registering its name and schema (composing a config) stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blue_cli.errors import NumericalError

if TYPE_CHECKING:
    import torch

    from blue_cli.config.schema import TargetConfig
    from blue_cli.datasets.records import EditRequest
    from blue_cli.editing.anchoring import NormAnchor
    from blue_cli.editing.methods.base import EditMethod
    from blue_cli.editing.targets import TargetResult
    from blue_cli.models.adapter import ModelAdapter


def require_finite(what: str, tensor: torch.Tensor) -> None:
    """Stop before a non-finite value reaches the weights or C_prev."""
    import torch

    if not bool(torch.isfinite(tensor).all()):
        raise NumericalError(f"non-finite {what} (NaN or inf)")


# A phase timer: called with a phase name ("keys", "targets", "solves", "writes", "record"), it
# returns a context manager around that phase's work (benchmarks time phases with one).
PhaseTimer = Callable[[str], AbstractContextManager]


def no_timer(phase: str) -> AbstractContextManager:
    return nullcontext()


@dataclass
class EditContext:
    """What a strategy needs besides the method: the model, the context templates
    (groups, "{}" first) and how targets are optimised.

    ``batched``: requests of a batch optimised together, ``chunk`` at a time (false:
    one at a time, the reference's schedule, kept to measure speed-ups). Results do
    not depend on the chunking: every request has its own vector and early stop.
    ``timer``: see :data:`PhaseTimer`."""

    adapter: ModelAdapter
    groups: Sequence[Sequence[str]]
    targets: TargetConfig
    batched: bool = True
    chunk: int | None = None
    memory_budget_gb: float | None = None
    timer: PhaseTimer = no_timer
    norm_anchor: NormAnchor | None = None  # Norm-Anchor Scaling of every target (editing/anchoring.py)

    @property
    def templates(self) -> list[str]:
        return [t for group in self.groups for t in group]

    def chunk_size(self, requests: Sequence[EditRequest], layer: int) -> int:
        """Requests optimised together: ``chunk``, else on CUDA as many as the memory
        budget (default 60% of the free device memory) holds, else all of them."""
        if not self.batched:
            return 1
        if self.chunk is not None:
            return self.chunk
        import torch

        from blue_cli.editing.targets import requests_per_chunk

        device = self.adapter.device
        if device.type != "cuda":
            return max(1, len(requests))
        budget = self.memory_budget_gb * 2**30 if self.memory_budget_gb else 0.6 * torch.cuda.mem_get_info(device)[0]
        tokens = sum(
            len(self.adapter.tok(t.replace("{}", r.rewrite_prompt, 1))["input_ids"]) + 8
            for r in requests[:1]
            for t in self.templates
        )
        return requests_per_chunk(
            hidden=self.adapter.hidden_size,
            tokens_per_request=tokens + 16,
            blocks=self.adapter.n_layers - layer,
            elem_bytes=self.adapter.dtype.itemsize,
            budget_bytes=budget,
        )


@dataclass
class LayerWrite:
    """One closed-form write: layer, norms of residual and update, relative fit on its
    keys, and the residual itself (CPU copy), which is all a replay needs."""

    layer: int
    residual_norm: float
    update_norm: float
    key_fit_error: float
    residual: torch.Tensor | None = field(default=None, repr=False)


@dataclass
class BatchTrace:
    """What a strategy did to one batch; ``final`` is the target at the last critical layer."""

    targets: list[TargetResult] = field(default_factory=list)
    writes: list[LayerWrite] = field(default_factory=list)

    @property
    def final(self) -> TargetResult:
        return self.targets[-1]


class Strategy:
    """Base class; subclasses implement :meth:`written_layers` and :meth:`write_batch`."""

    name = "base"

    def __init__(self, cfg=None):
        self.cfg = cfg

    def written_layers(self, critical: Sequence[int]) -> list[int]:
        raise NotImplementedError

    def target_layers(self, critical: Sequence[int]) -> list[int]:
        """Where target vectors are optimised in a batch (the plans read it); default: every
        written layer, each on the model as it is then."""
        return self.written_layers(critical)

    def write_batch(
        self, method: EditMethod, ctx: EditContext, requests: Sequence[EditRequest], critical: Sequence[int]
    ) -> BatchTrace:
        """Optimise targets and write every layer of :meth:`written_layers` for one batch."""
        raise NotImplementedError

    def edit_batch(
        self,
        method: EditMethod,
        ctx: EditContext,
        requests: Sequence[EditRequest],
        critical: Sequence[int],
        replay: Sequence[tuple[int, torch.Tensor]] | None = None,
        before: dict[int, torch.Tensor] | None = None,
    ) -> BatchTrace:
        """One batch: the strategy's writes, the method's revision of them (RECT), then
        the keys on the edited model into C_prev (sequential methods).

        ``replay``: the (layer, residual) writes a finished batch made, redone in order
        instead of :meth:`write_batch` (no targets are optimised); everything after the
        residuals (keys, solves, revision, C_prev) is this same code path.
        ``before``: copies of the written matrices as the batch finds them, when the
        caller already holds them (the session's, for its diagnostics and NaN restore):
        one copy per batch instead of two.
        """
        from blue_cli.editing.keys import collect_keys

        written = self.written_layers(critical)
        adapter = ctx.adapter
        if before is None:
            before = {l: adapter.rewrite_weight(l).detach().clone() for l in written}
        if replay is None:
            if ctx.norm_anchor is not None:  # reference norms before the stream's first write
                layers = self.target_layers(critical)
                ctx.norm_anchor.ensure(
                    adapter,
                    requests,
                    layers,
                    method.points,
                    method.write_point,
                    ctx.targets,
                    ctx.chunk_size(requests, layers[0]),
                )
            trace = self.write_batch(method, ctx, requests, critical)
        else:
            trace = BatchTrace(
                writes=[
                    self.write_layer(method, ctx, requests, layer, residual.to(adapter.device))
                    for layer, residual in replay
                ]
            )
        changes = {l: adapter.rewrite_weight(l).detach() - before[l] for l in written}
        kept = method.revise_batch(changes, before)
        if kept is not changes:
            for l in written:
                adapter.set_rewrite(l, before[l] + kept[l].to(before[l].dtype))
        for l in written:
            require_finite(f"weights of layer {l} after the batch", adapter.rewrite_weight(l))
        if method.keep_previous_keys:
            with ctx.timer("keys"):
                keys = collect_keys(adapter, requests, ctx.groups, written)
            for layer, K in keys.items():
                require_finite(f"keys of layer {layer} on the edited model", K)
            with ctx.timer("record"):
                for layer, K in keys.items():
                    method.record_keys(layer, K)
        return trace

    @staticmethod
    def compute_targets(
        method: EditMethod, ctx: EditContext, requests: Sequence[EditRequest], layer: int
    ) -> TargetResult:
        """Target vectors at the method's points of ``layer`` for every request, on the current model."""
        from blue_cli.editing.anchoring import value_norms
        from blue_cli.editing.targets import merge_results, optimise_targets

        size = ctx.chunk_size(requests, layer)
        with ctx.timer("targets"):
            parts = [
                optimise_targets(ctx.adapter, requests[i : i + size], ctx.templates, layer, ctx.targets, method.points)
                for i in range(0, len(requests), size)
            ]
        result = parts[0] if len(parts) == 1 else merge_results(parts)
        # A layer without a reference norm is one the stream never optimises at (e.g. the
        # residual analysis of a replayed run probes every critical layer): left as optimised.
        if ctx.norm_anchor is not None and layer in ctx.norm_anchor.reference:
            ctx.norm_anchor.apply(ctx.adapter, requests, result, method.write_point)
        else:
            result.value_norms = value_norms(ctx.adapter, requests, result, method.write_point)
        for point in method.points:
            require_finite(f"target at {point}.{layer}", result.z(point))
        return result

    @staticmethod
    def write_layer(
        method: EditMethod, ctx: EditContext, requests: Sequence[EditRequest], layer: int, residual: torch.Tensor
    ) -> LayerWrite:
        """Solve for the update that maps this layer's current keys to ``residual`` and apply it."""
        from blue_cli.editing.keys import collect_keys

        with ctx.timer("keys"):
            K = collect_keys(ctx.adapter, requests, ctx.groups, [layer])[layer]
        require_finite(f"keys of layer {layer}", K)
        require_finite(f"residual of layer {layer}", residual)
        with ctx.timer("solves"):
            delta = method.solve(layer, K, residual)
        require_finite(f"update of layer {layer} (the solve)", delta)
        with ctx.timer("writes"):
            ctx.adapter.add_to_rewrite(layer, delta)
        fit = delta @ K.to(delta.dtype) - residual.to(delta.dtype)
        return LayerWrite(
            layer=layer,
            residual_norm=float(residual.norm()),
            update_norm=float(delta.norm()),
            key_fit_error=float(fit.norm() / residual.norm().clamp_min(1e-12)),
            residual=residual.detach().to("cpu", copy=True),
        )

    @staticmethod
    def current_values(
        method: EditMethod, ctx: EditContext, requests: Sequence[EditRequest], layer: int
    ) -> torch.Tensor:
        """H: the write point's value at ``layer`` on the current weights (d x n)."""
        from blue_cli.editing.keys import values_at_subject

        return values_at_subject(ctx.adapter, requests, layer, method.write_point)
