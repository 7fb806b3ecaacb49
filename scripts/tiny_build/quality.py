"""How good a tiny model is: held-out loss and whether it knows the bundled facts.

Used by the build (the numbers in ``build_info.json``) and the tests of the committed models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tiny_build.corpus import SEQ_LEN, encode_units, pack_units


def heldout_loss(model, tokenizer, paragraphs: Sequence[str], *, batch_size: int = 64) -> float:
    """Mean per-token NLL (nats) on ``paragraphs`` packed into rows like in training."""
    import torch

    bos = tokenizer.bos_token_id if _adds_bos(tokenizer) else None
    units = encode_units(tokenizer, paragraphs, SEQ_LEN - 2)
    ids, labels = pack_units(
        units, seq_len=SEQ_LEN, bos_id=bos, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id
    )
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            x = torch.tensor(ids[i : i + batch_size])
            y = torch.tensor(labels[i : i + batch_size])
            logits = model(input_ids=x, attention_mask=(x != tokenizer.pad_token_id).long()).logits
            lp = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                y[:, 1:].reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += lp.item()
            count += int((y[:, 1:] != -100).sum())
    return total / max(1, count)


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _target_nll(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 64):
    """Mean per-token NLL of each target after its prompt, and the P of its first token.

    Close to ``blue_cli.evaluation.scoring.score_targets``, but kept here: it computes the
    numbers recorded in the committed ``build_info.json`` files, which must not drift.
    """
    import torch

    seqs, spans = [], []
    for prompt, target in pairs:
        p = tokenizer(prompt)["input_ids"]
        t = tokenizer(target, add_special_tokens=False)["input_ids"]
        seqs.append(p + t)
        spans.append((len(p), len(t)))
    nlls = [0.0] * len(seqs)
    first_p = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # batches of similar length
    pad = tokenizer.pad_token_id
    model.eval()
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = max(len(seqs[i]) for i in idx)
            x = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros_like(x)
            for j, i in enumerate(idx):
                x[j, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[j, : len(seqs[i])] = 1
            logp = torch.log_softmax(model(input_ids=x, attention_mask=mask).logits.float(), -1)
            for j, i in enumerate(idx):
                start, n = spans[i]
                pos = torch.arange(start - 1, start - 1 + n)
                tok_lp = logp[j, pos, torch.tensor(seqs[i][start : start + n])]
                nlls[i] = float(-tok_lp.mean())
                first_p[i] = float(tok_lp[0].exp())
    return nlls, first_p


def fact_scores(model, tokenizer, records: Sequence[dict[str, Any]], *, paraphrases: bool = True) -> dict[str, float]:
    """How well the model knows the true objects of ``records`` (teacher forcing).

    ``rewrite_rate``: fraction of records whose true object has a lower mean per-token NLL
    than the new object after ``prompt.format(subject)``; ``paraphrase_rate``: the same over
    all paraphrase prompts; ``median_p_true``: median probability of the true object's first
    token after the rewrite prompt. ``paraphrases=False`` skips the paraphrase prompts (the
    rate is then NaN).
    """
    import statistics

    rw_pairs, para_pairs = [], []
    for r in records:
        rw = r["requested_rewrite"]
        prompt = rw["prompt"].format(rw["subject"])
        true, new = " " + rw["target_true"]["str"], " " + rw["target_new"]["str"]
        rw_pairs += [(prompt, true), (prompt, new)]
        for p in r.get("paraphrase_prompts", []) if paraphrases else []:
            para_pairs += [(p, true), (p, new)]
    nll, first = _target_nll(model, tokenizer, rw_pairs + para_pairs)
    n_rw = len(rw_pairs)
    rw_wins = [nll[i] < nll[i + 1] for i in range(0, n_rw, 2)]
    para_wins = [nll[i] < nll[i + 1] for i in range(n_rw, len(nll), 2)]
    return {
        "rewrite_rate": sum(rw_wins) / max(1, len(rw_wins)),
        "paraphrase_rate": sum(para_wins) / len(para_wins) if para_wins else float("nan"),
        "median_p_true": statistics.median(first[0:n_rw:2]) if n_rw else float("nan"),
    }
