"""Rich rendering of a run's memory and disk plan (``blue plan``)."""

from __future__ import annotations

from rich.table import Table

PHASES = ("statistics", "targets", "solve")
TITLES = {
    "resident": "resident on the device",
    "statistics": "statistics pass (first run on a model only)",
    "targets": "target optimisation",
    "solve": "solve",
    "disk": "run folder on disk",
    "host": "host",
}


def human_bytes(n: float) -> str:
    """Decimal units, as the plan computes them: 1 GB = 1e9 bytes."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def plan_table(plan, title: str) -> Table:
    """One row per item, grouped by phase, then the device peak of each phase."""
    table = Table(title=title, title_justify="left")
    table.add_column("phase")
    table.add_column("item")
    table.add_column("size", justify="right")
    table.add_column("detail")
    for phase in ("resident", *PHASES, "disk", "host"):
        for k, item in enumerate(i for i in plan.items if i.phase == phase):
            table.add_row(TITLES[phase] if k == 0 else "", item.name, human_bytes(item.bytes), item.note)
        if phase != "resident" and phase in PHASES:
            table.add_row(
                "",
                f"[bold]device peak while {phase}[/bold]",
                f"[bold]{human_bytes(plan.phase_peak(phase))}[/bold]",
                "resident + this phase",
            )
        table.add_section()
    return table


def plan_verdict(plan, chunk_that_fits: int | None) -> str:
    """The closing line: the peak, and whether it fits the budget (and with which chunk)."""
    text = (
        f"peak per device: {human_bytes(plan.peak)} ({plan.peak_phase}); "
        f"with statistics cached: {human_bytes(plan.edit_peak)}"
    )
    if plan.budget is None:
        return text
    if plan.fits:
        return f"{text}; fits {human_bytes(plan.budget)}"
    hint = ""
    if chunk_that_fits:
        hint = f"; method.target.chunk={chunk_that_fits} brings targets under it"
        if plan.phase_peak("statistics") > plan.budget:
            hint += " (the statistics pass still does not fit: compute them on a larger card with blue stats)"
    elif chunk_that_fits == 0:
        hint = "; no target chunk fits: the resident state alone is too large"
    return f"{text}; does NOT fit {human_bytes(plan.budget)}{hint}"


def human_time(seconds: float) -> str:
    for unit, scale in (("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds * 1000:.1f} ms"


def compute_table(phases, card, seconds: list[float]) -> Table:
    """FLOPs of each phase and the ``seconds`` they take at ``card``'s peak (lower bounds)."""
    table = Table(title=f"compute at the datasheet peak of an {card.name} (lower bounds)", title_justify="left")
    for column, justify in (
        ("phase", "left"),
        ("TFLOP", "right"),
        ("dtype", "left"),
        ("at peak", "right"),
        ("detail", "left"),
    ):
        table.add_column(column, justify=justify)
    at_peak = dict(zip((p.name for p in phases), seconds))
    for once in (False, True):
        for p in (p for p in phases if p.per_batch != once):
            table.add_row(p.name, f"{p.flops / 1e12:.2f}", p.dtype, human_time(at_peak[p.name]), p.note)
        table.add_section()
    return table


def compute_verdict(card, batches: int, edit: float, stats: float) -> str:
    """``edit``: seconds of the run's batches at peak; ``stats``: of the statistics pass per 100M tokens."""
    return (
        f"at peak on an {card.name}: at least {human_time(edit / batches)} per batch, {human_time(edit)} for "
        f"{batches} batches; the statistics pass (once per model) at least {human_time(stats)} per 100M tokens"
    )
