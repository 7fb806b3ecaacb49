"""zsRE metrics: token-level top-1 accuracy under teacher forcing (MEMIT's zsRE protocol).

Per case, as the reference's ``compute_rewrite_quality_zsre`` (REFERENCE.md §5 "ZsRE"):
for each token of the answer, is the model's argmax after the prompt plus the answer's
earlier tokens that token? The case value is the mean over the answer's tokens.

* ``efficacy``: rewrite question (``src``) against ``target_new``;
* ``generalization``: paraphrase(s) against ``target_new`` (mean over paraphrases);
* ``specificity``: neighbourhood question(s) ("nq question: ...?") against their own
  gold answer (``neighborhood_answers``), not against the pre-edit prediction.

These are the project's shared rate names, so :func:`summarise` (means over cases)
gives the Eff/Gen/Spe columns; the reference multiplies them by 100 when printing.

Differs from reference: the answer is tokenised once as ``" " + answer`` without
special tokens and fed as ids after the prompt's own encoding (a BOS only at the very
start); the reference re-tokenises decoded prefixes and targets as text, which for
Llama needs ``[1:]``/``[:, 1]`` hacks and, for the neighbourhood answer, counts the
BOS as an answer token (deflating specificity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from blue_cli.datasets.base import RATES
from blue_cli.datasets.records import EditRequest
from blue_cli.errors import DataError
from blue_cli.evaluation.summary import summarise
from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.tokens import fill, pad_id, pad_right, target_ids

CHUNK = 64

__all__ = ["RATES", "TeacherForced", "evaluate_zsre", "predict_tokens", "summarise", "teacher_forced", "token_accuracy"]


@dataclass(frozen=True)
class TeacherForced:
    """One prompt + answer sequence and where its answer tokens are predicted.

    ``ids`` = prompt ids (with the tokenizer's special tokens, e.g. a BOS) followed by
    ``target`` (ids of " " + answer, never a BOS); ``positions[j]`` is the index whose
    next-token prediction should be ``target[j]``, i.e. ``len(prompt ids) - 1 + j``.
    """

    ids: tuple[int, ...]
    target: tuple[int, ...]
    positions: tuple[int, ...]


def teacher_forced(tok, prompt: str, answer: str) -> TeacherForced:
    """Build the teacher-forced sequence for ``answer`` after ``prompt``."""
    p_ids = list(tok(prompt)["input_ids"])
    t_ids = list(target_ids(tok, answer))
    if not t_ids:
        raise DataError(f"answer {answer!r} encodes to no tokens")
    start = len(p_ids) - 1
    return TeacherForced(tuple(p_ids + t_ids), tuple(t_ids), tuple(range(start, start + len(t_ids))))


def token_accuracy(predicted: Sequence[int], target: Sequence[int]) -> float:
    """Fraction of positions where the predicted token equals the target token."""
    if len(predicted) != len(target):
        raise ValueError(f"{len(predicted)} predictions for {len(target)} target tokens")
    if not target:
        raise ValueError("no target tokens to score")
    return sum(int(p) == int(t) for p, t in zip(predicted, target)) / len(target)


@torch.no_grad()
def predict_tokens(adapter: ModelAdapter, seqs: Sequence[TeacherForced], chunk: int = CHUNK) -> list[list[int]]:
    """Argmax next-token ids at each sequence's ``positions`` (right-padded batches).

    Only the hidden states at the scored positions go through the unembedding, so a
    large vocabulary costs (answer tokens x vocab), not (batch x length x vocab).
    """
    out: list[list[int]] = []
    for start in range(0, len(seqs), chunk):
        part = seqs[start : start + chunk]
        batch = pad_right([s.ids for s in part], pad_id(adapter.tok), adapter.device)
        hidden = adapter.base_forward(batch["input_ids"], batch["attention_mask"])  # (B, T, d)
        rows = [r for r, s in enumerate(part) for _ in s.positions]
        cols = [p for s in part for p in s.positions]
        dev = hidden.device
        picked = hidden[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]  # (N, d)
        best = adapter.logits_at(picked).argmax(dim=-1).tolist()  # (N,)
        at = 0
        for s in part:
            out.append(best[at : at + len(s.positions)])
            at += len(s.positions)
    return out


def _case_items(req: EditRequest) -> list[tuple[str, str, str]]:
    """(rate, prompt, answer) triples for one case."""
    if len(req.neighborhood_answers) != len(req.neighborhood_prompts):
        raise DataError(
            f"case {req.case_id}: {len(req.neighborhood_prompts)} neighbourhood prompts but "
            f"{len(req.neighborhood_answers)} neighbourhood answers (zsRE needs one answer per prompt)"
        )
    items = [("efficacy", fill(req.prompt, req.subject), req.target_new)]
    items += [("generalization", p, req.target_new) for p in req.paraphrase_prompts]
    items += [("specificity", p, a) for p, a in zip(req.neighborhood_prompts, req.neighborhood_answers)]
    return items


def evaluate_zsre(
    adapter: ModelAdapter,
    requests: Sequence[EditRequest],
    progress: Callable[[int, int], None] | None = None,
    chunk: int = CHUNK,
) -> list[dict]:
    """One dict per case: ``case_id`` and the three token accuracies (NaN when a case has
    no prompt of that kind, which :func:`summarise` skips)."""
    owners, seqs = [], []
    for i, req in enumerate(requests):
        for kind, prompt, answer in _case_items(req):
            owners.append((i, kind))
            seqs.append(teacher_forced(adapter.tok, prompt, answer))
    preds: list[list[int]] = []
    for start in range(0, len(seqs), chunk):
        preds += predict_tokens(adapter, seqs[start : start + chunk], chunk)
        if progress:
            progress(min(start + chunk, len(seqs)), len(seqs))
    scores: dict[tuple[int, str], list[float]] = {}
    for owner, seq, pred in zip(owners, seqs, preds):
        scores.setdefault(owner, []).append(token_accuracy(pred, seq.target))
    cases = []
    for i, req in enumerate(requests):
        case: dict = {"case_id": req.case_id}
        for kind in RATES:
            vals = scores.get((i, kind), [])
            case[kind] = sum(vals) / len(vals) if vals else float("nan")
        cases.append(case)
    return cases
