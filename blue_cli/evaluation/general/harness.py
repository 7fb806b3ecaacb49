"""Run the general-capability tasks on a model and score them (REFERENCE.md §5).

The reference (``GLUEEval(number_of_tests=100)``, 0-shot, ``gen_len=5``) evaluates
one item at a time; here items are generated in left-padded batches, which gives the
same greedy continuations up to floating-point ties.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from blue_cli.errors import ConfigError
from blue_cli.evaluation.general.answers import context_length, greedy_continuations, prompt_ids
from blue_cli.evaluation.general.metrics import SCORES, classification_scores
from blue_cli.evaluation.general.tasks import FEW_SHOT_RESERVE, TaskData, load_task, task_spec
from blue_cli.models.adapter import ModelAdapter

log = logging.getLogger(__name__)

N_ITEMS = 100
"""Test items per task, as the reference's ``number_of_tests``."""
MAX_NEW_TOKENS = 5
"""Greedy tokens generated per item, as the reference's ``gen_len``."""


@dataclass(frozen=True)
class TaskResult:
    """Everything one task's evaluation produced, item by item, in test order."""

    name: str
    prompts: tuple[list[int], ...]
    continuations: tuple[str, ...]
    golds: tuple[int, ...]
    predictions: tuple[int, ...]
    truncated: int

    def scores(self) -> dict[str, float | None]:
        """``f1`` (weighted), ``mcc``, ``accuracy``, ``n``, ``unparsed``, ``truncated``.

        The rule: when no answer parsed, ``f1``, ``mcc`` and ``accuracy`` are None
        (unavailable): the model never answered in the task's form, so nothing was
        measured, and a 0 would read as a measured failure (an MCC of 0 as chance).
        When at least one answer parsed they are measured as the reference measures
        them, each unparsed answer counting as wrong.
        """
        scores: dict[str, float | None] = {
            **classification_scores(self.golds, self.predictions),
            "truncated": self.truncated,
        }
        if scores["unparsed"] == scores["n"]:
            scores.update(dict.fromkeys(SCORES))
        return scores


def _check_settings(n_items: int | None, n_shots: int, max_new_tokens: int, batch_size: int) -> None:
    if n_items is not None and n_items < 1:
        raise ConfigError(f"n_items must be >= 1 or None (all test items), got {n_items}")
    if not 0 <= n_shots <= FEW_SHOT_RESERVE:
        raise ConfigError(f"n_shots must be in 0..{FEW_SHOT_RESERVE} (the reserved demonstrations), got {n_shots}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


def _check_size(data: TaskData, n_items: int | None) -> None:
    if n_items is not None and n_items > len(data.tests):
        raise ConfigError(
            f"n_items {n_items} exceeds the {len(data.tests)} test items of {data.name} in {data.source} "
            "(lower n_items or point the general-eval path at a folder of full sets)"
        )


def run_task(
    adapter: ModelAdapter,
    data: TaskData,
    *,
    n_items: int | None = N_ITEMS,
    n_shots: int = 0,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> TaskResult:
    """Generate and parse answers for the first ``n_items`` test items of one task.

    ``n_items=None`` takes every test item. Asking for more items than the data hold is
    a ConfigError (the bundled sets hold 100; pass a folder of full sets for more).
    """
    _check_settings(n_items, n_shots, max_new_tokens, batch_size)
    _check_size(data, n_items)
    items = data.tests if n_items is None else data.tests[:n_items]
    ctx = context_length(adapter)
    budget = None if ctx is None else ctx - max_new_tokens
    if budget is not None and budget < 1:
        raise ConfigError(f"max_new_tokens {max_new_tokens} leaves no room in the model's {ctx}-token context")
    shots = data.shots[:n_shots]
    built = [prompt_ids(adapter.tok, data.spec, rec, shots, budget) for rec in items]
    prompts = tuple(ids for ids, _ in built)
    truncated = sum(cut for _, cut in built)
    if truncated:
        log.warning("%s: %d of %d prompts cut to the model's %d-token context", data.name, truncated, len(items), ctx)
    texts = greedy_continuations(adapter, prompts, max_new_tokens, batch_size=batch_size, progress=progress)
    return TaskResult(
        name=data.name,
        prompts=prompts,
        continuations=tuple(texts),
        golds=tuple(data.spec.gold(rec) for rec in items),
        predictions=tuple(data.spec.parse(text) for text in texts),
        truncated=truncated,
    )


def evaluate_general(
    adapter: ModelAdapter,
    tasks: Sequence[str],
    *,
    n_items: int | None = N_ITEMS,
    n_shots: int = 0,
    path: str | Path | None = None,
    batch_size: int = 16,
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict[str, float | None]]:
    """Scores per task, e.g. ``{"sst2": {"f1", "mcc", "accuracy", "n", "unparsed", "truncated"}}``.

    A task without a single parsed answer has None scores (``TaskResult.scores``), and
    one warning line names every such task.

    ``path`` is None / ``"bundled"`` (the packaged 110-record subsets) or a folder of
    ``<task>.json`` full sets. Every task name and setting is checked, and every file
    read, before the model runs, so a typo fails fast.
    """
    names = list(dict.fromkeys(tasks))
    for name in names:
        task_spec(name)
    _check_settings(n_items, n_shots, max_new_tokens, batch_size)
    datas = [load_task(name, path) for name in names]
    for data in datas:
        _check_size(data, n_items)
    results: dict[str, dict[str, float]] = {}
    for data in datas:
        step = (lambda done, total, _n=data.name: progress(_n, done, total)) if progress else None
        result = run_task(
            adapter,
            data,
            n_items=n_items,
            n_shots=n_shots,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            progress=step,
        )
        results[data.name] = result.scores()
        log.info("general %s: %s", data.name, results[data.name])
    _warn_unmeasured(results)
    return results


def _warn_unmeasured(results: dict[str, dict[str, float | None]]) -> None:
    """One warning line for every task whose scores are None because no answer parsed."""
    silent = [f"{name} ({s['unparsed']} of {s['n']})" for name, s in results.items() if s["accuracy"] is None]
    if silent:
        log.warning(
            "general capability: no answer in a parseable form from %s: scores reported as null "
            "(unavailable), not 0; the summary's general.<task>.unparsed has the count",
            ", ".join(silent),
        )
