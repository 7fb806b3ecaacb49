"""Context templates: "{}" plus short prefixes the model writes itself.

Keys are averaged over these so an edit generalises beyond the bare prompt.
Differs from reference: sampling is seeded, so runs repeat (the reference samples
unseeded and its keys and targets vary between runs).
"""

from __future__ import annotations

import torch

from blue_cli.models.adapter import ModelAdapter

STARTERS = ("The", "Therefore", "Because", "I", "You")


@torch.no_grad()
def sample_prefix(adapter: ModelAdapter, start: str, n_tokens: int, top_k: int, gen: torch.Generator) -> str:
    """Top-k sampling of ``n_tokens`` tokens after ``start`` (full re-forward: short texts)."""
    ids = adapter.tok(start, return_tensors="pt")["input_ids"].to(adapter.device)
    n_start = ids.shape[1]
    for _ in range(max(0, n_tokens - n_start)):
        mask = torch.ones_like(ids)
        hidden = adapter.base_forward(ids, mask)[:, -1]
        logits = adapter.logits_at(hidden).float().cpu()[0]
        top = torch.topk(logits, top_k)
        probs = torch.softmax(top.values, dim=-1)
        choice = top.indices[torch.multinomial(probs, 1, generator=gen)]
        ids = torch.cat([ids, choice.view(1, 1).to(ids.device)], dim=1)
    return adapter.tok.decode(ids[0], skip_special_tokens=True)


def context_templates(
    adapter: ModelAdapter, *, n_prefixes: int = 5, n_tokens: int = 10, top_k: int = 5, seed: int = 0
) -> list[list[str]]:
    """Template groups: ``[["{}"], [prefix_1 + ". {}", ...]]`` (averaged per group, then across)."""
    gen = torch.Generator().manual_seed(seed)
    starters = [STARTERS[i % len(STARTERS)] for i in range(n_prefixes)]
    prefixes = []
    for start in starters:
        text = sample_prefix(adapter, start, n_tokens, top_k, gen)
        text = text.replace("{", " ").replace("}", " ").strip()
        prefixes.append(text + ". {}")
    groups = [["{}"]]
    if prefixes:
        groups.append(prefixes)
    return groups
