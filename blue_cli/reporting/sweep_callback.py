"""A Hydra callback that writes a sweep's comparison report when the sweep ends.

Registered in ``conf/config.yaml`` under ``hydra.callbacks``. Hydra instantiates
callbacks from a ``_target_`` string (STYLE.md prefers registry names, but Hydra
offers no other hook), so this module's path is part of the config: keep it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from blue_cli.errors import BlueError

log = logging.getLogger(__name__)

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"


def write_sweep_report(sweep_dir: Path, plots_dir: Path | None = None) -> list[Path]:
    """Write report.md, report.csv and the figures (``figures/``, PNG and PDF) of the runs under ``sweep_dir``.

    A sweep comparing ``spread`` with other strategies gets the relative-change
    columns against ``strategy=spread`` (see :func:`default_baseline`).

    Returns the written paths. Raises :class:`ReportError` when no job folder holds
    a summary (every job failed).
    """
    from blue_cli.cache import write_text_atomic
    from blue_cli.reporting.compare import add_case_spread, compare, default_baseline, load_runs
    from blue_cli.reporting.plots import write_figures
    from blue_cli.reporting.render import to_csv, to_markdown

    sweep_dir = Path(sweep_dir)
    runs = load_runs([sweep_dir])
    comparison = add_case_spread(compare(runs, default_baseline(runs)), runs)
    written = [sweep_dir / REPORT_MD, sweep_dir / REPORT_CSV]
    write_text_atomic(written[0], to_markdown(comparison))
    write_text_atomic(written[1], to_csv(comparison))
    figures, notes = write_figures(runs, plots_dir or sweep_dir)
    for note in notes:
        log.info("figures: %s", note)
    return written + figures


class SweepReport(Callback):
    """On the end of a multirun, write the comparison report and plots into the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            written = write_sweep_report(sweep_dir)
        except BlueError as exc:
            # A sweep whose jobs all failed has nothing to compare; the jobs' own errors
            # were already printed, so this is a note, not a second failure.
            log.warning("no sweep report: %s", exc)
            return
        log.info("sweep report: %s (%d files)", sweep_dir / REPORT_MD, len(written))
