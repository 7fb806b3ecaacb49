"""Prompt assembly under the context limit and batched greedy continuation."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from blue_cli.evaluation.general.tasks import Record, TaskSpec
from blue_cli.models.adapter import ModelAdapter


def context_length(adapter: ModelAdapter) -> int | None:
    """Positions the model can attend over, from its config; None when it declares none."""
    config = adapter.model.config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _n_tokens(tok, text: str) -> int:
    return len(tok(text)["input_ids"])


def prompt_ids(
    tok, spec: TaskSpec, record: Record, shots: Sequence[Record], budget: int | None
) -> tuple[list[int], bool]:
    """Token ids of demonstrations + question, and whether the question had to be cut.

    As the reference, demonstrations are added in file order while the running token
    count (question first, then each demonstration tokenised alone) stays within
    ``budget`` (context length minus the tokens to generate). A question longer than
    the budget on its own keeps its last ``budget`` tokens (its answer cue) and the
    tokenizer's leading BOS, if any.
    Differs from reference: it has no such cut (its models' contexts fit every item);
    the tiny models' 256 positions do not fit every MMLU question.
    """
    question = spec.question(record)
    chosen: list[str] = []
    if shots:
        remaining = math.inf if budget is None else budget - _n_tokens(tok, question)
        for shot in shots:
            demo = spec.demonstration(shot)
            remaining -= _n_tokens(tok, demo)
            if remaining < 0:
                break
            chosen.append(demo)
    text = "".join(chosen) + question
    ids = list(tok(text)["input_ids"])
    if budget is None or len(ids) <= budget:
        return ids, False
    bos = tok.bos_token_id
    if bos is not None and ids[0] == bos and budget > 1:
        return [bos] + ids[len(ids) - budget + 1 :], True
    return ids[len(ids) - budget :], True


def _generation_config(adapter: ModelAdapter, max_new_tokens: int, pad_id: int):
    """Plain greedy decoding whatever the checkpoint's own defaults (some sample)."""
    from transformers import GenerationConfig

    eos = adapter.model.generation_config.eos_token_id
    if eos is None:
        eos = adapter.tok.eos_token_id
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_id, eos_token_id=eos
    )


@torch.no_grad()
def greedy_continuations(
    adapter: ModelAdapter,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Greedily continue each prompt by up to ``max_new_tokens`` and decode the new text.

    Prompts are sorted by length and left-padded in batches (built here, so the
    tokenizer's right padding side is never touched); the returned list follows the
    input order. Decoding skips special tokens, so generation stopped at EOS yields
    the text before it. The model is put in eval mode for the call and restored.
    """
    tok, model = adapter.tok, adapter.model
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad_id is None:
        pad_id = 0
    config = _generation_config(adapter, max_new_tokens, pad_id)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                seq = torch.as_tensor(list(prompts[i]), dtype=torch.long)
                ids[row, width - len(seq) :] = seq
                mask[row, width - len(seq) :] = 1
            out = model.generate(
                input_ids=ids.to(adapter.device), attention_mask=mask.to(adapter.device), generation_config=config
            )
            for row, i in enumerate(chunk):
                texts[i] = tok.decode(out[row, width:].tolist(), skip_special_tokens=True)
            if progress:
                progress(min(start + batch_size, len(order)), len(order))
    finally:
        model.train(was_training)
    return texts
