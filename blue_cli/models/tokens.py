"""Token-level helpers shared by editing and evaluation: subject positions, padding."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def fill(template: str, subject: str) -> str:
    """Put the subject at the template's first "{}" (prompts may hold other braces)."""
    return template.replace("{}", subject, 1)


def subject_last_index(tok, template: str, subject: str) -> int:
    """Index of the subject's last token in ``tok(fill(template, subject))``.

    Found on the string side as len(tok(prefix + subject)) - 1, as the reference
    does; special tokens (a BOS) are counted because the full encoding has them too.
    """
    cut = template.index("{}")
    return len(tok(template[:cut] + subject)["input_ids"]) - 1


def target_ids(tok, target: str) -> list[int]:
    """Token ids of " " + target, without special tokens (no BOS in the middle)."""
    return tok(" " + target.strip(), add_special_tokens=False)["input_ids"]


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` for token lists of unequal length."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
