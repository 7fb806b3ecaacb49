"""The one interface the editing code sees: layers, named points, the rewrite matrix.

Everything architecture-specific is looked up through a :class:`FamilySpec`; keys,
targets, covariance and evaluation only call this adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from blue_cli.models.families import FamilySpec, family_for
from blue_cli.models.hooks import StopForward, add_at_positions, capture, run_until_stopped


class ModelAdapter:
    """A causal LM plus its tokenizer, addressed through canonical points.

    Points: ``block(l)`` (residual stream after block l), ``rewrite(l)`` (the MLP
    output matrix whose input is the key), ``attn_out(l)``, ``final_norm``, ``unembed``.
    """

    def __init__(self, model: nn.Module, tokenizer, name: str = "model", family: FamilySpec | None = None):
        self.model = model
        self.tok = tokenizer
        self.name = name
        self.family = family or family_for(model)
        self._blocks = model.get_submodule(self.family.blocks)

    # --- structure -------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self._blocks)

    @property
    def device(self) -> torch.device:
        return self.unembed.weight.device

    @property
    def hidden_size(self) -> int:
        return self.unembed.weight.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.unembed.weight.dtype

    def block(self, layer: int) -> nn.Module:
        return self._blocks[layer]

    def rewrite_module(self, layer: int) -> nn.Module:
        return self._blocks[layer].get_submodule(self.family.rewrite)

    def attn_out_module(self, layer: int) -> nn.Module:
        return self._blocks[layer].get_submodule(self.family.attn_out)

    POINTS = ("block", "mlp", "attn")

    def point_module(self, point: str, layer: int) -> nn.Module:
        """The module whose output is the named point: block output, FFN output or attention output."""
        if point == "block":
            return self.block(layer)
        if point == "mlp":
            return self.rewrite_module(layer)
        if point == "attn":
            return self.attn_out_module(layer)
        raise ValueError(f"unknown point {point!r} (choose: {', '.join(self.POINTS)})")

    @property
    def final_norm(self) -> nn.Module:
        return self.model.get_submodule(self.family.final_norm)

    @property
    def unembed(self) -> nn.Module:
        return self.model.get_submodule(self.family.unembed)

    def rewrite_param_name(self, layer: int) -> str:
        return f"{self.family.blocks}.{layer}.{self.family.rewrite}.weight"

    def key_size(self, layer: int) -> int:
        weight = self.rewrite_module(layer).weight
        return weight.shape[0] if self.family.transposed else weight.shape[1]

    # --- the edited matrix, always (out x in) ------------------------------
    def rewrite_weight(self, layer: int) -> torch.Tensor:
        """The rewrite matrix as (d_out x d_in), a view of the live parameter."""
        weight = self.rewrite_module(layer).weight
        return weight.T if self.family.transposed else weight

    @torch.no_grad()
    def add_to_rewrite(self, layer: int, delta: torch.Tensor) -> None:
        """W <- W + delta, with delta given as (d_out x d_in) in any float dtype."""
        target = self.rewrite_weight(layer)
        target.add_(delta.to(device=target.device, dtype=target.dtype))

    @torch.no_grad()
    def set_rewrite(self, layer: int, value: torch.Tensor) -> None:
        """W <- value, with value given as (d_out x d_in)."""
        target = self.rewrite_weight(layer)
        target.copy_(value.to(device=target.device, dtype=target.dtype))

    # --- running ------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Right-padded batch on the model's device."""
        batch = self.tok(list(texts), return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def base_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states (after the final norm) without computing vocabulary logits."""
        base = self.model.get_submodule(self.family.blocks.split(".")[0])
        out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def logits_at(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for final hidden states gathered at the positions a loss reads."""
        return self.unembed(hidden)

    @contextmanager
    def inject(self, layer: int, delta: torch.Tensor, rows, positions, point: str = "block"):
        """Add per-request vectors to a point's output at given positions during forwards."""
        with add_at_positions(self.point_module(point, layer), delta, rows, positions):
            yield

    @torch.no_grad()
    def read_points(
        self,
        batch: dict[str, torch.Tensor],
        *,
        rewrite_inputs: Sequence[int] = (),
        block_outputs: Sequence[int] = (),
        rewrite_outputs: Sequence[int] = (),
        attn_outputs: Sequence[int] = (),
    ) -> dict[str, torch.Tensor]:
        """One forward pass (stopped after the deepest point) reading several points.

        Returns ``{"key.{l}": (B,T,d_k), "block.{l}", "mlp.{l}", "attn.{l}": (B,T,d)}``.
        """
        wanted: list[tuple[str, nn.Module, str, int]] = []
        wanted += [(f"key.{l}", self.rewrite_module(l), "input", l) for l in rewrite_inputs]
        wanted += [(f"mlp.{l}", self.rewrite_module(l), "output", l) for l in rewrite_outputs]
        wanted += [(f"block.{l}", self.block(l), "output", l) for l in block_outputs]
        wanted += [(f"attn.{l}", self.attn_out_module(l), "output", l) for l in attn_outputs]
        if not wanted:
            return {}
        deepest = max(w[3] for w in wanted)
        stop_name = f"stop.{deepest}"
        results: dict[str, torch.Tensor] = {}
        inputs = {n: m for n, m, r, _ in wanted if r == "input"}
        outputs = {n: m for n, m, r, _ in wanted if r == "output"}
        outputs[stop_name] = self.block(deepest)
        with capture(inputs, read="input") as got_in, capture(outputs, read="output", stop_after=stop_name) as got_out:
            run_until_stopped(self.base_forward, batch["input_ids"], batch["attention_mask"])
        results.update(got_in)
        results.update({k: v for k, v in got_out.items() if k != stop_name})
        return results


class _Skip(nn.Module):
    """Stands in for a block whose output is replayed later: passes the hidden state on."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden, *args, **kwargs):
        return (hidden,) if self.as_tuple else hidden


class _Replay(nn.Module):
    """Stands in for the last frozen block: returns its recorded output (hooks still fire)."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


@contextmanager
def frozen_prefix(adapter: ModelAdapter, batch: dict[str, torch.Tensor], upto: int):
    """Run blocks 0..upto once on ``batch``, then replay their result in every forward.

    Inside the block, forwards on the same batch skip the work of blocks that cannot
    change (their inputs do not depend on what is optimised after them); embeddings,
    masks and rotary tables are still built by the model as usual. Hooks registered on
    ``adapter.block(upto)`` inside the block attach to the replaying stand-in.
    """
    if upto < 0:
        yield
        return
    blocks = adapter._blocks
    recorded: dict = {}

    def keep(module, args, output):
        recorded["out"] = output
        raise StopForward

    handle = blocks[upto].register_forward_hook(keep)
    try:
        with torch.no_grad():
            run_until_stopped(adapter.base_forward, batch["input_ids"], batch["attention_mask"])
    finally:
        handle.remove()
    output = recorded["out"]
    as_tuple = isinstance(output, tuple)
    originals = [blocks[i] for i in range(upto + 1)]
    try:
        for i in range(upto):
            blocks[i] = _Skip(as_tuple)
        blocks[upto] = _Replay(output)
        yield
    finally:
        for i, module in enumerate(originals):
            blocks[i] = module
