"""The sequential batch-editing loop: one place that composes everything.

load model -> statistics -> pre-edit evaluation -> for each batch: targets, writes,
diagnostics, checkpoint -> method finish -> post-edit evaluation -> summary.
Every file is written through a temp file and a rename, and a checkpoint after
each batch lets a killed run resume (``resume=true``, same ``hydra.run.dir``).
"""

from __future__ import annotations

import logging
import platform
import random
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from blue_cli.cache import atomic_path, content_key, write_json_atomic, write_text_atomic
from blue_cli.config import check_run_config
from blue_cli.data.counterfact import load_counterfact
from blue_cli.data.records import EditRequest
from blue_cli.editing.context import context_templates
from blue_cli.editing.covariance import CovarianceStore, StatsSettings
from blue_cli.editing.keys import values_at_subject
from blue_cli.errors import ConfigError
from blue_cli.evaluation.counterfact import evaluate_counterfact, rewrite_prompt, summarise
from blue_cli.evaluation.scoring import score_targets
from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.loading import load_model
from blue_cli.models.tokens import subject_last_index
from blue_cli.registry import method_class, strategy_class
from blue_cli.reporting import results

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_INFO = "checkpoint.json"


class NullProgress:
    """A progress sink that shows nothing (tests, library use)."""

    @contextmanager
    def track(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        yield lambda done, new_total=None: None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def stats_settings(cfg: DictConfig) -> StatsSettings:
    s = cfg.stats
    return StatsSettings(corpus=s.corpus, samples=s.samples, max_length=s.max_length, batch_tokens=s.batch_tokens)


def load_adapter(cfg: DictConfig) -> ModelAdapter:
    m = cfg.model
    adapter = load_model(m.source, name=m.name, device=cfg.device, dtype=m.dtype, revision=m.revision, device_map=m.device_map)
    bad = [l for l in m.layers if not 0 <= l < adapter.n_layers]
    if bad:
        raise ConfigError(f"model.layers {bad} out of range for '{m.name}' (valid: 0..{adapter.n_layers - 1})")
    return adapter


def batches_of(requests: Sequence[EditRequest], size: int) -> list[list[EditRequest]]:
    return [list(requests[i : i + size]) for i in range(0, len(requests), size)]


@contextmanager
def swapped_weights(adapter: ModelAdapter, weights: dict[int, torch.Tensor]) -> Iterator[None]:
    """Temporarily put other rewrite matrices in place (e.g. the pre-batch ones)."""
    current = {l: adapter.rewrite_weight(l).detach().clone() for l in weights}
    try:
        for l, w in weights.items():
            adapter.set_rewrite(l, w)
        yield
    finally:
        for l, w in current.items():
            adapter.set_rewrite(l, w)


def _new_logprobs(adapter: ModelAdapter, requests: Sequence[EditRequest]) -> torch.Tensor:
    scores = score_targets(adapter, [rewrite_prompt(r) for r in requests], [r.target_new for r in requests], chunk=len(requests))
    return torch.tensor([s.logprob for s in scores], dtype=torch.float64)


def batch_diagnostics(
    adapter: ModelAdapter,
    method,
    requests: Sequence[EditRequest],
    trace,
    before: dict[int, torch.Tensor],
    h_before: torch.Tensor,
    lp_before: torch.Tensor,
) -> dict[str, float]:
    """How well the weights delivered the target (the BLUE paper's residual-error analysis).

    write_error: ||z - h_after|| / ||z - h_before|| at the last critical layer's write point,
    averaged over requests (0 = the edited weights produce exactly the asked-for state).
    target_gain: mean gain in log P(target_new | rewrite prompt) if the pre-batch model's
    state at that point were replaced by z; edit_gain: the gain the edited model gives.
    """
    final = trace.final
    point, layer = method.write_point, final.layer
    z = final.z(point).T  # (d x n)
    h_after = values_at_subject(adapter, requests, layer, point)
    asked = (z - h_before).norm(dim=0)
    write_error = ((z - h_after).norm(dim=0) / asked.clamp_min(1e-12)).mean()
    lp_after = _new_logprobs(adapter, requests)
    positions = [subject_last_index(adapter.tok, r.prompt, r.subject) for r in requests]
    with swapped_weights(adapter, before), adapter.inject(layer, (z - h_before).T, list(range(len(requests))), positions, point):
        lp_target = _new_logprobs(adapter, requests)
    return {
        "write_error": float(write_error),
        "target_gain": float((lp_target - lp_before).mean()),
        "edit_gain": float((lp_after - lp_before).mean()),
        "target_steps": [float(sum(t.steps) / len(t.steps)) for t in trace.targets],
        "key_fit_error": [w.key_fit_error for w in trace.writes],
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5)
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


class Checkpoint:
    """The written layers' weights and the method state after each finished batch.

    Whole matrices, not differences, so a resumed run continues bit-identically.
    """

    def __init__(self, run_dir: Path, config_key: str):
        self.run_dir = Path(run_dir)
        self.config_key = config_key

    def save(self, done: int, adapter: ModelAdapter, originals: dict[int, torch.Tensor], method, batch_rows: list[dict]) -> None:
        tensors = {f"weight.{l}": adapter.rewrite_weight(l).detach().cpu().contiguous() for l in originals}
        tensors.update({k: v.contiguous() for k, v in method.state_dict().items()})
        with atomic_path(self.run_dir / CHECKPOINT) as tmp:
            save_file(tensors, str(tmp))
        write_json_atomic(self.run_dir / CHECKPOINT_INFO, {"batches_done": done, "config_key": self.config_key})
        results.write_jsonl(self.run_dir, results.BATCHES, batch_rows)

    def load(self, adapter: ModelAdapter, originals: dict[int, torch.Tensor], method) -> tuple[int, list[dict]]:
        info_path = self.run_dir / CHECKPOINT_INFO
        if not info_path.exists() or not (self.run_dir / CHECKPOINT).exists():
            return 0, []
        import json

        info = json.loads(info_path.read_text())
        if info.get("config_key") != self.config_key:
            raise ConfigError(
                f"'{self.run_dir}' holds a checkpoint of a different config "
                "(use a new hydra.run.dir, or resume=false to start this folder over)"
            )
        done = info["batches_done"]
        tensors = load_file(str(self.run_dir / CHECKPOINT))
        for l in originals:
            adapter.set_rewrite(l, tensors[f"weight.{l}"])
        method.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("weight.")})
        rows = results.read_jsonl(self.run_dir / results.BATCHES)[:done]
        log.info("resuming after %d finished batches", done)
        return done, rows


def resume_key(cfg: DictConfig) -> str:
    """What a checkpoint must match to be resumed: the whole config except ``resume``."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("resume", None)
    return content_key(plain)


def run_experiment(cfg: DictConfig, run_dir: Path, progress=None) -> dict:
    """Run the whole experiment described by ``cfg`` into ``run_dir``; returns the summary."""
    check_run_config(cfg)
    progress = progress or NullProgress()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    write_text_atomic(run_dir / results.CONFIG, OmegaConf.to_yaml(cfg))
    results.write_json(run_dir, results.RUN_INFO, run_info(cfg))

    adapter = load_adapter(cfg)
    requests = load_counterfact(cfg.dataset.path, offset=cfg.dataset.offset, limit=cfg.num_edits, url=cfg.dataset.url)
    strategy = strategy_class(cfg.strategy.name)(cfg.strategy)
    critical = list(cfg.model.layers)
    written = strategy.written_layers(critical)

    stats = CovarianceStore(adapter, stats_settings(cfg))
    t0 = time.perf_counter()
    if stats.missing(written):
        with progress.track("covariance statistics", 1) as update:
            stats.ensure(written, progress=update)
    cov_seconds = time.perf_counter() - t0
    method = method_class(cfg.method.name)(cfg.method, adapter, stats, written)
    method.prepare()

    seed_everything(cfg.seed)
    groups = context_templates(adapter, n_prefixes=cfg.context.n_prefixes, n_tokens=cfg.context.n_tokens, top_k=cfg.context.top_k, seed=cfg.seed)
    results.write_json(run_dir, "context_templates.json", groups)

    pre_cases = _evaluate(adapter, requests, progress, "pre-edit evaluation")
    results.write_jsonl(run_dir, results.PRE_CASES, pre_cases)

    originals = {l: adapter.rewrite_weight(l).detach().clone() for l in written}
    checkpoint = Checkpoint(run_dir, resume_key(cfg))
    batches = batches_of(requests, cfg.batch_size)
    done, rows = checkpoint.load(adapter, originals, method) if cfg.resume else (0, [])
    eval_rows = results.read_jsonl(run_dir / results.EVALS) if done else []
    with progress.track("editing batches", len(batches)) as update:
        update(done)
        for b in range(done, len(batches)):
            rows.append(_edit_batch(adapter, method, strategy, batches[b], groups, critical, written, b))
            checkpoint.save(b + 1, adapter, originals, method, rows)
            if cfg.eval_every and (b + 1) % cfg.eval_every == 0 and b + 1 < len(batches):
                edited = [r for batch in batches[: b + 1] for r in batch]
                eval_rows.append({"batches": b + 1, "edits": len(edited), **summarise(_evaluate(adapter, edited, progress, "evaluation"))})
                results.write_jsonl(run_dir, results.EVALS, eval_rows)
            update(b + 1)
    finish_info = method.finish(originals)

    post_cases = _evaluate(adapter, requests, progress, "post-edit evaluation")
    results.write_jsonl(run_dir, results.CASES, [{**post, **{f"pre_{k}": v for k, v in pre.items() if k != "case_id"}} for pre, post in zip(pre_cases, post_cases)])
    summary = build_summary(pre_cases, post_cases, rows, cov_seconds, finish_info)
    summary.update(model=cfg.model.name, method=cfg.method.name, strategy=cfg.strategy.name, dataset=cfg.dataset.name, num_edits=len(requests), batch_size=cfg.batch_size, written_layers=written)
    results.write_json(run_dir, results.SUMMARY, summary)
    if cfg.eval_every:
        eval_rows.append({"batches": len(batches), "edits": len(requests), **summarise(post_cases)})
        results.write_jsonl(run_dir, results.EVALS, eval_rows)
    return summary


def _evaluate(adapter, requests, progress, label) -> list[dict]:
    with progress.track(label, 1) as update:
        return evaluate_counterfact(adapter, requests, progress=update)


def _edit_batch(adapter, method, strategy, requests, groups, critical, written, index) -> dict:
    start = time.perf_counter()
    before = {l: adapter.rewrite_weight(l).detach().clone() for l in written}
    h_before = values_at_subject(adapter, requests, critical[-1], method.write_point)
    lp_before = _new_logprobs(adapter, requests)
    t_edit = time.perf_counter()
    trace = strategy.edit_batch(method, requests, groups, critical)
    edit_seconds = time.perf_counter() - t_edit
    with torch.no_grad():
        diag = batch_diagnostics(adapter, method, requests, trace, before, h_before, lp_before)
    return {
        "batch": index,
        "edits": len(requests),
        "case_ids": [r.case_id for r in requests],
        "seconds": time.perf_counter() - start,
        "edit_seconds": edit_seconds,
        **diag,
    }


def build_summary(pre_cases, post_cases, rows, cov_seconds, finish_info) -> dict:
    """Top-level numbers: post and pre rates, target_logprob_gain and write_error."""
    post = summarise(post_cases)
    pre = summarise(pre_cases, prefix="pre_")
    gain = [p["rewrite_logprob_new"] - q["rewrite_logprob_new"] for p, q in zip(post_cases, pre_cases)]
    edit_secs = sorted(r["edit_seconds"] for r in rows)
    summary = {k: post[k] for k in post if not k.startswith("rewrite_")}
    summary.update({k: pre[k] for k in pre if not k.startswith("pre_rewrite_")})
    summary["target_logprob_gain"] = sum(gain) / len(gain)
    summary["write_error"] = sum(r["write_error"] for r in rows) / len(rows)
    summary["target_gain"] = sum(r["target_gain"] for r in rows) / len(rows)
    summary["edit_gain"] = sum(r["edit_gain"] for r in rows) / len(rows)
    summary["seconds_per_batch"] = edit_secs[len(edit_secs) // 2]
    summary["covariance_seconds"] = cov_seconds
    summary.update(finish_info)
    return summary
