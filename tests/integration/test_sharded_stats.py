"""Sharded second moments: shards merge into exactly the one-pass statistics.

C = sum_t k k^T / N is additive; shards are the one pass's batches dealt round-robin,
so the merged sums must equal the one-pass sums to float64 rounding (1e-10 relative
is a generous bound) with the same token count. Known answers: the one-pass values,
computed by the unsharded code path in a separate cache folder.
"""

from __future__ import annotations

import json

import pytest
import torch

from blue_cli.config.schema import StatsConfig
from blue_cli.editing.statistics.corpus import iter_corpus, load_corpus, stream_texts
from blue_cli.editing.statistics.shards import (
    MissingShardError,
    batch_ranges,
    check_shard,
    complete_set,
    merge_sums,
    missing_shards,
    shard_batches,
    shards_on_disk,
)
from blue_cli.editing.statistics.store import (
    CovarianceStore,
    accumulate_second_moments,
    moment_sums,
    token_windows,
    window_length,
)
from blue_cli.errors import ConfigError

SETTINGS = StatsConfig(
    corpus="wikitext-bundled", samples=24, max_length=48, batch_tokens=96
)  # 2 windows a batch, 12 batches


@pytest.fixture(scope="module")
def gpt2(load_tiny):
    return load_tiny("tiny-gpt2")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --- pure functions ---------------------------------------------------------------------------


def test_shards_partition_the_batches_round_robin():
    assert [list(r) for r in batch_ranges(5, 2)] == [[0, 1], [2, 3], [4]]
    parts = [shard_batches(10, i, 3) for i in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(b for p in parts for b in p) == list(range(10))
    with pytest.raises(ConfigError, match=r"stats.shard must be in 0..2 for stats.shards=3, got 3"):
        check_shard(3, 3)
    with pytest.raises(ConfigError, match="stats.shards must be >= 1, got 0"):
        check_shard(None, 0)


def test_merge_sums_divides_the_total_by_the_total_tokens():
    a, b = torch.tensor([[2.0, 0.0], [0.0, 4.0]]), torch.tensor([[1.0, 3.0], [3.0, 0.0]])
    C, n = merge_sums([(a, 2), (b, 1)])
    assert n == 3 and C.dtype == torch.float64
    torch.testing.assert_close(C, torch.tensor([[1.0, 1.0], [1.0, 4.0 / 3]], dtype=torch.float64))


def test_shard_files_are_found_and_the_missing_ones_named(tmp_path):
    full = tmp_path / "layer1_mom2_24.safetensors"
    for name in ("shard0of3", "shard2of3", "shard0of2", "shard1of2"):
        (tmp_path / f"layer1_mom2_24.{name}.safetensors").write_bytes(b"x")
    (tmp_path / "layer11_mom2_24.shard1of3.safetensors").write_bytes(b"x")  # another layer: not ours
    found = shards_on_disk(full)
    assert found == {3: {0, 2}, 2: {0, 1}}
    assert complete_set(found) == 2
    assert missing_shards({3: {0, 2}, 4: {0}}) == (3, [1])


# --- against the one pass ---------------------------------------------------------------------


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_sums_equal_the_one_pass(gpt2, shards):
    docs = load_corpus(SETTINGS.corpus, max_docs=SETTINGS.samples)
    windows = token_windows(gpt2.tok, docs, window_length(gpt2, SETTINGS), SETTINGS.samples)
    n_batches = len(batch_ranges(len(windows), SETTINGS.batch_tokens // window_length(gpt2, SETTINGS)))
    assert n_batches >= 2 * shards  # every shard holds several batches
    layers = [1, 3]
    one, n_one = accumulate_second_moments(gpt2, windows, layers, SETTINGS)
    parts = [
        moment_sums(gpt2, windows, layers, SETTINGS, batches=shard_batches(n_batches, i, shards)) for i in range(shards)
    ]
    assert all(0 < n < n_one for _, n in parts)
    for layer in layers:
        C, n = merge_sums([(sums[layer], n) for sums, n in parts])
        assert n == n_one == sum(len(w) for w in windows)
        assert _rel(C, one[layer]) < 1e-10
    # the sums themselves are float64 products: a float32 product would not add up this well
    assert one[1].dtype == torch.float64


@pytest.mark.parametrize("shards", [2, 3])
def test_store_merges_shards_into_the_one_pass_entry(gpt2, tmp_path, shards):
    layers = [1, 3]
    sharded = CovarianceStore(gpt2, SETTINGS, tmp_path / "sharded")
    for i in range(shards):
        paths = CovarianceStore(gpt2, SETTINGS, tmp_path / "sharded").collect_shard(layers, i, shards)
        assert all(p.is_file() and f"shard{i}of{shards}" in p.name for p in paths)
    one = CovarianceStore(gpt2, SETTINGS, tmp_path / "one")
    for layer in layers:
        merged, direct = sharded.get(layer), one.get(layer)
        assert _rel(merged.double(), direct.double()) < 1e-10
        assert sharded.counts[layer] == one.counts[layer]
    # the merged entry is an ordinary cache entry: a fresh store loads it without the shards
    for p in (tmp_path / "sharded").rglob("*.shard*.safetensors"):
        p.unlink()
    again = CovarianceStore(gpt2, SETTINGS, tmp_path / "sharded")
    assert again.missing(layers) == []
    assert torch.equal(again.get(1), sharded.get(1))


def test_a_missing_shard_is_named_with_the_command_that_makes_it(gpt2, tmp_path):
    store = CovarianceStore(gpt2, SETTINGS, tmp_path, remake_args=["model=tiny-gpt2", "strategy=spread"])
    store.collect_shard([1], 0, 3)
    store.collect_shard([1], 2, 3)
    assert store.merge_ready([1]) == []  # not all there: nothing merged, no error
    with pytest.raises(MissingShardError) as err:
        store.ensure([1])
    msg = str(err.value)
    assert "\n" not in msg and "shard 1 of 3 is missing" in msg
    assert msg.endswith(
        "make it with: blue stats model=tiny-gpt2 strategy=spread stats.corpus=wikitext-bundled "
        "stats.samples=24 stats.max_length=48 stats.shard=1 stats.shards=3"
    )
    assert not store.path(1).exists()
    store.collect_shard([1], 1, 3)
    assert store.merge_ready([1]) == [1] and store.path(1).is_file()


def test_no_shards_means_one_pass_as_before(gpt2, tmp_path):
    store = CovarianceStore(gpt2, SETTINGS, tmp_path)
    C = store.get(3)
    docs = load_corpus(SETTINGS.corpus, max_docs=SETTINGS.samples)
    windows = token_windows(gpt2.tok, docs, window_length(gpt2, SETTINGS), SETTINGS.samples)
    # independent known answer: the keys of every window read one at a time, float64
    total = torch.zeros_like(C, dtype=torch.float64)
    for w in windows:
        batch = {"input_ids": torch.tensor([w]), "attention_mask": torch.ones(1, len(w), dtype=torch.long)}
        k = gpt2.read_points(batch, ["key.3"])["key.3"][0].double()
        total += k.T @ k
    expected = total / sum(len(w) for w in windows)
    assert _rel(C.double(), expected) < 1e-5  # one window vs many per batch: float32 forwards differ slightly
    assert store.counts[3].tokens == sum(len(w) for w in windows)


# --- streaming corpus -------------------------------------------------------------------------


def test_streaming_dataset_is_read_only_as_far_as_needed(gpt2, tmp_path):
    """A local dataset streamed through `datasets`, as Wikipedia is: rows past the last window are never read."""
    import datasets

    path = tmp_path / "corpus.jsonl"
    texts = [f"Document {i} talks about the city number {i} and its river. " * 8 for i in range(200)]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    stream = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    read = []

    def counted(rows):
        for row in rows:
            read.append(row["text"])
            yield row

    windows = token_windows(gpt2.tok, stream_texts(counted(stream), max_docs=200), 48, 10)
    assert len(windows) == 10
    per_doc = len(gpt2.tok(texts[0])["input_ids"]) // 48 + 1
    assert len(read) <= 10 // (per_doc - 1) + 2 < 200  # stopped right after the 10th window
    assert read == texts[: len(read)]  # in file order
    # the same file as a local corpus gives the same documents through iter_corpus
    assert list(iter_corpus(str(path), max_docs=5)) == texts[:5]
