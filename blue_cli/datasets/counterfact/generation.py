"""Seeded, batched top-k sampling, and the per-case fluency/consistency of the texts.

Matches the reference's ``generate_fast`` (ROME/MEMIT ``util/generate.py``): each step
samples from the softmax restricted to the ``top_k`` most likely tokens, renormalised;
generation does not stop at EOS; a text is ``max_length`` tokens long *including* its
prompt (the reference's ``max_out_len=100``); the result is prompt + continuation,
decoded without special tokens, NFKD-normalised, with "\\n\\n" replaced by " ".

Differs from reference: prompts are left-padded (with position ids from the mask)
rather than right-padded and filled in place, and sampling draws from a private
``torch.Generator`` seeded per call, so the same seed and the same batches give the
same texts (the reference is unseeded). ``max_new_tokens`` can cap generation further.
"""

from __future__ import annotations

import inspect
import logging
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from blue_cli.datasets.counterfact.consistency import (
    ConsistencyResources,
    Unavailable,
    consistency_score,
)
from blue_cli.datasets.records import EditRequest
from blue_cli.evaluation.fluency import fluency
from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.tokens import pad_id

log = logging.getLogger(__name__)

__all__ = ["Sampling", "clean_text", "evaluate_generation", "generate", "left_pad", "sample_ids"]


def left_pad(seqs: Sequence[Sequence[int]], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids``, ``attention_mask`` and ``position_ids`` (B, T).

    Positions count real tokens only (0 at each row's first real token), so a padded
    row sees the same positions as it would alone.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


def _cache_argument(model: torch.nn.Module) -> str:
    """The KV-cache keyword (and output key): ``cache`` in recent transformers 5.x,
    ``past_key_values`` before (the old name still works there but warns)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _sample(logits: torch.Tensor, top_k: int, generator: torch.Generator) -> torch.Tensor:
    """One token per row from softmax(logits) restricted to the top k, renormalised. (B, V) -> (B,)"""
    probs = torch.softmax(logits.float(), dim=-1)
    top_p, top_i = probs.topk(top_k, dim=-1)  # (B, k)
    top_p = top_p / top_p.sum(dim=-1, keepdim=True)
    # Sample on the CPU generator so results do not depend on the device's RNG.
    pick = torch.multinomial(top_p.cpu(), 1, generator=generator).to(top_i.device)  # (B, 1)
    return top_i.gather(1, pick).squeeze(1)


@torch.no_grad()
def _sample_batch(
    adapter: ModelAdapter, prompts: Sequence[Sequence[int]], steps: int, top_k: int, generator: torch.Generator
) -> torch.Tensor:
    """``steps`` sampled tokens after each prompt, with a KV cache. Returns (B, steps)."""
    batch = left_pad(prompts, pad_id(adapter.tok), adapter.device)
    mask, positions = batch["attention_mask"], batch["position_ids"][:, -1]
    cache_arg = _cache_argument(adapter.model)
    out = adapter.model(**batch, use_cache=True, logits_to_keep=1)
    new = []
    for step in range(steps):
        token = _sample(out.logits[:, -1, :], top_k, generator)  # (B,)
        new.append(token)
        if step == steps - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions + 1
        out = adapter.model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=positions[:, None],
            use_cache=True,
            logits_to_keep=1,
            **{cache_arg: out[cache_arg]},
        )
    return torch.stack(new, dim=1)


@dataclass(frozen=True)
class Sampling:
    """How texts are sampled: ``max_length`` tokens per text, prompt included (BOS too, as the
    reference's ``max_out_len``), at most ``max_new_tokens`` new ones when set, each drawn from
    the ``top_k`` most likely; ``batch_size`` prompts at a time, all from one generator seeded
    with ``seed``: the same seed, prompts and batch size give the same texts run to run."""

    max_length: int = 100
    max_new_tokens: int | None = None
    top_k: int = 5
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        for key in ("top_k", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")

    def budgets(self, encoded: Sequence[Sequence[int]]) -> list[int]:
        """New tokens per prompt: what ``max_length`` leaves, capped by ``max_new_tokens``."""
        budgets = [max(0, self.max_length - len(ids)) for ids in encoded]
        return budgets if self.max_new_tokens is None else [min(b, self.max_new_tokens) for b in budgets]


def sample_ids(
    adapter: ModelAdapter,
    prompts: Sequence[str],
    sampling: Sampling = Sampling(),
    progress: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Token ids of prompt + sampled continuation for each prompt (see :class:`Sampling`)."""
    generator = torch.Generator().manual_seed(sampling.seed)
    encoded = [list(adapter.tok(p)["input_ids"]) for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} ({prompts[i]!r}) encodes to no tokens; nothing to continue from")
    budgets = sampling.budgets(encoded)
    results: list[list[int]] = []
    for start in range(0, len(encoded), sampling.batch_size):
        part, want = encoded[start : start + sampling.batch_size], budgets[start : start + sampling.batch_size]
        steps = max(want)
        if steps == 0:
            results += [list(ids) for ids in part]
        else:
            # Rows draw independently; a row with a smaller budget just keeps fewer tokens.
            new = _sample_batch(adapter, part, steps, sampling.top_k, generator).tolist()
            results += [ids + row[:n] for ids, row, n in zip(part, new, want)]
        if progress:
            progress(len(results), len(encoded))
    return results


def clean_text(text: str) -> str:
    """The reference's post-processing of a generated text."""
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ").replace("<|endoftext|>", "")


def generate(
    adapter: ModelAdapter,
    prompts: Sequence[str],
    sampling: Sampling = Sampling(),
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Prompt + top-k sampled continuation, one text per prompt, in order (see :class:`Sampling`)."""
    ids = sample_ids(adapter, prompts, sampling, progress)
    return [clean_text(adapter.tok.decode(row, skip_special_tokens=True)) for row in ids]


def evaluate_generation(
    adapter: ModelAdapter,
    requests: Sequence[EditRequest],
    *,
    resources: ConsistencyResources | Unavailable | None = None,
    every_n_cases: int = 1,
    sampling: Sampling = Sampling(),
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Per case: ``fluency`` of its generations, and ``consistency`` when resources are loaded.

    Every ``every_n_cases``-th request (0, n, 2n, ...) is evaluated; the generation
    prompts of all of them are sampled together, as ``sampling`` says (so the texts
    depend on the seed and on which cases are selected). As the reference, a
    case's fluency is the mean entropy of its own texts and consistency compares its
    joined texts with the snippets of (relation_id, target_new_id). When ``resources``
    is :class:`Unavailable` or None the ``consistency`` key is left out: report
    ``str(resources)`` instead of a number.
    """
    if every_n_cases < 1:
        raise ValueError(f"every_n_cases must be >= 1, got {every_n_cases}")
    chosen = list(requests)[::every_n_cases]
    prompts = [p for req in chosen for p in req.generation_prompts]
    texts = generate(adapter, prompts, sampling, progress)
    cases, at = [], 0
    for req in chosen:
        own = texts[at : at + len(req.generation_prompts)]
        at += len(req.generation_prompts)
        case: dict = {"case_id": req.case_id, "fluency": fluency(own)}
        if isinstance(resources, ConsistencyResources):
            case["consistency"] = consistency_score(own, req.relation_id, req.target_new_id, resources)
        cases.append(case)
    return cases
