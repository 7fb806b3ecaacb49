"""Second moments that add: collect shard i of n, merge the shards into one entry.

C = (1/N) sum_t k_t k_t^T is a sum over tokens, so disjoint parts of the corpus can be
collected on different machines (sum of k k^T in float64 and token count each) and
merged exactly: C = (sum_i S_i) / (sum_i N_i). Each batch's k k^T is taken in
``stats.precision`` (float32 or float64) before it is added to the float64 sum; a
shard entry's path and metadata carry that precision like the full entry's.

The slices are the one pass's own batches (``settings.batch_tokens`` worth of
consecutive token windows of consecutive documents), dealt round-robin: shard i gets
batches i, i+n, i+2n, ... Differs from the issue's "by document": a batch of other
composition would run the model on other padded shapes, whose float32 activations
differ from the one pass's at ~1e-7; with the same batches every k k^T product is
bit-identical (in float32 as in float64) and only the float64 summation order differs. Every shard
therefore tokenises the same document prefix (cheap, and it is what decides where the
``stats.samples`` windows end) but runs the model on its own batches only.

Pure functions over tensors and token windows; the cache files live in covariance.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from blue_cli.errors import ConfigError

SHARD_FILE = re.compile(r"\.shard(\d+)of(\d+)\.safetensors$")


class MissingShardError(ConfigError):
    """Some, not all, shards of a sharded statistics entry exist; the message says how to make the rest."""


def check_shard(shard: int | None, shards: int) -> None:
    """``0 <= shard < shards``; one-line errors naming the bad value."""
    if shards < 1:
        raise ConfigError(f"stats.shards must be >= 1, got {shards}")
    if shard is not None and not 0 <= shard < shards:
        raise ConfigError(f"stats.shard must be in 0..{shards - 1} for stats.shards={shards}, got {shard}")


def batch_ranges(n_windows: int, per_batch: int) -> list[range]:
    """The one pass's batches as ranges of window indices: [0, p), [p, 2p), ..."""
    return [range(start, min(start + per_batch, n_windows)) for start in range(0, n_windows, per_batch)]


def shard_batches(n_batches: int, shard: int, shards: int) -> list[int]:
    """Batch indices of shard ``shard`` of ``shards``: round-robin, so shards differ by at most one batch."""
    check_shard(shard, shards)
    return list(range(shard, n_batches, shards))


def shard_path(full_entry: Path, shard: int, shards: int) -> Path:
    """The file of one shard, beside the merged entry it belongs to."""
    return full_entry.with_name(full_entry.name.replace(".safetensors", f".shard{shard}of{shards}.safetensors"))


def shards_on_disk(full_entry: Path) -> dict[int, set[int]]:
    """{shards: {shard indices present}} for the shard files beside ``full_entry``."""
    found: dict[int, set[int]] = {}
    stem = full_entry.name.replace(".safetensors", "")
    for path in full_entry.parent.glob(f"{stem}.shard*of*.safetensors"):
        match = SHARD_FILE.search(path.name)
        if match and path.name.startswith(stem + ".shard"):
            shard, shards = int(match.group(1)), int(match.group(2))
            if 0 <= shard < shards:
                found.setdefault(shards, set()).add(shard)
    return found


def complete_set(found: Mapping[int, set[int]]) -> int | None:
    """The smallest ``shards`` whose every shard is present, else None."""
    done = [n for n, have in found.items() if have == set(range(n))]
    return min(done) if done else None


def missing_shards(found: Mapping[int, set[int]]) -> tuple[int, list[int]]:
    """(shards, missing indices) for the most nearly complete set (fewest missing)."""
    shards = min(found, key=lambda n: (n - len(found[n]), n))
    return shards, sorted(set(range(shards)) - found[shards])


def merge_sums(parts: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, int]:
    """(C = sum S_i / sum N_i in float64, N) from shard parts (S_i float64 d x d, N_i tokens)."""
    if not parts:
        raise ValueError("no shards to merge")
    total = torch.zeros_like(parts[0][0], dtype=torch.float64)
    tokens = 0
    for sums, n in parts:
        total += sums.to(torch.float64)
        tokens += int(n)
    if tokens == 0:
        raise ValueError("the shards hold no tokens")
    return total / tokens, tokens
