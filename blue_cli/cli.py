"""The ``blue`` command: Typer commands in front of one Hydra entry point."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer  # noqa: E402

from blue_cli.errors import BlueError  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Locate-then-edit knowledge editing experiments.")

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _fail(exc: BlueError) -> None:
    from blue_cli.reporting.console import err_console

    err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _hydra_job(cfg) -> None:
    """The body of every Hydra job (single run or one job of a sweep)."""
    from hydra.core.hydra_config import HydraConfig

    from blue_cli.reporting.console import RichProgress, show_run
    from blue_cli.reporting.results import BATCHES, read_jsonl
    from blue_cli.runner import run_experiment

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run_experiment(cfg, run_dir, progress=RichProgress())
    except BlueError as exc:
        from blue_cli.reporting.console import err_console

        err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        from blue_cli.reporting.console import err_console

        err_console.print(
            f"[yellow]interrupted:[/yellow] finished batches are saved in {run_dir}; "
            f"rerun with hydra.run.dir={run_dir} to resume",
            highlight=False,
            soft_wrap=True,
        )
        raise SystemExit(130) from None
    show_run(run_dir, summary, read_jsonl(run_dir / BATCHES))


def run_hydra(args: list[str]) -> None:
    """Hand ``args`` to Hydra's own main (so -m sweeps, launchers and run folders work)."""
    import hydra

    from blue_cli.config import conf_dir, register_configs

    register_configs()
    main = hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(_hydra_job)
    saved = sys.argv
    sys.argv = ["blue", *args]
    try:
        main()
    finally:
        sys.argv = saved


@app.command(context_settings=PASS_THROUGH)
def edit(ctx: typer.Context) -> None:
    """Run sequential editing + evaluation: blue edit [-m] [--cfg job] [group=choice ...] [key=value ...]."""
    from blue_cli.overrides import validate_overrides

    args = list(ctx.args)
    if any(a in ("--help", "-h", "--hydra-help") for a in args):
        run_hydra(args)
        return
    try:
        validate_overrides(args)
    except BlueError as exc:
        _fail(exc)
    run_hydra(args)


@app.command(name="list")
def list_choices() -> None:
    """Show the available models, datasets, methods and strategies."""
    from rich.table import Table

    from blue_cli.config import GROUPS, group_choices
    from blue_cli.reporting.console import console

    table = Table(title="config groups (use as group=choice)")
    table.add_column("group")
    table.add_column("choices")
    for group in GROUPS:
        table.add_row(group, ", ".join(group_choices(group)))
    console.print(table)


@app.command(context_settings=PASS_THROUGH)
def stats(ctx: typer.Context) -> None:
    """Precompute (and cache) the covariance statistics a run would need: blue stats [overrides]."""
    from blue_cli.editing.covariance import CovarianceStore
    from blue_cli.overrides import compose_config
    from blue_cli.registry import strategy_class
    from blue_cli.reporting.console import RichProgress, console
    from blue_cli.runner import load_adapter, stats_settings

    try:
        cfg = compose_config(list(ctx.args))
        adapter = load_adapter(cfg)
        layers = strategy_class(cfg.strategy.name)(cfg.strategy).written_layers(list(cfg.model.layers))
        store = CovarianceStore(adapter, stats_settings(cfg))
        todo = store.missing(layers)
        if todo:
            with RichProgress().track(f"statistics for layers {todo}", 1) as update:
                store.ensure(layers, progress=update)
    except BlueError as exc:
        _fail(exc)
    for layer in layers:
        console.print(f"layer {layer}: {store.path(layer)}", soft_wrap=True, highlight=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def plan(
    ctx: typer.Context,
    gpu_memory: str = typer.Option(None, "--gpu-memory", help="device memory to fit, e.g. 48GB (decimal) or 80GiB"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON instead of a table"),
) -> None:
    """The memory and disk plan of a run, from the model's shape (no download): blue plan [overrides] [--gpu-memory 48GB]."""
    import json

    from blue_cli.overrides import compose_config
    from blue_cli.plan import largest_chunk, model_shape, make_plan, parse_size, run_facts
    from blue_cli.reporting.console import console
    from blue_cli.reporting.plan_table import plan_table, plan_verdict

    try:
        budget = parse_size(gpu_memory) if gpu_memory is not None else None
        cfg = compose_config(list(ctx.args))
        shape, facts = model_shape(cfg.model), run_facts(cfg)
        result = make_plan(shape, facts, budget)
        chunk = largest_chunk(shape, facts, budget) if budget is not None and not result.fits else None
    except BlueError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({**result.as_dict(), "largest_chunk_that_fits": chunk}, indent=2))
        return
    title = (f"{cfg.model.name} {facts.method}+{facts.strategy}: batch {facts.batch_size}, {facts.num_edits} edits, "
             f"{facts.device} {facts.model_dtype}, state {facts.state_dtype}, written layers {list(facts.written)}")
    console.print(plan_table(result, title))
    console.print(plan_verdict(result, chunk), soft_wrap=True, highlight=False)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run folder written by blue edit")) -> None:
    """Show a finished run's tables again from its JSON files; a sweep folder gives one row per run."""
    from blue_cli.reporting.console import console, show_run, sweep_table
    from blue_cli.reporting.results import BATCHES, SUMMARY, read_jsonl, read_summary

    if (run_dir / SUMMARY).is_file():
        show_run(run_dir, read_summary(run_dir), read_jsonl(run_dir / BATCHES))
        return
    runs = sorted(p for p in run_dir.glob("*") if (p / SUMMARY).is_file()) if run_dir.is_dir() else []
    if not runs:
        _fail(BlueError(f"no {SUMMARY} in '{run_dir}' or its subfolders (give a finished run or sweep folder under outputs/)"))
    console.print(sweep_table([(p.name, read_summary(p)) for p in runs]))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
