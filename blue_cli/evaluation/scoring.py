"""Teacher-forced scoring of target strings after prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.tokens import pad_id, pad_right, target_ids

CHUNK = 64


@dataclass(frozen=True)
class TargetScore:
    """Mean per-token NLL and summed log-probability (nats) of a target after a prompt."""

    nll: float
    logprob: float


@torch.no_grad()
def score_targets(
    adapter: ModelAdapter, prompts: Sequence[str], targets: Sequence[str], chunk: int = CHUNK
) -> list[TargetScore]:
    """Score " " + targets[i] after prompts[i]: prompt and target are tokenised apart
    and concatenated, so the target's tokens are the same whatever the prompt."""
    tok = adapter.tok
    out: list[TargetScore] = []
    for start in range(0, len(prompts), chunk):
        seqs, spans = [], []
        for prompt, target in zip(prompts[start : start + chunk], targets[start : start + chunk]):
            p_ids, t_ids = tok(prompt)["input_ids"], target_ids(tok, target)
            seqs.append(p_ids + t_ids)
            spans.append((len(p_ids), len(t_ids)))
        batch = pad_right(seqs, pad_id(tok), adapter.device)
        rows, pos, toks, owner = [], [], [], []
        for r, ((p_len, t_len), seq) in enumerate(zip(spans, seqs)):
            for j in range(t_len):
                rows.append(r)
                pos.append(p_len - 1 + j)
                toks.append(seq[p_len + j])
                owner.append(r)
        hidden = adapter.base_forward(batch["input_ids"], batch["attention_mask"])
        dev = hidden.device
        logits = adapter.logits_at(hidden[torch.tensor(rows, device=dev), torch.tensor(pos, device=dev)]).float()
        lp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(toks, device=dev)[:, None]).squeeze(1)
        sums = torch.zeros(len(seqs), dtype=torch.float64, device=dev).index_add(
            0, torch.tensor(owner, device=dev), lp.double()
        )
        for r, (_, t_len) in enumerate(spans):
            total = float(sums[r])
            out.append(TargetScore(nll=-total / t_len, logprob=total))
    return out
