"""What a dataset is to the runner: edit requests in, per-case metrics out.

The runner never names a dataset: it loads requests and evaluates them through
this interface, and summarises the per-case dicts the evaluator returns. Every
evaluator reports the same three rates (``efficacy``, ``generalization``,
``specificity``) so reports and plots need not know the dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from blue_cli.datasets.records import EditRequest
from blue_cli.errors import DataError

if TYPE_CHECKING:  # a dataset module imports torch only when it evaluates (see registry.py)
    from blue_cli.models.adapter import ModelAdapter

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
RATES = ("efficacy", "generalization", "specificity")
# The prompts a rate is measured on: a record with none has no value for that rate (null).
RATE_PROMPTS = {"generalization": "paraphrase_prompts", "specificity": "neighborhood_prompts"}


class EditDataset:
    """Base: subclasses implement :meth:`read` and :meth:`evaluate`."""

    name = "base"

    def __init__(self, cfg, eval_cfg, seed: int = 0):
        self.cfg = cfg
        self.eval_cfg = eval_cfg
        self.seed = seed
        self.wild_reference: dict | None = None  # case_id -> the unedited model's neighbourhood answers

    def read(self, limit: int | None) -> list[EditRequest]:
        """Records ``offset .. offset + limit`` of the configured source."""
        raise NotImplementedError

    def load(self, num_edits: int) -> list[EditRequest]:
        """``num_edits`` requests; fewer only with ``allow_fewer`` (else a one-line error)."""
        requests = self.read(num_edits)
        if len(requests) < num_edits and not self.cfg.allow_fewer:
            raise DataError(
                f"num_edits={num_edits} but dataset '{self.name}' has only {len(requests)} records from offset "
                f"{self.cfg.offset} (lower num_edits, or set dataset.allow_fewer=true)"
            )
        return requests

    def check_fits(self, adapter: ModelAdapter, requests: Sequence[EditRequest], prefix_tokens: int) -> None:
        """Every prompt, with a context prefix and its target, fits the model's context
        (else one line naming the record), so no record fails deep inside a batch."""
        limit = adapter.context_length
        if limit is None:
            return
        tok = adapter.tok
        for req in requests:
            target = len(tok(" " + req.target_new, add_special_tokens=False)["input_ids"])
            for prompt in (req.rewrite_prompt, *req.paraphrase_prompts, *req.neighborhood_prompts):
                n = len(tok(prompt)["input_ids"]) + target + prefix_tokens + 2
                if n > limit:
                    raise DataError(
                        f"dataset '{self.name}' case_id {req.case_id}: a prompt of {n} tokens with its context prefix "
                        f"and target does not fit the model's {limit} positions: {prompt[:60]!r}"
                    )

    def warn_missing_prompts(self, requests: Sequence[EditRequest]) -> None:
        """One warning line per rate that some records cannot have (no paraphrases, no
        neighbours): their rate is null, and the run's is the mean over the others, not 0."""
        for rate, prompts in RATE_PROMPTS.items():
            without = [r.case_id for r in requests if not getattr(r, prompts)]
            if not without:
                continue
            rest = len(requests) - len(without)
            log.warning(
                "%d of %d records of dataset '%s' have no %s (first: case_id %d): their %s is null, and the run's %s",
                len(without),
                len(requests),
                self.name,
                prompts,
                without[0],
                rate,
                f"is the mean over the other {rest}" if rest else "is null too",
            )

    def prepare(self) -> dict:
        """One-off work before the run (e.g. fetching evaluation resources); returns notes for the summary."""
        return {}

    def evaluate(
        self, adapter: ModelAdapter, requests: Sequence[EditRequest], progress: Progress | None = None
    ) -> list[dict]:
        """One dict per case: ``case_id``, the three rates, and any other per-case metric."""
        raise NotImplementedError

    def evaluate_run(
        self,
        adapter: ModelAdapter,
        requests: Sequence[EditRequest],
        progress: Progress | None = None,
        pre_edit: bool = False,
    ) -> list[dict]:
        """:meth:`evaluate` and, with ``eval.wild``, the evaluation in the wild beside it
        (evaluation/wild.py: ``wild_*`` keys). ``pre_edit``: this is the unedited model,
        whose neighbourhood answers later evaluations compare with."""
        cases = self.evaluate(adapter, requests, progress=progress)
        if not getattr(self.eval_cfg, "wild", False):
            return cases
        from blue_cli.evaluation.wild import evaluate_wild

        reference = None if pre_edit else (self.wild_reference or {})
        wild = evaluate_wild(adapter, requests, reference, self.eval_cfg.wild_max_tokens)
        for case, extra in zip(cases, wild):
            case.update({k: v for k, v in extra.items() if k != "case_id"})
        if pre_edit:
            self.remember_pre_edit(cases)
        return cases

    def remember_pre_edit(self, cases: Sequence[dict]) -> None:
        """Keep the unedited model's neighbourhood answers (from its evaluation, or from
        ``cases_pre.jsonl`` when a resumed run reuses it)."""
        self.wild_reference = {
            c["case_id"]: c["wild_neighborhood_answers"] for c in cases if "wild_neighborhood_answers" in c
        }
