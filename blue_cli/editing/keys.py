"""Key vectors: the rewrite matrix's input at the subject's last token.

k = mean over template groups of (mean over the group's templates), as the
reference averages "{}" and the sampled prefixes: k = 1/2 k(plain) + 1/2 mean(prefixed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blue_cli.datasets.records import EditRequest
from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.tokens import fill, pad_id, pad_right, subject_last_index

CHUNK = 64


def key_sentences(
    tok, requests: Sequence[EditRequest], groups: Sequence[Sequence[str]]
) -> tuple[list[list[int]], list[int], list[tuple[int, int]]]:
    """Token ids, subject-last positions and (request, group) of every key sentence."""
    seqs, positions, owners = [], [], []
    for r, req in enumerate(requests):
        for g, group in enumerate(groups):
            for template in group:
                text_template = template.replace("{}", req.prompt, 1)
                seqs.append(tok(fill(text_template, req.subject))["input_ids"])
                positions.append(subject_last_index(tok, text_template, req.subject))
                owners.append((r, g))
    return seqs, positions, owners


@torch.no_grad()
def collect_keys(
    adapter: ModelAdapter,
    requests: Sequence[EditRequest],
    groups: Sequence[Sequence[str]],
    layers: Sequence[int],
) -> dict[int, torch.Tensor]:
    """Keys for every layer in one stopped forward pass per chunk: {layer: K (d_k x n) float32}."""
    seqs, positions, owners = key_sentences(adapter.tok, requests, groups)
    n, n_groups = len(requests), len(groups)
    sums = {
        l: torch.zeros(n, n_groups, adapter.key_size(l), dtype=torch.float32, device=adapter.device) for l in layers
    }
    counts = torch.zeros(n, n_groups, device=adapter.device)
    for start in range(0, len(seqs), CHUNK):
        stop = min(start + CHUNK, len(seqs))
        batch = pad_right(seqs[start:stop], pad_id(adapter.tok), adapter.device)
        acts = adapter.read_points(batch, [f"key.{l}" for l in layers])
        rows = torch.arange(stop - start, device=adapter.device)
        pos = torch.tensor(positions[start:stop], device=adapter.device)
        req = torch.tensor([o[0] for o in owners[start:stop]], device=adapter.device)
        grp = torch.tensor([o[1] for o in owners[start:stop]], device=adapter.device)
        for l in layers:
            vecs = acts[f"key.{l}"].to(adapter.device)[rows, pos].float()
            sums[l].index_put_((req, grp), vecs, accumulate=True)
        counts.index_put_((req, grp), torch.ones_like(req, dtype=counts.dtype), accumulate=True)
    per_group = counts.clamp_min(1).unsqueeze(-1)
    return {l: (sums[l] / per_group).mean(dim=1).T.contiguous() for l in layers}


@torch.no_grad()
def values_at_subject(
    adapter: ModelAdapter, requests: Sequence[EditRequest], layer: int, point: str = "block"
) -> torch.Tensor:
    """A point's output at the subject's last token of each bare prompt: (d x n) float32.

    ``point`` is "block" (residual stream after the block) or "mlp" (the rewrite
    matrix's output, PMET's target point). This is H in R = Z - H.
    """
    tok = adapter.tok
    seqs = [tok(fill(req.prompt, req.subject))["input_ids"] for req in requests]
    pos = torch.tensor([subject_last_index(tok, req.prompt, req.subject) for req in requests], device=adapter.device)
    batch = pad_right(seqs, pad_id(tok), adapter.device)
    name = f"{point}.{layer}"
    acts = adapter.read_points(batch, [name])[name]
    return acts.to(adapter.device)[torch.arange(len(requests), device=adapter.device), pos].float().T.contiguous()
