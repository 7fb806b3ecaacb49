"""Optional experiment tracking: mirror per-batch diagnostics, evaluation points and the
summary to TensorBoard, Weights & Biases or MLflow (``logger=...``).

The run folder's JSON files stay the record of a run; a tracker is only a live view of
the same numbers. Each backend is an optional extra and is imported only when chosen,
so a plain install never pulls it in.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from numbers import Number
from pathlib import Path
from typing import Any

from blue_cli.config.schema import check_logger, missing_extra

log = logging.getLogger(__name__)


def flatten_scalars(row: Mapping[str, Any], group: str = "") -> dict[str, float]:
    """Numeric leaves of ``row`` as ``{"a.b.0": float}``; strings, None and non-finite
    numbers are dropped because scalar dashboards cannot plot them. ``group`` prefixes
    every name as ``group/name`` (one dashboard section per kind of row)."""
    out: dict[str, float] = {}

    def walk(value: Any, name: str) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{name}.{i}" if name else str(i))
        elif isinstance(value, Number) and not isinstance(value, complex):
            x = float(value)
            if math.isfinite(x):
                out[name] = x

    walk(row, "")
    return {f"{group}/{k}" if group else k: v for k, v in out.items()}


class Tracker:
    """The interface the runner calls; the base class does nothing (``logger=none``)."""

    def log_batch(self, row: dict, step: int) -> None:
        """Per-batch diagnostics; ``step`` is the number of finished batches."""

    def log_eval(self, row: dict, step: int) -> None:
        """One evaluation point; ``step`` is the number of edits made so far."""

    def log_summary(self, summary: dict) -> None:
        """The final summary of the run."""

    def close(self) -> None:
        """Flush and release the backend; safe to call twice."""


class NullTracker(Tracker):
    """The default: no tracking, no files, no imports."""


class TensorBoardTracker(Tracker):
    """Event files under ``<run_dir>/tensorboard`` (``tensorboard --logdir <run_dir>``).

    Written with tensorboard's own event writer rather than ``torch.utils.tensorboard``:
    the records are the same scalar summaries, and reporting stays free of torch.
    """

    def __init__(self, run_dir: Path | str):
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError as exc:
            raise missing_extra("tensorboard") from exc
        self._event, self._summary = Event, Summary
        self.log_dir = Path(run_dir) / "tensorboard"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = EventFileWriter(str(self.log_dir))
        self._closed = False

    def _write(self, group: str, row: dict, step: int) -> None:
        values = [
            self._summary.Value(tag=name, simple_value=value) for name, value in flatten_scalars(row, group).items()
        ]
        if values:
            event = self._event(wall_time=time.time(), step=int(step), summary=self._summary(value=values))
            self.writer.add_event(event)

    def log_batch(self, row: dict, step: int) -> None:
        self._write("batch", row, step)

    def log_eval(self, row: dict, step: int) -> None:
        self._write("eval", row, step)

    def log_summary(self, summary: dict) -> None:
        self._write("summary", summary, 0)

    def close(self) -> None:
        if not self._closed:
            self.writer.flush()
            self.writer.close()
            self._closed = True


class WandbTracker(Tracker):
    """A Weights & Biases run whose local files live in the run folder."""

    def __init__(self, run_dir: Path | str, project: str = "blue", config: dict | None = None):
        try:
            import wandb
        except ImportError as exc:
            raise missing_extra("wandb") from exc
        self._wandb = wandb
        run_dir = Path(run_dir)
        self.run = wandb.init(project=project, name=run_dir.name, dir=str(run_dir), config=config or {})
        # Batches and evaluation points count different things; give each its own x-axis.
        self.run.define_metric("batch/step")
        self.run.define_metric("eval/edits")
        self.run.define_metric("batch/*", step_metric="batch/step")
        self.run.define_metric("eval/*", step_metric="eval/edits")

    def log_batch(self, row: dict, step: int) -> None:
        self.run.log({"batch/step": step, **flatten_scalars(row, "batch")})

    def log_eval(self, row: dict, step: int) -> None:
        self.run.log({"eval/edits": step, **flatten_scalars(row, "eval")})

    def log_summary(self, summary: dict) -> None:
        self.run.summary.update(flatten_scalars(summary))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class MlflowTracker(Tracker):
    """An MLflow run; without ``MLFLOW_TRACKING_URI`` it is stored in ``<run_dir>/mlruns``."""

    def __init__(self, run_dir: Path | str, experiment: str = "blue", config: dict | None = None):
        try:
            import mlflow
        except ImportError as exc:
            raise missing_extra("mlflow") from exc
        self._mlflow = mlflow
        run_dir = Path(run_dir)
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_dir.name)
        if config:
            mlflow.log_dict(config, "config.json")

    def _write(self, group: str, row: dict, step: int) -> None:
        self._mlflow.log_metrics(flatten_scalars(row, group), step=step)

    def log_batch(self, row: dict, step: int) -> None:
        self._write("batch", row, step)

    def log_eval(self, row: dict, step: int) -> None:
        self._write("eval", row, step)

    def log_summary(self, summary: dict) -> None:
        self._write("summary", summary, 0)

    def close(self) -> None:
        if self.run is not None:
            self._mlflow.end_run()
            self.run = None


def make_tracker(name: str | None, run_dir: Path | str, cfg: Any = None) -> Tracker:
    """The tracker for ``logger=<name>``; ``cfg`` (the run config) is attached to the
    wandb/mlflow run so dashboards can filter by it."""
    check_logger(name)
    name = "none" if name is None else str(name).lower()
    if name == "none":
        return NullTracker()
    if name == "tensorboard":
        return TensorBoardTracker(run_dir)
    config = _plain_config(cfg)
    if name == "wandb":
        return WandbTracker(run_dir, config=config)
    return MlflowTracker(run_dir, config=config)


def _plain_config(cfg: Any) -> dict | None:
    if cfg is None:
        return None
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # an unresolvable interpolation must not stop the run
        log.warning("could not attach the config to the tracker: %s", exc)
        return None
    return dict(cfg) if isinstance(cfg, Mapping) else None
