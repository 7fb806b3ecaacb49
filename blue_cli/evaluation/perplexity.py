"""Perplexity of the model on a fixed held-out text: the collapse monitor of long edit streams.

A long stream of locate-then-edit batches can break the model long before the edits'
own metrics say so (Liu et al. 2026, arXiv 2602.02543, trace this to the norms of the
edited matrices); perplexity on text that no edit and no statistic touched shows it.

The text is cut into consecutive, non-overlapping windows of ``window`` tokens (the
last one shorter), at most ``tokens`` tokens in all; within a window every token after
the first is predicted from the ones before it. Perplexity = exp(mean NLL over all
predicted tokens), accumulated in float64. Same text, same windows, same model: the
same number (nothing is sampled).

The bundled text is the last two articles of the WikiText-2 raw test split ("Nerva",
"The Hustler (film)"); the bundled covariance corpus is the first 300 KB of the same
split, so the two share no article (tests/unit/test_perplexity.py checks it).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from blue_cli import ASSETS_DIR
from blue_cli.errors import ConfigError, DataError

BUNDLED_HELDOUT = "bundled"
BUNDLED_HELDOUT_PATH = ASSETS_DIR / "data" / "wikitext_heldout.txt"
LOGIT_ROWS = 512


def heldout_text(spec: str) -> str:
    """The held-out text: ``bundled`` or the path of a UTF-8 text file."""
    if spec == BUNDLED_HELDOUT:
        return BUNDLED_HELDOUT_PATH.read_text(encoding="utf-8")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"eval.perplexity_text '{spec}' is not a file (choose: bundled, or a path to a .txt file)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read eval.perplexity_text {path}: {err}") from err
    if not text.strip():
        raise DataError(f"eval.perplexity_text {path} is empty")
    return text


def token_windows(ids: list[int], tokens: int, window: int) -> list[list[int]]:
    """The first ``tokens`` ids cut into consecutive windows of ``window`` (the last may be
    shorter; a last window of one token predicts nothing and is dropped)."""
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    ids = ids[:tokens]
    parts = [ids[i : i + window] for i in range(0, len(ids), window)]
    return [p for p in parts if len(p) >= 2]


@torch.no_grad()
def perplexity(adapter, text: str, *, tokens: int, window: int, batch: int = 8) -> float:
    """exp(mean next-token NLL) of ``adapter``'s model over the windows of ``text`` (module docstring)."""
    ids = list(adapter.tok(text, add_special_tokens=False, verbose=False)["input_ids"])
    limit = adapter.context_length
    width = min(window, limit) if limit else window
    parts = token_windows(ids, tokens, width)
    if not parts:
        raise DataError(f"the held-out text gives {len(ids)} tokens: too few to measure perplexity")
    total, count = 0.0, 0
    for start in range(0, len(parts), batch):
        group = parts[start : start + batch]
        longest = max(len(p) for p in group)
        input_ids = torch.zeros(len(group), longest, dtype=torch.long)
        mask = torch.zeros(len(group), longest, dtype=torch.long)
        for r, p in enumerate(group):
            input_ids[r, : len(p)] = torch.tensor(p)
            mask[r, : len(p)] = 1
        input_ids, mask = input_ids.to(adapter.device), mask.to(adapter.device)
        hidden = adapter.base_forward(input_ids, mask)  # (B, T, d)
        rows = [r for r, p in enumerate(group) for _ in range(len(p) - 1)]
        cols = [c for p in group for c in range(len(p) - 1)]
        nxt = [p[c + 1] for p in group for c in range(len(p) - 1)]
        dev = hidden.device
        for at in range(0, len(nxt), LOGIT_ROWS):  # (rows x vocab) logits, a slice at a time
            r = torch.tensor(rows[at : at + LOGIT_ROWS], device=dev)
            c = torch.tensor(cols[at : at + LOGIT_ROWS], device=dev)
            want = torch.tensor(nxt[at : at + LOGIT_ROWS], device=dev)
            logp = torch.log_softmax(adapter.logits_at(hidden[r, c]).float(), dim=-1)
            total += float(-logp.gather(1, want[:, None]).double().sum())
        count += len(nxt)
    return math.exp(total / count)
