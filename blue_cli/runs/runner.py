"""The sequential batch-editing loop: one place that composes everything.

checks -> load model -> statistics -> pre-edit evaluation -> for each batch: the
strategy's writes, diagnostics, checkpoint, evaluation points -> the method's final
weights -> post-edit evaluation -> summary. The runner names no dataset, method or
strategy: each comes from its registry.
Every file is written through a temp file and a rename, and a checkpoint after
each batch lets a killed run resume (``resume=true``, same ``hydra.run.dir``) by
replaying the finished batches' writes (checkpoint.py).
"""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from blue_cli.cache import content_key, write_text_atomic
from blue_cli.config.registry import dataset_class
from blue_cli.config.schema import check_run_config
from blue_cli.datasets.records import EditRequest
from blue_cli.editing.session import build_session, seed_everything
from blue_cli.errors import ConfigError, DamagedFileError
from blue_cli.evaluation.summary import summarise
from blue_cli.faults import fault_point
from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.loading import load_model
from blue_cli.progress import NullProgress
from blue_cli.runs import files as results
from blue_cli.runs.checkpoint import Checkpoint
from blue_cli.runs.folder import set_aside_previous_run
from blue_cli.runs.points import EvaluationPoints, check_general_tasks
from blue_cli.runs.tracking import make_tracker

log = logging.getLogger(__name__)


def load_adapter(cfg: DictConfig) -> ModelAdapter:
    m = cfg.model
    adapter = load_model(
        m.source, name=m.name, device=cfg.device, dtype=m.dtype, revision=m.revision, device_map=m.device_map
    )
    bad = [l for l in m.layers if not 0 <= l < adapter.n_layers]
    if bad:
        raise ConfigError(f"model.layers {bad} out of range for '{m.name}' (valid: 0..{adapter.n_layers - 1})")
    return adapter


def batches_of(requests: Sequence[EditRequest], size: int) -> list[list[EditRequest]]:
    return [list(requests[i : i + size]) for i in range(0, len(requests), size)]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_info(cfg: DictConfig) -> dict:
    import transformers

    from blue_cli import __version__

    return {
        "blue_version": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "seed": cfg.seed,
    }


def resume_key(cfg: DictConfig) -> str:
    """What a checkpoint must match to be resumed: the whole config except ``resume``."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("resume", None)
    return content_key(plain)


def run_experiment(cfg: DictConfig, run_dir: Path, progress=None) -> dict:
    """Run the whole experiment described by ``cfg`` into ``run_dir``; returns the summary.

    Everything that can be checked without the model (config values, the dataset and
    its size, general-capability tasks, a checkpoint of another config) is checked
    before the first file of the run folder is written.
    """
    check_run_config(cfg)
    progress = progress or NullProgress()
    run_dir = Path(run_dir)
    dataset = dataset_class(cfg.dataset.name)(cfg.dataset, cfg.eval, seed=cfg.seed)
    requests = dataset.load(cfg.num_edits)
    dataset.warn_missing_prompts(requests)
    check_general_tasks(cfg.eval)
    checkpoint = Checkpoint(run_dir, resume_key(cfg))
    if cfg.resume:
        checkpoint.check()
        results.read_jsonl(run_dir / results.EVALS)  # the run file a resume reads: damaged, it fails here
    else:
        set_aside_previous_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tracker = make_tracker(cfg.get("logger"), run_dir, cfg)
    try:
        summary = _run(cfg, run_dir, progress, dataset, requests, checkpoint, tracker)
        tracker.log_summary(summary)
        return summary
    finally:
        tracker.close()


def _run(cfg, run_dir, progress, dataset, requests, checkpoint, tracker) -> dict:
    """The body of :func:`run_experiment` once the run folder exists."""
    seed_everything(cfg.seed)
    # resolved: the values the run used (batch_size: 3, not ${num_edits}), as the docs promise
    write_text_atomic(run_dir / results.CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    results.write_json(run_dir, results.RUN_INFO, run_info(cfg))
    notes = dataset.prepare()

    adapter = load_adapter(cfg)
    dataset.check_fits(adapter, requests, cfg.context.n_tokens)
    progress.started()
    session = build_session(cfg, adapter, progress=progress, pool=requests)
    results.write_json(run_dir, "context_templates.json", session.groups)

    batches = batches_of(requests, cfg.batch_size)
    points = EvaluationPoints(cfg, dataset, batches, run_dir, progress, tracker)
    evaluated = points.positions
    pre = PreEdit(run_dir, dataset, adapter, [requests[i] for i in evaluated], progress, checkpoint)

    def base_model_and_points(done: int) -> None:
        """At 0 finished batches (the base model): the pre-edit evaluation and evaluation
        point; after each replayed batch of a resumed run, an evaluation point that a kill
        lost (the checkpoint is saved before the point is evaluated)."""
        if done == 0:
            pre.ensure()
            if not points.has(0):
                points.record(adapter, 0)
        elif done < len(batches) and points.due(done) and not points.has(done):
            with session.evaluated_view():
                points.record(adapter, done)

    rows, finished = (
        checkpoint.load(session, batches, progress, on_batch=base_model_and_points) if cfg.resume else ([], False)
    )
    done = len(rows)
    if done == 0:
        points.reset()
        base_model_and_points(0)
    pre_cases, eval_seconds = pre.cases, pre.seconds
    stopped = checkpoint.finish_info.get("stopped") if finished else (points.stop_reason(done) if done else None)
    with progress.track("editing batches", len(batches)) as update:
        update(done)
        for b in range(done, len(batches)):
            if stopped:
                break
            rows.append(session.edit_batch(batches[b], b))
            tracker.log_batch(rows[-1], step=b + 1)
            checkpoint.save(session, rows, total=len(batches))
            fault_point("batch")
            if b + 1 < len(batches) and points.due(b + 1):
                with session.evaluated_view():
                    points.record(adapter, b + 1)
                stopped = points.stop_reason(b + 1)
            update(b + 1)
    if stopped:
        # The stop rule ended the stream: what follows sees only the batches edited.
        log.warning("stopped early: %s", stopped)
        batches = batches[: len(rows)]
        requests = [r for batch in batches for r in batch]
        pre.cases = pre.cases[: sum(i < len(requests) for i in evaluated)]
        pre_cases = pre.cases
        points.batches = batches
    if finished:
        finish_info = checkpoint.finish_info
    else:
        finish_info = session.apply_evaluated_weights()
        if stopped:
            finish_info = {**finish_info, "stopped": stopped}
        checkpoint.save(session, rows, finished=True, info=finish_info, total=len(batches))

    t_eval = time.perf_counter()
    post_cases = _evaluate(
        dataset, adapter, [requests[i] for i in evaluated if i < len(requests)], progress, "post-edit evaluation"
    )
    eval_seconds += time.perf_counter() - t_eval
    results.write_jsonl(
        run_dir,
        results.CASES,
        [
            {**post, **{f"pre_{k}": v for k, v in pre.items() if k != "case_id"}}
            for pre, post in zip(pre_cases, post_cases)
        ],
    )
    final_row = points.record(adapter, len(batches), post_cases=post_cases)
    summary = build_summary(pre_cases, post_cases, rows, session.cov_seconds, finish_info)
    summary.update(points.general_summary(final_row))
    summary.update(notes)
    summary["evaluation_seconds"] = eval_seconds  # pre- and post-edit dataset evaluation
    summary["edit_seconds"] = sum(r.get("edit_seconds", 0.0) for r in rows)
    summary.update(edit_cost(rows))
    if "consistency_unavailable" in notes:
        summary["consistency"] = None  # unavailable, never 0
    summary["stats_counts"] = session.covariances.summary()
    summary["stopped"] = finish_info.get("stopped")  # the stop rule's one line, or null: ran to the end
    summary.update(
        model=cfg.model.name,
        method=cfg.method.name,
        strategy=cfg.strategy.name,
        dataset=cfg.dataset.name,
        num_edits=len(requests),
        evaluated_cases=len(post_cases),
        batch_size=cfg.batch_size,
        written_layers=session.written,
    )
    results.write_json(run_dir, results.SUMMARY, summary)
    return summary


class PreEdit:
    """The pre-edit evaluation (cases_pre.jsonl): computed on the base model once, reused on
    resume only if it is the file the run wrote (its digest is in the checkpoint) and holds
    the run's cases in order; anything else is evaluated again, on the base model."""

    def __init__(self, run_dir: Path, dataset, adapter, requests, progress, checkpoint: Checkpoint):
        self.path = Path(run_dir) / results.PRE_CASES
        self.dataset, self.adapter, self.requests, self.progress = dataset, adapter, requests, progress
        self.checkpoint = checkpoint
        self.cases: list[dict] = []
        self.seconds = 0.0

    def ensure(self) -> None:
        saved = self._saved()
        if saved is not None:
            self.cases = saved
            self.dataset.remember_pre_edit(saved)
        else:
            start = time.perf_counter()
            self.cases = _evaluate(
                self.dataset, self.adapter, self.requests, self.progress, "pre-edit evaluation", pre_edit=True
            )
            results.write_jsonl(self.path.parent, self.path.name, self.cases)
            self.seconds = time.perf_counter() - start
        self.checkpoint.pre_cases_digest = results.file_digest(self.path)

    def _saved(self) -> list[dict] | None:
        recorded = self.checkpoint.pre_cases_digest
        if recorded is None or not self.path.is_file() or results.file_digest(self.path) != recorded:
            return None
        try:
            cases = results.read_jsonl(self.path)
        except DamagedFileError:
            return None
        if [c.get("case_id") for c in cases] != [r.case_id for r in self.requests]:
            return None
        return cases


def _evaluate(dataset, adapter, requests, progress, label, pre_edit: bool = False) -> list[dict]:
    with progress.track(label, 1) as update:
        return dataset.evaluate_run(adapter, requests, progress=update, pre_edit=pre_edit)


def build_summary(pre_cases, post_cases, all_rows, cov_seconds, finish_info) -> dict:
    """Top-level numbers: post and pre rates, target_logprob_gain and write_error
    (diagnostics over the batches that were edited, not those skipped for NaN).

    ``target_logprob_gain`` is the mean over cases of post minus pre summed log P(target_new)
    on the rewrite prompt; the per-case ``rewrite_*`` numbers stay in cases.jsonl only.
    """
    rows = [r for r in all_rows if "skipped" not in r] or [
        {
            "write_error": float("nan"),
            "z_logprob_gain": float("nan"),
            "edit_logprob_gain": float("nan"),
            "edit_seconds": 0.0,
        }
    ]
    post = summarise(post_cases)
    pre = summarise(pre_cases, prefix="pre_")
    gain = [
        _logprob_sum_new(p) - _logprob_sum_new(q)
        for p, q in zip(post_cases, pre_cases)
        if _logprob_sum_new(p) is not None and _logprob_sum_new(q) is not None
    ]
    edit_secs = sorted(r["edit_seconds"] for r in rows)
    summary = {k: post[k] for k in post if not k.startswith("rewrite_")}
    # the cases without a rate are the same before and after: counted once, in the post keys
    summary.update({k: pre[k] for k in pre if not k.startswith("pre_rewrite_") and not k.endswith("_cases_without")})
    if gain:
        summary["target_logprob_gain"] = sum(gain) / len(gain)
    summary["write_error"] = sum(r["write_error"] for r in rows) / len(rows)
    summary["z_logprob_gain"] = sum(r["z_logprob_gain"] for r in rows) / len(rows)
    summary["edit_logprob_gain"] = sum(r["edit_logprob_gain"] for r in rows) / len(rows)
    summary["seconds_per_batch"] = edit_secs[len(edit_secs) // 2]
    summary["covariance_seconds"] = cov_seconds
    summary["skipped_batches"] = sum("skipped" in r for r in all_rows)
    summary.update(finish_info)
    return summary


def edit_cost(rows: Sequence[dict]) -> dict:
    """The efficiency protocol's numbers (the BLUE paper's Fig. 12 and Table 8): seconds per
    edit over the edited batches (target optimisation, keys, solves and writes; no evaluation),
    and the most device memory one batch's edit held (CUDA only, else null)."""
    edited = [r for r in rows if "skipped" not in r]
    edits = sum(r.get("edits", 0) for r in edited)
    peaks = [r["edit_peak_memory_bytes"] for r in edited if r.get("edit_peak_memory_bytes") is not None]
    return {
        "seconds_per_edit": sum(r.get("edit_seconds", 0.0) for r in edited) / edits if edits else None,
        "edit_peak_memory_bytes": max(peaks) if peaks else None,
    }


def _logprob_sum_new(case: dict) -> float | None:
    """A case's summed log P(target_new | rewrite prompt), or None for a dataset without it.

    cases_pre.jsonl of a run started before the per-token means were added (and resumed
    after an upgrade) names the sum ``rewrite_logprob_new``; it is the same number.
    """
    return case.get("rewrite_logprob_sum_new", case.get("rewrite_logprob_new"))
