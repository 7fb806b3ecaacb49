"""Evaluation points during sequential editing: curves over the number of edits.

Every ``eval_every`` batches the records edited so far are evaluated (and the first
batch's records on their own, to show forgetting); every ``eval.general_every``
batches, and before the first and after the last, the general-capability tasks.
Each point is one row of ``evals.jsonl``: ``batches``, ``edits``, the rates,
``first_batch.<rate>``, ``fluency`` where generated, ``general.<task>.<metric>``
(null, with ``general.<task>.unparsed`` beside it, where no answer parsed);
``perplexity`` on held-out text (evaluation/perplexity.py) before the first batch,
every ``eval.perplexity_every`` batches and after the last, which the optional stop
rule (``eval.stop_perplexity_factor``) compares with the pre-edit value.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from blue_cli.datasets.records import EditRequest
from blue_cli.evaluation.general import SCORES, evaluate_general, load_task
from blue_cli.evaluation.perplexity import heldout_text, perplexity
from blue_cli.evaluation.summary import summarise
from blue_cli.faults import fault_point
from blue_cli.runs import files as results


def evaluated_positions(n: int, max_cases: int | None) -> list[int]:
    """Positions in the stream of the records that are evaluated: all of them, or with
    ``eval.max_cases`` at most that many, evenly spread (floor(i * n / max_cases)), so an
    evaluation point of a long stream costs the same after 1,000 edits as after 100,000."""
    if max_cases is None or n <= max_cases:
        return list(range(n))
    return [i * n // max_cases for i in range(max_cases)]


def check_general_tasks(eval_cfg) -> None:
    """Unknown task names or unreadable task files fail before the run starts."""
    for task in eval_cfg.general:
        load_task(task, eval_cfg.general_path)


class EvaluationPoints:
    """Decides when to evaluate during the batch loop and appends the rows to evals.jsonl."""

    def __init__(self, cfg, dataset, batches: Sequence[Sequence[EditRequest]], run_dir: Path, progress, tracker=None):
        self.every = cfg.eval_every
        self.eval_cfg = cfg.eval
        self.dataset = dataset
        self.batches = batches
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.rows = results.read_jsonl(self.run_dir / results.EVALS)
        self.tracker = tracker  # an experiment tracker (reporting.tracking), or None
        total = sum(len(b) for b in batches)
        # the stream positions of the evaluated records (in order; the runner's pre- and post-edit
        # evaluations read them too), and the same as a set for membership
        self.positions = evaluated_positions(total, getattr(self.eval_cfg, "max_cases", None))
        self.evaluated = set(self.positions)
        self._heldout: str | None = None

    def reset(self) -> None:
        """A fresh run: forget the rows of an earlier run in this folder."""
        self.rows = []

    def has(self, done: int) -> bool:
        """Whether evals.jsonl already holds the row of evaluation point ``done``."""
        return any(r.get("batches") == done for r in self.rows)

    def _general_due(self, done: int) -> bool:
        every = self.eval_cfg.general_every
        last = len(self.batches)
        return bool(self.eval_cfg.general) and (done in (0, last) or (every is not None and done % every == 0))

    def _perplexity_due(self, done: int) -> bool:
        ev = self.eval_cfg
        every = getattr(ev, "perplexity_every", None)
        if not getattr(ev, "perplexity_tokens", 0):
            return False
        return done in (0, len(self.batches)) or bool(every and done % every == 0)

    def due(self, done: int) -> bool:
        """Whether batch count ``done`` (not the last) is an evaluation point."""
        return bool(self.every and done % self.every == 0) or self._general_due(done) or self._perplexity_due(done)

    def perplexity(self, adapter) -> float:
        """The model's perplexity on the held-out text (read once)."""
        ev = self.eval_cfg
        if self._heldout is None:
            self._heldout = heldout_text(ev.perplexity_text)
        return perplexity(adapter, self._heldout, tokens=ev.perplexity_tokens, window=ev.perplexity_window)

    def stop_reason(self, done: int) -> str | None:
        """One line when the row at ``done`` batches breaks the stop rule (perplexity above
        ``eval.stop_perplexity_factor`` x its pre-edit value), else None."""
        factor = getattr(self.eval_cfg, "stop_perplexity_factor", None)
        row = next((r for r in self.rows if r.get("batches") == done), None)
        pre = next((r for r in self.rows if r.get("batches") == 0), None)
        if factor is None or done == 0 or row is None or pre is None:
            return None
        now, before = row.get("perplexity"), pre.get("perplexity")
        if now is None or before is None or now <= factor * before:
            return None
        return (
            f"perplexity {now:.4g} > {factor:g} x pre-edit {before:.4g} after {done} batches "
            f"({row['edits']} edits): eval.stop_perplexity_factor"
        )

    def record(self, adapter, done: int, post_cases: list[dict] | None = None) -> dict:
        """Evaluate at ``done`` finished batches (``post_cases``: the post-edit evaluation,
        already made, at the last point) and append the row; returns it."""
        row: dict = {"batches": done, "edits": sum(len(b) for b in self.batches[:done])}
        is_last = done == len(self.batches)
        if done and self.every and (is_last or done % self.every == 0):
            flat = [r for batch in self.batches[:done] for r in batch]
            edited = [r for i, r in enumerate(flat) if i in self.evaluated]
            if post_cases is None:
                with self.progress.track("evaluation", 1) as update:
                    post_cases = self.dataset.evaluate_run(adapter, edited, progress=update)
            cases = post_cases[: len(edited)]
            first = sum(i in self.evaluated for i in range(len(self.batches[0])))
            row.update(summarise(cases))
            row.update(summarise(cases[:first], prefix="first_batch."))
        if self._general_due(done):
            row.update(self._general_row(adapter))
        if self._perplexity_due(done):
            row["perplexity"] = self.perplexity(adapter)
        fault_point("eval")
        if len(row) > 2:
            self.rows = [r for r in self.rows if r["batches"] != done] + [row]
            results.write_jsonl(self.run_dir, results.EVALS, self.rows)
            if self.tracker is not None:
                self.tracker.log_eval(row, step=row["edits"])
        return row

    def _general_row(self, adapter) -> dict:
        """``general.<task>.<metric>`` for every task, and ``.unparsed`` where the scores are null.

        The bar counts finished tasks and is completed at the end, so it never stays at 0/1.
        """
        ev = self.eval_cfg
        tasks = list(dict.fromkeys(ev.general))
        with self.progress.track("general capability", len(tasks)) as update:

            def finished(name: str, done: int, total: int) -> None:
                if done == total:
                    update(tasks.index(name) + 1)

            scores = evaluate_general(
                adapter,
                tasks,
                n_items=ev.general_items,
                n_shots=ev.general_shots,
                path=ev.general_path,
                progress=finished,
            )
            update(len(tasks))
        row: dict = {}
        for task, values in scores.items():
            row.update({f"general.{task}.{k}": values[k] for k in SCORES})
            if values["accuracy"] is None:
                row[f"general.{task}.unparsed"] = values["unparsed"]
        return row

    def general_summary(self, final_row: dict) -> dict:
        """``general.<task>.<metric>`` and ``perplexity`` after the last batch, ``pre_...`` before the first."""
        keep = lambda k: k.startswith("general.") or k == "perplexity"  # noqa: E731
        out = {k: v for k, v in final_row.items() if keep(k)}
        first = next((r for r in self.rows if r["batches"] == 0), {})
        out.update({f"pre_{k}": v for k, v in first.items() if keep(k)})
        return out
