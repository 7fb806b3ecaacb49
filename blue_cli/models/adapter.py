"""The one interface the editing code sees: layers, named points, the rewrite matrix.

Everything architecture-specific is looked up through a :class:`FamilySpec`; keys,
targets, covariance and evaluation only call this adapter.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import contextmanager
from functools import cached_property

import torch
from torch import nn

from blue_cli.models.families import FamilySpec, family_for
from blue_cli.models.hooks import (
    StopForward,
    add_at_positions,
    capture,
    hidden_of,
    replace_hidden,
    run_until_stopped,
)
from blue_cli.models.split import SplitBatch, split_rows


class ModelAdapter:
    """A causal LM plus its tokenizer, addressed through canonical points.

    Named points (one vocabulary everywhere, see :meth:`point`): ``key.{l}`` (the
    rewrite matrix's input), ``mlp.{l}`` (its output), ``attn.{l}`` (the attention
    output projection's output), ``block.{l}`` (the residual stream after block l).
    The rewrite matrix itself is handed out as (d_out x d_in) whatever the module type.
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
    def context_length(self) -> int | None:
        """The most positions the model takes (``n_positions`` / ``max_position_embeddings``)."""
        config = self.model.config
        return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)

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

    # Hook points share one vocabulary: "<kind>.<layer>", read at a module's input or output.
    POINT_KINDS = {"key": "input", "mlp": "output", "attn": "output", "block": "output"}

    def point(self, name: str) -> tuple[nn.Module, str]:
        """The module and side ("input"/"output") of a named point.

        ``key.{l}``: the rewrite matrix's input (the key); ``mlp.{l}``: its output (the FFN
        output); ``attn.{l}``: the attention output projection's output; ``block.{l}``: the
        residual stream after block l.
        """
        kind, _, layer_text = name.partition(".")
        if kind not in self.POINT_KINDS or not layer_text.isdigit():
            raise ValueError(f"unknown point {name!r} (choose: {', '.join(k + '.<layer>' for k in self.POINT_KINDS)})")
        layer = int(layer_text)
        module = {
            "key": self.rewrite_module,
            "mlp": self.rewrite_module,
            "attn": self.attn_out_module,
            "block": self.block,
        }[kind](layer)
        return module, self.POINT_KINDS[kind]

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

    def keep_rewrite_float32(self, layers: Sequence[int]) -> None:
        """Hold the rewrite matrices of ``layers`` in float32 whatever the model's dtype.

        An update of 0.1% of ||W|| loses about a fifth of itself when added to an fp16
        matrix and most of itself in bf16; the reference edits float32 weights. The
        module computes in float32 (its input is cast up) and casts its output back to
        the model's dtype, so the rest of the model is unchanged.
        """
        model_dtype = self.dtype
        if model_dtype == torch.float32:
            return
        for layer in layers:
            module = self.rewrite_module(layer)
            if module.weight.dtype == torch.float32:
                continue
            module.float()
            module.register_forward_pre_hook(lambda mod, args: (args[0].float(), *args[1:]))
            module.register_forward_hook(lambda mod, args, output: output.to(model_dtype))

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

    @property
    def _base(self) -> nn.Module:
        """The model without its LM head (the module holding the blocks)."""
        return self.model.get_submodule(self.family.blocks.split(".")[0])

    def base_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states (after the final norm) without computing vocabulary logits."""
        out = self._base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def split(
        self,
        batch: dict[str, torch.Tensor],
        starts: torch.Tensor,
        ends: torch.Tensor | None = None,
        past_groups: list[tuple[torch.Tensor, int]] | None = None,
    ) -> SplitBatch:
        """``batch`` split at ``starts`` (one per sequence): the positions before run once here
        (one forward per ``past_groups`` entry), :meth:`forward_split` runs those up to
        ``ends`` (see models/split.py)."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        return split_rows(self._forward_with_cache, ids, mask, starts, ends, past_groups)

    def _forward_with_cache(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        out = self._base(input_ids=input_ids, attention_mask=attention_mask, use_cache=True)
        cache = out.get("cache")
        return cache if cache is not None else out.get("past_key_values")

    @cached_property
    def _cache_arg(self) -> str:
        """The forward's name for a cache: transformers 5.x renamed ``past_key_values`` to
        ``cache`` (the old name warns)."""
        return "cache" if "cache" in inspect.signature(self._base.forward).parameters else "past_key_values"

    def forward_split(self, split: SplitBatch) -> torch.Tensor:
        """Final hidden states of a split batch's run positions (N, S, d), attending to its cache."""
        if not split.past:
            return self.base_forward(split.input_ids, split.attention_mask)
        from transformers import DynamicCache

        out = self._base(
            input_ids=split.input_ids,
            attention_mask=split.attention_mask,
            position_ids=split.position_ids,
            use_cache=True,
            **{self._cache_arg: DynamicCache(ddp_cache_data=split.past)},
        )
        return out.last_hidden_state

    def logits_at(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for final hidden states gathered at the positions a loss reads."""
        return self.unembed(hidden)

    @contextmanager
    def inject(self, point: str, delta: torch.Tensor, rows, positions):
        """Add per-request vectors to a named output point at given positions during forwards."""
        module, side = self.point(point)
        if side != "output":
            raise ValueError(f"cannot add to {point!r}: vectors are added to output points only")
        with add_at_positions(module, delta, rows, positions):
            yield

    @torch.no_grad()
    def read_points(self, batch: dict[str, torch.Tensor], points: Sequence[str]) -> dict[str, torch.Tensor]:
        """One forward pass, stopped after the deepest block needed, reading named points.

        Returns ``{name: (B, T, width)}``: d_k for ``key.*``, d for the others.
        """
        if not points:
            return {}
        located = {name: self.point(name) for name in points}
        deepest = max(int(name.split(".")[1]) for name in points)
        stop_name = f"stop.{deepest}"
        inputs = {n: m for n, (m, side) in located.items() if side == "input"}
        outputs = {n: m for n, (m, side) in located.items() if side == "output"}
        outputs[stop_name] = self.block(deepest)
        with capture(inputs, read="input") as got_in, capture(outputs, read="output", stop_after=stop_name) as got_out:
            run_until_stopped(self.base_forward, batch["input_ids"], batch["attention_mask"])
        results = dict(got_in)
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
    """Stands in for the last frozen block: returns its recorded output (hooks still fire),
    or the rows of it that :meth:`select` chose."""

    def __init__(self, output):
        super().__init__()
        self.recorded = self.output = output

    def select(self, rows: torch.Tensor | None, width: int | None = None) -> None:
        """Hand on only the recorded sequences ``rows`` (None: all of them), and of the hidden
        state only its first ``width`` positions (None: all)."""
        if rows is None and width is None:
            self.output = self.recorded
            return
        size = hidden_of(self.recorded).shape[0]
        take = lambda t: t[rows] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == size else t  # noqa: E731
        if rows is None:
            picked = self.recorded
        elif isinstance(self.recorded, tuple):
            picked = tuple(take(t) for t in self.recorded)
        else:
            picked = take(self.recorded)
        if width is not None:
            picked = replace_hidden(picked, hidden_of(picked)[:, :width])
        self.output = picked

    def forward(self, *args, **kwargs):
        return self.output


class PrefixRows:
    """What :func:`frozen_prefix` yields: ``select(rows)`` makes the replayed prefix hand on
    only those sequences of the batch it recorded, for forwards on that sub-batch."""

    def __init__(self, replay: _Replay | None = None):
        self.replay = replay

    def select(self, rows: torch.Tensor | None, width: int | None = None) -> None:
        if self.replay is not None:
            self.replay.select(rows, width)


@contextmanager
def frozen_prefix(adapter: ModelAdapter, batch: SplitBatch, upto: int):
    """Run blocks 0..upto once on ``batch`` (:meth:`ModelAdapter.forward_split`), then replay
    their result in every forward.

    Inside the block, forwards on the same batch skip the work of blocks that cannot
    change (their inputs do not depend on what is optimised after them); embeddings,
    masks and rotary tables are still built by the model as usual. Hooks registered on
    ``adapter.block(upto)`` inside the block attach to the replaying stand-in. Yields a
    :class:`PrefixRows`: forwards on a subset of the batch's sequences select those rows first.
    """
    if upto < 0:
        yield PrefixRows()
        return
    blocks = adapter._blocks
    recorded: dict = {}

    def keep(module, args, output):
        recorded["out"] = output
        raise StopForward

    handle = blocks[upto].register_forward_hook(keep)
    try:
        with torch.no_grad():
            run_until_stopped(adapter.forward_split, batch)
    finally:
        handle.remove()
    output = recorded["out"]
    as_tuple = isinstance(output, tuple)
    originals = [blocks[i] for i in range(upto + 1)]
    try:
        for i in range(upto):
            blocks[i] = _Skip(as_tuple)
        replay = _Replay(output)
        blocks[upto] = replay
        yield PrefixRows(replay)
    finally:
        for i, module in enumerate(originals):
            blocks[i] = module
