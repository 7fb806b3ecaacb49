"""Second moments of the keys over a text corpus, for every needed layer in one pass.

C = (1/N) sum_t k_t k_t^T over all non-pad tokens t (uncentred, as the reference's
``layer_stats`` mom2). Differs from reference: all layers are collected in one
forward pass that stops after the deepest layer, accumulated in float64.
Cached on disk, keyed by model fingerprint, layer, corpus, sample count and length.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from blue_cli.cache import atomic_path, cache_root, content_key
from blue_cli.models.adapter import ModelAdapter
from blue_cli.models.tokens import pad_right

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class StatsSettings:
    """Which corpus, how many documents, truncated to how many tokens."""

    corpus: str = "wikitext-bundled"
    samples: int = 100000
    max_length: int = 1024
    batch_tokens: int = 4096


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
    settings: StatsSettings,
    progress: Progress | None = None,
) -> tuple[dict[int, torch.Tensor], int]:
    """One pass over ``docs``: {layer: C (d_k x d_k) float64 on CPU}, and the token count N."""
    tok = adapter.tok
    max_len = min(settings.max_length, getattr(adapter.model.config, "max_position_embeddings", None) or settings.max_length)
    encoded = token_windows(tok, docs, max_len, settings.samples)
    per_batch = max(1, settings.batch_tokens // max_len)
    acc = {l: torch.zeros(adapter.key_size(l), adapter.key_size(l), dtype=torch.float64, device=adapter.device) for l in layers}
    n_tokens = 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for start in range(0, len(encoded), per_batch):
        chunk = encoded[start : start + per_batch]
        batch = pad_right(chunk, pad, adapter.device)
        acts = adapter.read_points(batch, [f"key.{l}" for l in layers])
        mask = batch["attention_mask"].bool()
        for l in layers:
            x = acts[f"key.{l}"].to(adapter.device)[mask].float()
            acc[l] += (x.T @ x).double()
        n_tokens += int(mask.sum())
        if progress:
            progress(min(start + per_batch, len(encoded)), len(encoded))
    if n_tokens == 0:
        raise ValueError("the statistics corpus produced no tokens")
    return {l: (a / n_tokens).cpu() for l, a in acc.items()}, n_tokens


def token_windows(tok, docs: Sequence[str], max_len: int, limit: int) -> list[list[int]]:
    """Consecutive windows of at most ``max_len`` tokens over each document, ``limit`` in all.

    Differs from reference: a long article is cut into windows instead of truncated,
    so a small offline corpus still yields enough tokens; ``samples`` caps windows.
    """
    windows: list[list[int]] = []
    for doc in docs:
        ids = tok(doc)["input_ids"]
        windows += [ids[i : i + max_len] for i in range(0, len(ids), max_len) if len(ids[i : i + max_len]) > 1]
        if len(windows) >= limit:
            break
    return windows[:limit]


class CovarianceStore:
    """Second moments per layer, computed once per (model, corpus, samples) and cached on disk."""

    def __init__(self, adapter: ModelAdapter, settings: StatsSettings, root: Path | None = None):
        self.adapter = adapter
        self.settings = settings
        self.root = (root or cache_root() / "stats") / f"{_safe(adapter.name)}-{model_fingerprint(adapter)}"
        self._memory: dict[int, torch.Tensor] = {}

    def path(self, layer: int) -> Path:
        s = self.settings
        key = content_key({"corpus": s.corpus, "samples": s.samples, "max_length": s.max_length})
        return self.root / f"{_safe(s.corpus)}-{key}" / f"layer{layer}_mom2_{s.samples}.safetensors"

    def missing(self, layers: Sequence[int]) -> list[int]:
        return [l for l in layers if l not in self._memory and not self.path(l).exists()]

    def ensure(self, layers: Sequence[int], progress: Progress | None = None) -> None:
        """Compute (one corpus pass) and cache every layer in ``layers`` not cached yet."""
        todo = self.missing(layers)
        if not todo:
            return
        from blue_cli.data.corpus import load_corpus

        docs = load_corpus(self.settings.corpus, max_docs=self.settings.samples)
        log.info("collecting second moments for layers %s over %d documents", todo, len(docs))
        moments, n_tokens = collect_second_moments(self.adapter, docs, todo, self.settings, progress)
        for layer, C in moments.items():
            with atomic_path(self.path(layer)) as tmp:
                save_file({"mom2": C.float().contiguous(), "count": torch.tensor([n_tokens])}, str(tmp))
            self._memory[layer] = C.float()

    def get(self, layer: int) -> torch.Tensor:
        """C for ``layer`` (float32, CPU); computes it if needed."""
        if layer not in self._memory:
            self.ensure([layer])
            self._memory.setdefault(layer, load_file(str(self.path(layer)))["mom2"])
        return self._memory[layer]

    def cached_tensor(self, layer: int, name: str, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """A tensor derived from C (e.g. AlphaEdit's projector), cached next to it."""
        path = self.path(layer).with_name(f"layer{layer}_{name}.safetensors")
        if path.exists():
            return load_file(str(path))["value"]
        value = compute(self.get(layer)).contiguous()
        with atomic_path(path) as tmp:
            save_file({"value": value}, str(tmp))
        return value


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[-60:]
