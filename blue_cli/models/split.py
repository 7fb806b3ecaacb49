"""Sequences split at a position of their own: the positions before it run once.

A target vector is added at the subject's last token, and with causal attention no
earlier position can see it. Their keys and values are the same in every step of the
optimisation, so they are computed once; each step then runs only the positions from
the split on, attending to the cached ones (about a quarter of the tokens of
CounterFact's context-prefixed prompts). The hidden states agree with a full forward to
float rounding (tests/integration/test_split_batch.py).

Layout: the cached positions of every sequence are left-padded to the longest (P), the
run positions right-padded (S); the attention mask covers both (P + S) and each run
position keeps its position id in the full sequence, so rotary and learned position
embeddings see what a full forward sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SplitBatch:
    """The run part of a split batch and the cached keys and values of the part before.

    ``past``: per block, (keys, values) of shape (N, heads, P, head_dim); empty when no
    position is cached (then the forward is the model's plain one)."""

    input_ids: torch.Tensor  # (N, S)
    attention_mask: torch.Tensor  # (N, P + S)
    position_ids: torch.Tensor  # (N, S)
    past: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def cached(self) -> int:
        """P: the cached positions' padded width."""
        return self.attention_mask.shape[1] - self.input_ids.shape[1]

    def rows(self, rows: torch.Tensor, width: int | None = None) -> SplitBatch:
        """The sequences ``rows`` of this batch (a sub-batch of requests), with only their
        first ``width`` run positions (None: all)."""
        width = self.input_ids.shape[1] if width is None else width
        return SplitBatch(
            input_ids=self.input_ids[rows, :width],
            attention_mask=self.attention_mask[rows, : self.cached + width],
            position_ids=self.position_ids[rows, :width],
            past=[(k[rows], v[rows]) for k, v in self.past],
        )


def _shifted(values: torch.Tensor, offset: torch.Tensor, width: int, valid: torch.Tensor) -> torch.Tensor:
    """``out[i, j] = values[i, offset[i] + j]`` for j < width where ``valid[i, j]``, else 0,
    taken along dim 1 of (N, T, ...)."""
    index = (offset[:, None] + torch.arange(width, device=offset.device)[None, :]).clamp(0, values.shape[1] - 1)
    index = index.view(*index.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
    taken = values.gather(1, index)
    return taken * valid.view(*valid.shape, *([1] * (values.dim() - 2))).to(taken.dtype)


def _cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per block from a transformers cache (its ``layers``, transformers >= 5)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def split_rows(
    forward_with_cache,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor | None = None,
    past_groups: list[tuple[torch.Tensor, int]] | None = None,
) -> SplitBatch:
    """Split right-padded sequences at ``starts`` (one per sequence): one no-grad forward of
    the whole batch (``forward_with_cache(ids, mask)`` returns the model's cache) gives the
    keys and values of positions before each start (it runs the first max(starts) positions
    only: later ones are never cached; ``past_groups``, (rows, width) pairs covering every
    sequence once with width >= each row's start, runs it as one forward per group, each
    only as wide as its group needs); the run part holds positions
    ``starts..ends`` (default: to the sequence's end; later positions cannot affect earlier ones)."""
    lengths = attention_mask.sum(1) if ends is None else ends.to(input_ids.device)
    starts = starts.to(input_ids.device)
    width_past = int(starts.max()) if len(starts) else 0
    width_run = int((lengths - starts).max())
    run = torch.arange(width_run, device=input_ids.device)[None, :]
    run_valid = run < (lengths - starts)[:, None]
    past_slot = torch.arange(width_past, device=input_ids.device)[None, :]
    past_valid = past_slot >= (width_past - starts)[:, None]
    positions = run.expand(len(starts), -1) + starts[:, None]
    if width_past == 0:  # nothing cached: the run part is each sequence from its start (0)
        if ends is None:
            return SplitBatch(input_ids, attention_mask, positions, [])
        return SplitBatch(input_ids[:, :width_run] * run_valid, run_valid.long(), positions, [])
    if past_groups is None:
        past_groups = [(torch.arange(len(starts), device=input_ids.device), width_past)]
    past: list[tuple[torch.Tensor, torch.Tensor]] = []
    for rows, width in past_groups:
        with torch.no_grad():
            cache = forward_with_cache(input_ids[rows, :width], attention_mask[rows, :width])
        offset, valid = starts[rows] - width_past, past_valid[rows]
        for block, (keys, values) in enumerate(_cache_tensors(cache)):
            # (n, heads, T, hd) -> positions on dim 1 for the shift, then back
            k = _shifted(keys.transpose(1, 2), offset, width_past, valid).transpose(1, 2)
            v = _shifted(values.transpose(1, 2), offset, width_past, valid).transpose(1, 2)
            if block == len(past):
                past.append((k.new_zeros(len(starts), *k.shape[1:]), v.new_zeros(len(starts), *v.shape[1:])))
            past[block][0][rows], past[block][1][rows] = k, v
    return SplitBatch(
        input_ids=_shifted(input_ids, starts, width_run, run_valid),
        attention_mask=torch.cat([past_valid, run_valid], dim=1).long(),
        position_ids=positions,
        past=past,
    )
