"""A ``blue locate`` folder: its settings, one trace file per fact, and ``locate.json``.

Each fact's traces are written as soon as they are computed (``traces/<source>-<id>.json``,
through a temp file and a rename), so a rerun into the same folder with the same settings
traces only the facts it lacks; the settings the traces depend on are kept in
``settings.json``, and a folder holding traces of other settings is refused. ``locate.json``
is rewritten from the trace files at the end of every run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from blue_cli.cache import write_json_atomic
from blue_cli.datasets.counterfact.records import load_counterfact
from blue_cli.datasets.files import BUNDLED
from blue_cli.errors import ConfigError, DataError, RunFolderError
from blue_cli.locate.facts import SOURCES, EncodedFact, Fact, counterfact_facts, known_facts, load_knowns
from blue_cli.locate.summary import TOKEN_GROUPS, TraceTable, average_effects, suggestion
from blue_cli.locate.tracing import DEFAULT_WINDOWS, KINDS, embedding_std, trace_fact
from blue_cli.models.adapter import ModelAdapter
from blue_cli.progress import NullProgress

log = logging.getLogger(__name__)

SETTINGS = "settings.json"
LOCATE = "locate.json"
TRACES = "traces"
FORMAT = 1  # of the trace files: a change makes older folders refuse to resume


@dataclass(frozen=True)
class LocateSettings:
    """What ``blue locate`` traces and how (see docs/locate.md).

    ``facts``: how many known facts; ``samples``: noise draws per fact; ``noise``: the noise's
    std in units of the embedding matrix's std (ROME: 3); ``window`` / ``hidden_window``: layers
    restored around each layer for mlp and attn / for hidden states (ROME: 10 / 1); ``span``:
    consecutive layers in the suggestion; ``sources``: where facts come from, in order;
    ``max_rows``: rows per forward (speed only).
    """

    facts: int = 50
    samples: int = 10
    noise: float = 3.0
    window: int = DEFAULT_WINDOWS["mlp"]
    hidden_window: int = DEFAULT_WINDOWS["hidden"]
    kinds: tuple[str, ...] = tuple(KINDS)
    span: int = 5
    seed: int = 0
    sources: tuple[str, ...] = SOURCES
    knowns: str = BUNDLED
    counterfact: str = BUNDLED
    max_rows: int = 256
    windows: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        windows = {"hidden": self.hidden_window, "mlp": self.window, "attn": self.window}
        object.__setattr__(self, "windows", {k: windows[k] for k in self.kinds if k in windows})

    def check(self, n_layers: int | None = None) -> None:
        """One ConfigError line for the first bad value (``span`` against ``n_layers`` when given)."""
        for name in ("facts", "samples", "window", "hidden_window", "span", "max_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.noise > 0:
            raise ConfigError(f"--noise must be positive, got {self.noise}")
        for group, given, valid in (("kinds", self.kinds, KINDS), ("sources", self.sources, SOURCES)):
            bad = [k for k in given if k not in valid]
            if bad or not given or len(set(given)) != len(given):
                what = f"unknown {group} {', '.join(map(repr, bad))}" if bad else f"{group} {','.join(given)!r}"
                raise ConfigError(f"{what} (choose one or more of: {', '.join(valid)}, each once)")
        if n_layers is not None and self.span > n_layers:
            raise ConfigError(f"--span {self.span} is more than the model's {n_layers} layers")

    def traced_with(self) -> dict:
        """The settings a fact's traces depend on (not ``facts``, ``span``, ``max_rows``: a rerun may change those)."""
        keep = ("samples", "noise", "windows", "kinds", "seed", "sources", "knowns", "counterfact")
        return {k: v for k, v in asdict(self).items() if k in keep} | {"format": FORMAT}


def model_facts(adapter: ModelAdapter, source: str, revision: str | None) -> dict:
    """What identifies the model in a folder's settings: its name, source, revision, dtype and shape."""
    return {
        "name": adapter.name,
        "source": source,
        "revision": revision,
        "dtype": str(adapter.dtype).removeprefix("torch."),
        "n_layers": adapter.n_layers,
    }


def check_folder(out_dir: Path, expected: dict) -> None:
    """Write ``settings.json`` into a new folder; in one that has it, refuse other settings (one line)."""
    path = Path(out_dir) / SETTINGS
    expected = json.loads(json.dumps(expected))  # as read back: tuples become lists
    if not path.exists():
        if (Path(out_dir) / TRACES).exists():
            raise RunFolderError(f"'{out_dir}' holds traces but no {SETTINGS}: give a new or empty --out")
        write_json_atomic(path, expected)
        return
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise RunFolderError(f"'{path}' is damaged (not JSON): remove the folder, or give another --out") from None
    if found != expected:
        diffs = _differences(found, expected)
        raise RunFolderError(
            f"'{out_dir}' holds traces of other settings ({'; '.join(diffs)}): "
            "give another --out, or the folder's settings to continue it"
        )


def _differences(found: dict, expected: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(found) | set(expected), key=str):
        a, b = found.get(key), expected.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {_show(a)} there, {_show(b)} now")
    return out


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def candidate_facts(settings: LocateSettings) -> list[Fact]:
    """Every fact of the settings' sources, in order (knowns before CounterFact by default)."""
    facts: list[Fact] = []
    for source in settings.sources:
        if source == "knowns":
            facts += load_knowns(settings.knowns)
        else:
            facts += counterfact_facts(load_counterfact(settings.counterfact))
    return facts


def trace_file(out_dir: Path, fact: Fact) -> Path:
    return Path(out_dir) / TRACES / f"{fact.key.replace(':', '-')}.json"


def read_trace(path: Path, encoded: EncodedFact) -> dict | None:
    """A fact's saved traces, or None (none yet, damaged, or another fact's: then it is traced again)."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        same = saved["fact"] == encoded.fact.as_dict() and saved["token_ids"] == encoded.ids.tolist()
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        log.warning("trace file %s is damaged: tracing its fact again", path)
        return None
    return saved if same else None


def trace_record(adapter: ModelAdapter, encoded: EncodedFact, settings: LocateSettings, scale: float, on_layer) -> dict:
    """The JSON record of one fact's traces (the content of its trace file)."""
    trace = trace_fact(
        adapter,
        encoded.ids,
        (encoded.start, encoded.end),
        encoded.target_id,
        kinds=settings.kinds,
        samples=settings.samples,
        noise_scale=scale,
        windows=settings.windows,
        seed=settings.seed,
        max_rows=settings.max_rows,
        on_layer=on_layer,
    )
    return {
        "fact": encoded.fact.as_dict(),
        "token_ids": encoded.ids.tolist(),
        "tokens": [adapter.tok.decode([i]) for i in encoded.ids.tolist()],
        "subject_range": [encoded.start, encoded.end],
        "target_id": encoded.target_id,
        "clean_prob": trace.clean,
        "corrupted_prob": trace.corrupted,
        "noise_scale": trace.noise_scale,
        "effects": {kind: table.tolist() for kind, table in trace.effects.items()},
    }


def summarise(records: Sequence[dict], settings: LocateSettings, model: dict, noise_scale: float) -> dict:
    """The payload of ``locate.json`` from the facts' trace records."""
    tables = [
        TraceTable({k: torch.tensor(r["effects"][k], dtype=torch.float64) for k in settings.kinds}, *r["subject_range"])
        for r in records
    ]
    means, counts = average_effects(tables, settings.kinds)
    mean = lambda key: sum(r[key] for r in records) / len(records)  # noqa: E731
    return {
        "model": model,
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("hidden_window", "window")},
        "noise_scale": noise_scale,
        "n_facts": len(records),
        "facts": [
            {
                **r["fact"],
                "subject_range": r["subject_range"],
                "clean_prob": r["clean_prob"],
                "corrupted_prob": r["corrupted_prob"],
            }
            for r in records
        ],
        "clean_prob": mean("clean_prob"),
        "corrupted_prob": mean("corrupted_prob"),
        "groups": list(TOKEN_GROUPS),
        "group_counts": counts,
        "effects": means,
        "suggestion": suggestion(means, settings.span),
    }


def _ticker(update: Callable[..., None], done: int) -> Callable[[], None]:
    """A callback moving the bar one step on from ``done`` at each call."""
    steps = iter(range(done + 1, 2**62))
    return lambda: update(next(steps))


def run_locate(adapter: ModelAdapter, model: dict, settings: LocateSettings, out_dir: Path, progress=None) -> dict:
    """Trace up to ``settings.facts`` facts the model knows into ``out_dir`` and write ``locate.json``.

    ``model``: :func:`model_facts`. Facts already traced there (same settings) are read back,
    not traced again. Returns the payload of ``locate.json``, plus ``traced`` and ``resumed``
    (how many facts this call traced and read back).
    """
    progress = progress or NullProgress()
    settings.check(adapter.n_layers)
    out_dir = Path(out_dir)
    check_folder(out_dir, {"model": model, **settings.traced_with()})
    facts = known_facts(adapter, candidate_facts(settings), settings.facts)
    if not facts:
        raise DataError(
            f"'{adapter.name}' knows none of the facts of {', '.join(settings.sources)} "
            "(its greedy next token is never the true object's first token)"
        )
    if len(facts) < settings.facts:
        log.warning("only %d facts known to %s (asked for %d)", len(facts), adapter.name, settings.facts)
    scale = settings.noise * embedding_std(adapter)
    per_fact = len(settings.kinds) * adapter.n_layers
    records, traced = [], 0
    with progress.track(f"causal tracing of {len(facts)} facts", len(facts) * per_fact) as update:
        for i, encoded in enumerate(facts):
            path = trace_file(out_dir, encoded.fact)
            record = read_trace(path, encoded)
            if record is None:
                record = trace_record(adapter, encoded, settings, scale, _ticker(update, i * per_fact))
                write_json_atomic(path, record)
                traced += 1
            records.append(record)
            update((i + 1) * per_fact)
    payload = summarise(records, settings, model, scale)
    write_json_atomic(out_dir / LOCATE, payload)
    return {**payload, "traced": traced, "resumed": len(records) - traced}
