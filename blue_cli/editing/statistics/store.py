"""Second moments of the keys over a text corpus, for every needed layer in one pass.

C = (1/N) sum_t k_t k_t^T over all non-pad tokens t (uncentred, as the reference's
``layer_stats`` mom2). Differs from reference: all layers are collected in one
forward pass that stops after the deepest layer, accumulated in float64.
Cached on disk, keyed by model fingerprint, layer, corpus, sample count and length
(and ``precision: float32`` when the products are float32; see below).

Differs from reference: the per-batch products x^T x are taken in ``stats.precision``
(auto: float64 on CPU, float32 on CUDA; see precision.py; the reference: float32),
always added to a float64 sum. float64 products make sums over any split of the
batches match the one pass to ~1e-16; float32 products (~1e-7 relative from float64)
still make shards match the one pass exactly up to float64 summation order, because
shards split by batch and each batch's product is the same number in both. Entries
of the two precisions live at different cache paths and record their precision.

Differs from reference: a cache entry carries its metadata and a sha256 of its
tensors, checked on every load; a bad entry is moved aside and rebuilt instead of
silently giving wrong statistics, and a per-entry file lock makes parallel jobs
compute an entry once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from blue_cli.cache import cache_root, content_key, entry_lock
from blue_cli.config.schema import StatsConfig
from blue_cli.editing.statistics.entries import (  # noqa: F401 (re-exported)
    BadEntry,
    read_entry,
    read_valid_entry,
    tensor_checksum,
    write_entry,
)
from blue_cli.editing.statistics.precision import exact_float32_matmul, product_precision
from blue_cli.errors import ConfigError
from blue_cli.faults import fault_point
from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.tokens import pad_right

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

# Bump when the layout or meaning of a cache entry changes: older entries then fail
# the metadata check and are rebuilt.
FORMAT_VERSION = "2"


@dataclass(frozen=True)
class SampleCounts:
    """How much text the statistics of a layer rest on: windows asked for and got, tokens."""

    requested: int
    windows: int
    tokens: int

    @property
    def shortfall(self) -> int:
        return max(0, self.requested - self.windows)


def model_fingerprint(adapter: ModelAdapter) -> str:
    """A key that changes when the architecture or any weight changes (cheap: samples values).

    Computed once, before any edit, so the statistics belong to the unedited model.
    """
    config = adapter.model.config.to_dict()
    config.pop("_name_or_path", None)
    sample = []
    for name, param in adapter.model.named_parameters():
        flat = param.detach().flatten()
        picks = flat[:: max(1, flat.numel() // 8)][:8]
        sample.append((name, tuple(param.shape), [round(float(v), 6) for v in picks.float().cpu()]))
    return content_key({"config": config, "params": sample})


@torch.no_grad()
def collect_second_moments(
    adapter: ModelAdapter,
    docs: Sequence[str],
    layers: Sequence[int],
    settings: StatsConfig,
    progress: Progress | None = None,
) -> tuple[dict[int, torch.Tensor], int]:
    """One pass over ``docs``: {layer: C (d_k x d_k) float64 on CPU}, and the token count N."""
    windows = token_windows(adapter.tok, docs, window_length(adapter, settings), settings.samples)
    return accumulate_second_moments(adapter, windows, layers, settings, progress)


@torch.no_grad()
def accumulate_second_moments(
    adapter: ModelAdapter,
    windows: Sequence[Sequence[int]],
    layers: Sequence[int],
    settings: StatsConfig,
    progress: Progress | None = None,
) -> tuple[dict[int, torch.Tensor], int]:
    """{layer: C (d_k x d_k) float64 on CPU} over token ``windows``, and the token count N."""
    sums, n_tokens = moment_sums(adapter, windows, layers, settings, progress=progress)
    if n_tokens == 0:
        raise ValueError("the statistics corpus produced no tokens")
    return {l: a / n_tokens for l, a in sums.items()}, n_tokens


@torch.no_grad()
def moment_sums(
    adapter: ModelAdapter,
    windows: Sequence[Sequence[int]],
    layers: Sequence[int],
    settings: StatsConfig,
    batches: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> tuple[dict[int, torch.Tensor], int]:
    """{layer: S = sum_t k_t k_t^T (d_k x d_k) float64 on CPU} and the token count, over ``batches``.

    The windows are cut into the one pass's batches (``batch_tokens`` worth each);
    ``batches`` picks some of them (a shard, see shards.py), None takes all. Each batch's
    x^T x is taken in ``settings.precision`` (:func:`product_precision`) and added to a
    float64 sum. float64 products make sums over any split of the batches match the one
    pass to ~1e-16; float32 products (~1e-7 relative from float64) are the same numbers
    in a shard as in the one pass, since shards split by batch, so shards still match
    it up to float64 summation order. ``progress(tokens_done, tokens_total)``; the rate
    is logged when done.
    """
    from blue_cli.editing.statistics.shards import batch_ranges

    tok = adapter.tok
    ranges = batch_ranges(len(windows), max(1, settings.batch_tokens // window_length(adapter, settings)))
    picked = [ranges[b] for b in (range(len(ranges)) if batches is None else batches)]
    total = sum(len(windows[i]) for r in picked for i in r)
    dtype = getattr(torch, product_precision(settings.precision, adapter.device))
    acc = {
        l: torch.zeros(adapter.key_size(l), adapter.key_size(l), dtype=torch.float64, device=adapter.device)
        for l in layers
    }
    n_tokens = 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    started = time.perf_counter()
    for rng in picked:
        fault_point("stats")
        batch = pad_right([list(windows[i]) for i in rng], pad, adapter.device)
        acts = adapter.read_points(batch, [f"key.{l}" for l in layers])
        mask = batch["attention_mask"].bool()
        for l in layers:
            x = acts[f"key.{l}"].to(adapter.device)[mask].to(dtype)
            with exact_float32_matmul():
                acc[l] += (x.T @ x).to(torch.float64)
        n_tokens += int(mask.sum())
        if progress:
            progress(n_tokens, total)
    seconds = time.perf_counter() - started
    log.info(
        "second moments: %d tokens in %.1f s (%.0f tokens/s, %s products)",
        n_tokens,
        seconds,
        n_tokens / max(seconds, 1e-9),
        dtype,
    )
    return {l: a.cpu() for l, a in acc.items()}, n_tokens


def window_length(adapter: ModelAdapter, settings: StatsConfig) -> int:
    """``settings.max_length``, capped at the model's context length."""
    limit = getattr(adapter.model.config, "max_position_embeddings", None) or settings.max_length
    return min(settings.max_length, limit)


def token_windows(tok, docs: Sequence[str], max_len: int, limit: int) -> list[list[int]]:
    """Consecutive windows of at most ``max_len`` tokens over each document, ``limit`` in all.

    Differs from reference: a long article is cut into windows instead of truncated,
    so a small offline corpus still yields enough tokens; ``samples`` caps windows.
    """
    windows: list[list[int]] = []
    for doc in docs:
        ids = tok(doc, verbose=False)["input_ids"]  # longer than the model's context on purpose: windowed below
        windows += [ids[i : i + max_len] for i in range(0, len(ids), max_len) if len(ids[i : i + max_len]) > 1]
        if len(windows) >= limit:
            break
    return windows[:limit]


def corpus_signature(corpus: str) -> str:
    """Size and mtime of a local corpus file, so editing the file invalidates its statistics."""
    path = Path(corpus).expanduser()
    if not path.is_file():
        return ""
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


class CovarianceStore:
    """Second moments per layer, computed once per (model, corpus, samples) and cached on disk.

    ``counts`` gives, per layer loaded or computed, how many windows and tokens its
    statistics rest on; ``summary()`` condenses them for a run's summary.json.
    """

    def __init__(
        self, adapter: ModelAdapter, settings: StatsConfig, root: Path | None = None, remake_args: Sequence[str] = ()
    ):
        self.adapter = adapter
        # Overrides (besides stats.*) that remake a missing shard, for its error message.
        self.remake_args = tuple(remake_args) or (f"model={adapter.name}",)
        self.settings = settings
        self.precision = product_precision(settings.precision, adapter.device)
        self.fingerprint = model_fingerprint(adapter)
        self.root = (root or cache_root() / "stats") / f"{_safe(adapter.name)}-{self.fingerprint}"
        self.counts: dict[int, SampleCounts] = {}
        self._memory: dict[int, torch.Tensor] = {}
        self._sha: dict[int, str] = {}
        self._warned_shortfall = False

    def path(self, layer: int) -> Path:
        """The entry's file; float64 entries keep the key they had before ``stats.precision`` existed."""
        s = self.settings
        fields = {"corpus": s.corpus, "samples": s.samples, "max_length": s.max_length}
        if self.precision == "float32":
            fields["precision"] = "float32"
        key = content_key(fields)
        return self.root / f"{_safe(s.corpus)}-{key}" / f"layer{layer}_mom2_{s.samples}.safetensors"

    def metadata(self, layer: int) -> dict[str, str]:
        """What a valid entry for ``layer`` must record (besides its counts and checksum)."""
        s = self.settings
        return {
            "format": FORMAT_VERSION,
            "kind": "mom2",
            "model": self.adapter.name,
            "fingerprint": self.fingerprint,
            "model_dtype": str(self.adapter.dtype).removeprefix("torch."),
            "layer": str(layer),
            "corpus": s.corpus,
            "corpus_file": corpus_signature(s.corpus),
            "samples": str(s.samples),
            "max_length": str(s.max_length),
            "precision": self.precision,
            "dtype": "float32",
        }

    def _expected(self, meta: dict[str, str]) -> dict:
        """``meta`` as checked on load: float64 entries written before the ``precision`` key existed are valid."""
        if self.precision == "float64":
            return {**meta, "precision": ("float64", None)}
        return meta

    def missing(self, layers: Sequence[int]) -> list[int]:
        """Layers without a valid cached entry (valid ones are loaded, bad ones moved aside)."""
        return [l for l in layers if not self._load(l)]

    def ensure(self, layers: Sequence[int], progress: Progress | None = None) -> None:
        """Compute (one corpus pass) and cache every layer in ``layers`` not cached yet.

        Locks are taken in layer order, so jobs wanting overlapping layers cannot deadlock;
        a job that waited finds the other's entries valid and computes only the rest.
        """
        todo = self.missing(layers)
        if not todo:
            return
        with ExitStack() as stack:
            for layer in sorted(set(todo)):
                stack.enter_context(entry_lock(self.path(layer)))
            todo = [l for l in todo if not self._load(l, locked=True)]
            todo = [l for l in todo if not self._merge_shards(l, strict=True)]
            if todo:
                self._compute(todo, progress)

    def merge_ready(self, layers: Sequence[int]) -> list[int]:
        """Merge the layers whose shards are all on disk into their entries; returns those merged.

        Unlike :meth:`ensure` this neither computes nor complains: a shard job calls it
        after writing its shard, so whichever job finishes last leaves the merged entry.
        """
        merged = []
        for layer in layers:
            if self._load(layer):
                continue
            with entry_lock(self.path(layer)):
                if self._load(layer, locked=True) or self._merge_shards(layer, strict=False):
                    merged.append(layer)
        return merged

    def collect_shard(
        self, layers: Sequence[int], shard: int, shards: int, progress: Progress | None = None
    ) -> list[Path]:
        """Compute and cache shard ``shard`` of ``shards`` (float64 sum of k k^T, token count) per layer.

        See shards.py for how the corpus is dealt out. Layers whose shard entry is
        already valid are skipped; returns the shard files of all ``layers``.
        """
        from blue_cli.editing.statistics.shards import (
            batch_ranges,
            check_shard,
            shard_batches,
            shard_path,
        )

        check_shard(shard, shards)
        paths = {l: shard_path(self.path(l), shard, shards) for l in layers}
        with ExitStack() as stack:
            for layer in sorted(set(layers)):
                stack.enter_context(entry_lock(paths[layer]))
            wanted = {l: self._expected(self._shard_meta(l, shard, shards)) for l in layers}
            todo = [l for l in layers if read_valid_entry(paths[l], wanted[l], locked=True) is None]
            if todo:
                windows = self._windows()
                per_batch = max(1, self.settings.batch_tokens // window_length(self.adapter, self.settings))
                mine = shard_batches(len(batch_ranges(len(windows), per_batch)), shard, shards)
                log.info(
                    "shard %d/%d: layers %s over %d of the batches of %d windows",
                    shard,
                    shards,
                    todo,
                    len(mine),
                    len(windows),
                )
                sums, n_tokens = moment_sums(
                    self.adapter, windows, todo, self.settings, batches=mine, progress=progress
                )
                n_windows = sum(len(batch_ranges(len(windows), per_batch)[b]) for b in mine)
                for layer in todo:
                    meta = {
                        **self._shard_meta(layer, shard, shards),
                        "windows": str(n_windows),
                        "tokens": str(n_tokens),
                        "total_windows": str(len(windows)),
                    }
                    write_entry(paths[layer], {"mom2_sum": sums[layer]}, meta)
        return [paths[l] for l in layers]

    def _shard_meta(self, layer: int, shard: int, shards: int) -> dict[str, str]:
        return {
            **self.metadata(layer),
            "kind": "mom2_shard",
            "dtype": "float64",
            "shard": str(shard),
            "shards": str(shards),
        }

    def _merge_shards(self, layer: int, strict: bool) -> bool:
        """Merge a complete set of shards of ``layer`` into its entry (caller holds its lock).

        No shards: False (compute in one pass). Some missing: with ``strict`` a
        :class:`MissingShardError` naming the first missing shard and the command that makes it.
        """
        from blue_cli.editing.statistics.shards import (
            MissingShardError,
            complete_set,
            merge_sums,
            missing_shards,
            shard_path,
            shards_on_disk,
        )

        found = shards_on_disk(self.path(layer))
        if not found:
            return False
        shards = complete_set(found)
        if shards is None:
            if not strict:
                return False
            n, missing = missing_shards(found)
            s = self.settings
            stats = f"stats.corpus={s.corpus} stats.samples={s.samples} stats.max_length={s.max_length}"
            if self.settings.precision != "auto" or self.precision == "float32":  # the same entry on any device
                stats += f" stats.precision={self.precision}"
            raise MissingShardError(
                f"statistics for layer {layer} of '{self.adapter.name}' are sharded "
                f"but shard {missing[0]} of {n} is missing "
                f"(missing: {', '.join(map(str, missing))}); make it with: blue stats {' '.join(self.remake_args)} "
                f"{stats} stats.shard={missing[0]} stats.shards={n}"
            )
        parts, windows = [], 0
        for shard in range(shards):
            wanted = self._expected(self._shard_meta(layer, shard, shards))
            entry = read_valid_entry(shard_path(self.path(layer), shard, shards), wanted)
            if entry is None:  # damaged (moved aside): that shard is missing now
                return self._merge_shards(layer, strict)
            tensors, meta = entry
            parts.append((tensors["mom2_sum"], int(meta["tokens"])))
            windows += int(meta["windows"])
        C, n_tokens = merge_sums(parts)
        log.info("merged %d shards of layer %d: %d windows, %d tokens", shards, layer, windows, n_tokens)
        self._store(layer, C, SampleCounts(self.settings.samples, windows, n_tokens), merged_from=shards)
        return True

    def get(self, layer: int) -> torch.Tensor:
        """C for ``layer`` (float32, CPU); computes it if needed."""
        if layer not in self._memory:
            self.ensure([layer])
        return self._memory[layer]

    def cached_tensor(self, layer: int, name: str, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """A tensor derived from C (e.g. AlphaEdit's projector), cached next to it.

        Its entry records the sha256 of the C it came from, so a rebuilt C rebuilds it too.
        """
        C = self.get(layer)
        path = self.path(layer).with_name(f"layer{layer}_{_safe(name)}.safetensors")
        expected = {
            "format": FORMAT_VERSION,
            "kind": "derived",
            "name": name,
            "layer": str(layer),
            "source_sha256": self._sha[layer],
        }
        entry = read_valid_entry(path, expected)
        if entry is None:
            with entry_lock(path):
                entry = read_valid_entry(path, expected, locked=True)
                if entry is None:
                    value = compute(C).contiguous()
                    write_entry(path, {"value": value}, expected)
                    return value
        return entry[0]["value"]

    @property
    def shortfall(self) -> int:
        """Windows asked for (``stats.samples``) but not found in the corpus; 0 if none short."""
        return max((c.shortfall for c in self.counts.values()), default=0)

    def summary(self) -> dict[str, int]:
        """The corpus counts behind the statistics in use (the smallest, if layers differ)."""
        if not self.counts:
            return {}
        c = min(self.counts.values(), key=lambda c: (c.windows, c.tokens))
        return {"samples_requested": c.requested, "windows": c.windows, "tokens": c.tokens, "shortfall": c.shortfall}

    def _load(self, layer: int, locked: bool = False) -> bool:
        if layer in self._memory:
            return True
        entry = read_valid_entry(self.path(layer), self._expected(self.metadata(layer)), locked)
        if entry is None:
            return False
        tensors, meta = entry
        counts = SampleCounts(self.settings.samples, int(meta.get("windows", 0)), int(meta.get("tokens", 0)))
        self._remember(layer, tensors["mom2"], meta["sha256"], counts)
        return True

    def _windows(self) -> list[list[int]]:
        """The token windows of the corpus, documents read (streamed) only until ``samples`` windows."""
        from blue_cli.editing.statistics.corpus import iter_corpus

        s = self.settings
        return token_windows(
            self.adapter.tok, iter_corpus(s.corpus, max_docs=s.samples), window_length(self.adapter, s), s.samples
        )

    def _compute(self, layers: list[int], progress: Progress | None) -> None:
        s = self.settings
        windows = self._windows()
        log.info("collecting second moments for layers %s over %d windows", layers, len(windows))
        moments, n_tokens = accumulate_second_moments(self.adapter, windows, layers, s, progress)
        counts = SampleCounts(s.samples, len(windows), n_tokens)
        for layer, C in moments.items():
            self._store(layer, C, counts)

    def _store(self, layer: int, C: torch.Tensor, counts: SampleCounts, merged_from: int | None = None) -> None:
        """Check, cache (float32) and remember one layer's C; the caller holds its lock."""
        C = C.float().contiguous()
        if not bool(torch.isfinite(C).all()):
            raise ConfigError(
                f"statistics for layer {layer} of '{self.adapter.name}' are not finite "
                f"(model dtype {self.metadata(layer)['model_dtype']} overflowed? try model.dtype=float32)"
            )
        meta = {**self.metadata(layer), "windows": str(counts.windows), "tokens": str(counts.tokens)}
        if merged_from is not None:
            meta["merged_from_shards"] = str(merged_from)
        sha = write_entry(self.path(layer), {"mom2": C}, meta)
        self._remember(layer, C, sha, counts)

    def _remember(self, layer: int, C: torch.Tensor, sha: str, counts: SampleCounts) -> None:
        self._memory[layer], self._sha[layer], self.counts[layer] = C, sha, counts
        if counts.shortfall and not self._warned_shortfall:
            self._warned_shortfall = True
            log.warning(
                "statistics corpus '%s' gave %d token windows but stats.samples asks for %d: "
                "the statistics rest on fewer samples than configured",
                self.settings.corpus,
                counts.windows,
                counts.requested,
            )


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[-60:]
