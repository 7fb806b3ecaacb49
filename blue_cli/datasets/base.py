"""What a dataset is to the runner: edit requests in, per-case metrics out.

The runner never names a dataset: it loads requests and evaluates them through
this interface, and summarises the per-case dicts the evaluator returns. Every
evaluator reports the same three rates (``efficacy``, ``generalization``,
``specificity``) so reports and plots need not know the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from blue_cli.data.records import EditRequest
from blue_cli.errors import DataError
from blue_cli.models.adapter import ModelAdapter

Progress = Callable[[int, int], None]
RATES = ("efficacy", "generalization", "specificity")


class EditDataset:
    """Base: subclasses implement :meth:`read` and :meth:`evaluate`."""

    name = "base"

    def __init__(self, cfg, eval_cfg, seed: int = 0):
        self.cfg = cfg
        self.eval_cfg = eval_cfg
        self.seed = seed

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

    def prepare(self) -> dict:
        """One-off work before the run (e.g. fetching evaluation resources); returns notes for the summary."""
        return {}

    def evaluate(self, adapter: ModelAdapter, requests: Sequence[EditRequest], progress: Progress | None = None) -> list[dict]:
        """One dict per case: ``case_id``, the three rates, and any other per-case metric."""
        raise NotImplementedError
