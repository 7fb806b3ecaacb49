"""Evaluation in the wild: what the model says, not what probability it gives the target.

Yang et al. 2025 ("The Mirage of Model Editing: Revisiting Evaluation in the Wild",
ACL 2025, arXiv 2502.11177) show that teacher-forced scores leak the target: its tokens
are fed in, and its length decides where scoring stops. Here nothing of the target is
given. For every rewrite, paraphrase and neighbourhood prompt the model generates
greedily and stops at the first of: its end-of-sequence token, a newline, a sentence end
("."), or ``max_tokens`` new tokens. The answer is the text before the stop, stripped.

Scores per prompt, after normalising both strings (lower case, punctuation and the
articles a/an/the removed, whitespace collapsed): ``em`` = 1 if they are equal, and
``f1`` = the harmonic mean of precision and recall of their word multisets. Rewrite
and paraphrase answers are scored against the new target; a neighbourhood answer against
the answer the unedited model generated for the same prompt (so 1 = unchanged).

Per case: ``wild_efficacy_em``/``_f1`` (rewrite prompt), ``wild_generalization_em``/
``_f1`` (mean over paraphrases), ``wild_specificity_em``/``_f1`` (mean over
neighbourhood prompts; NaN when the pre-edit answers are unknown), the rewrite
prompt's answer (``wild_rewrite_answer``) and, from the unedited model, the
neighbourhood answers (``wild_neighborhood_answers``) that later points compare with.

Differs from the anchor (WanliYoung/Revisit-Editing-Evaluation, ``test_prediction_acc_real``
in ``easyeditor/evaluate/evaluate_utils.py``): the same stop strings and 50-token cap,
but the anchor judges with an LLM (GPT-4o-mini) when given an API key and falls back to
exact match; blue runs offline and reports exact match and token F1 (SQuAD's). The anchor
scores zsRE's locality answers against their dataset answers and keeps CounterFact's
locality teacher-forced; blue scores every neighbourhood prompt against the unedited
model's own answer, the only reference that exists for CounterFact's neighbourhood
prompts and the one that measures "unchanged". Generation is batched with left padding
and a KV cache, which changes no greedy token beyond float rounding.
"""

from __future__ import annotations

import inspect
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

import torch

from blue_cli.datasets.records import EditRequest
from blue_cli.models.tokens import fill, pad_id

STOPS = ("\n", ".")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    """Lower case, punctuation and the articles a/an/the removed, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(answer: str, reference: str) -> float:
    return float(normalise(answer) == normalise(reference))


def token_f1(answer: str, reference: str) -> float:
    """Word-multiset F1 of the normalised strings (1 when both are empty)."""
    a, r = normalise(answer).split(), normalise(reference).split()
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def cut_answer(text: str) -> tuple[str, bool]:
    """The text before the first stop string, stripped, and whether a stop was found."""
    cut = min((i for i in (text.find(s) for s in STOPS) if i >= 0), default=-1)
    return (text[:cut].strip(), True) if cut >= 0 else (text.strip(), False)


def _cache_argument(model: torch.nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def greedy_answers(adapter, prompts: Sequence[str], max_tokens: int, batch_size: int = 64) -> list[str]:
    """Each prompt's greedy answer under the stop rule of the module docstring."""
    tok = adapter.tok
    eos = tok.eos_token_id
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [list(tok(p)["input_ids"]) for p in prompts[start : start + batch_size]]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), pad_id(tok), dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for r, e in enumerate(encoded):
            ids[r, width - len(e) :] = torch.tensor(e)
            mask[r, width - len(e) :] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        ids, mask, positions = (t.to(adapter.device) for t in (ids, mask, positions))
        cache_arg = _cache_argument(adapter.model)
        out = adapter.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        last = positions[:, -1]
        new: list[list[int]] = [[] for _ in encoded]
        done = [False] * len(encoded)
        for step in range(max_tokens):
            token = out.logits[:, -1, :].argmax(dim=-1)  # (B,)
            for r, t in enumerate(token.tolist()):
                if done[r]:
                    continue
                if eos is not None and t == eos:
                    done[r] = True
                    continue
                new[r].append(t)
                done[r] = cut_answer(tok.decode(new[r], skip_special_tokens=True))[1]
            if all(done) or step == max_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            last = last + 1
            out = adapter.model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=last[:, None],
                use_cache=True,
                logits_to_keep=1,
                **{cache_arg: out[cache_arg]},
            )
        answers += [cut_answer(tok.decode(n, skip_special_tokens=True))[0] for n in new]
    return answers


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def evaluate_wild(
    adapter,
    requests: Sequence[EditRequest],
    reference: dict | None,
    max_tokens: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """One dict per case (module docstring). ``reference``: case_id -> the unedited model's
    neighbourhood answers, or None when this *is* the unedited model (its answers become
    the reference, and its specificity is 1 by definition)."""
    prompts: list[str] = []
    owners: list[tuple[int, str]] = []
    for i, req in enumerate(requests):
        prompts.append(fill(req.prompt, req.subject))
        owners.append((i, "efficacy"))
        prompts += list(req.paraphrase_prompts)
        owners += [(i, "generalization")] * len(req.paraphrase_prompts)
        prompts += list(req.neighborhood_prompts)
        owners += [(i, "specificity")] * len(req.neighborhood_prompts)
    answers = greedy_answers(adapter, prompts, max_tokens)
    if progress:
        progress(len(prompts), len(prompts))
    grouped: dict[tuple[int, str], list[str]] = {}
    for owner, answer in zip(owners, answers):
        grouped.setdefault(owner, []).append(answer)
    cases = []
    for i, req in enumerate(requests):
        rewrite = grouped.get((i, "efficacy"), [""])[0]
        paraphrases = grouped.get((i, "generalization"), [])
        neighbours = grouped.get((i, "specificity"), [])
        before = neighbours if reference is None else reference.get(req.case_id)
        case: dict = {"case_id": req.case_id}
        case["wild_efficacy_em"] = exact_match(rewrite, req.target_new)
        case["wild_efficacy_f1"] = token_f1(rewrite, req.target_new)
        case["wild_generalization_em"] = _mean([exact_match(a, req.target_new) for a in paraphrases])
        case["wild_generalization_f1"] = _mean([token_f1(a, req.target_new) for a in paraphrases])
        if before is not None and len(before) == len(neighbours):
            case["wild_specificity_em"] = _mean([exact_match(a, b) for a, b in zip(neighbours, before)])
            case["wild_specificity_f1"] = _mean([token_f1(a, b) for a, b in zip(neighbours, before)])
        else:
            case["wild_specificity_em"] = case["wild_specificity_f1"] = float("nan")
        case["wild_rewrite_answer"] = rewrite
        if reference is None:
            case["wild_neighborhood_answers"] = neighbours
        cases.append(case)
    return cases
