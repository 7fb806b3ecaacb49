"""``stats.precision``: float32 key products, float64 sums; shards stay exact; caches never mix.

Known answers: float64-product statistics (today's path) for the float32 ones; the
one-pass float32 statistics for the merged float32 shards; the cache path of a
float64 entry recomputed here from the documented key rule (sha256 of the JSON of
corpus, samples and max_length, first 16 hex digits), as it was before the setting.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from blue_cli.config.overrides import compose_config
from blue_cli.config.schema import StatsConfig
from blue_cli.editing.statistics.corpus import load_corpus
from blue_cli.editing.statistics.entries import read_entry, write_entry
from blue_cli.editing.statistics.precision import exact_float32_matmul, product_precision
from blue_cli.editing.statistics.shards import (
    MissingShardError,
    batch_ranges,
    merge_sums,
    shard_batches,
)
from blue_cli.editing.statistics.store import (
    CovarianceStore,
    accumulate_second_moments,
    model_fingerprint,
    moment_sums,
    token_windows,
    window_length,
)
from blue_cli.errors import ConfigError
from blue_cli.tools.memory_plan import RunFacts, Shape, make_plan, run_facts

BASE = {
    "corpus": "wikitext-bundled",
    "samples": 24,
    "max_length": 48,
    "batch_tokens": 96,
}  # 2 windows a batch, 12 batches
F32 = StatsConfig(**BASE, precision="float32")
F64 = StatsConfig(**BASE, precision="float64")
AUTO = StatsConfig(**BASE)
LAYERS = [1, 3]


@pytest.fixture(scope="module")
def gpt2(load_tiny):
    return load_tiny("tiny-gpt2")


@pytest.fixture(scope="module")
def windows(gpt2):
    docs = load_corpus(AUTO.corpus, max_docs=AUTO.samples)
    return token_windows(gpt2.tok, docs, window_length(gpt2, AUTO), AUTO.samples)


def _frob(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


# --- the setting ------------------------------------------------------------------------------


def test_auto_is_float64_on_cpu_and_float32_on_cuda():
    assert product_precision("auto", "cpu") == "float64"
    assert product_precision("auto", torch.device("cuda", 0)) == "float32"
    assert product_precision("float32", "cpu") == "float32"
    assert product_precision("float64", "cuda") == "float64"
    with pytest.raises(ConfigError, match=r"^unknown stats.precision 'half' \(choose: auto, float32, float64\)$"):
        product_precision("half", "cpu")


def test_float32_products_are_close_to_float64_but_not_identical(gpt2, windows):
    f32, n32 = accumulate_second_moments(gpt2, windows, LAYERS, F32)
    f64, n64 = accumulate_second_moments(gpt2, windows, LAYERS, F64)
    auto, _ = accumulate_second_moments(gpt2, windows, LAYERS, AUTO)
    assert n32 == n64 == sum(len(w) for w in windows)
    for layer in LAYERS:
        assert f32[layer].dtype == torch.float64  # the sum stays float64
        assert _frob(f32[layer], f64[layer]) < 1e-5
        assert not torch.equal(f32[layer], f64[layer])  # the setting acts
        assert torch.equal(auto[layer], f64[layer])  # auto on CPU: today's numbers bit for bit


def test_the_float32_product_runs_without_tf32(gpt2, windows):
    """Every d_k x d_k float32 product sees the exact-float32 setting even when TF32 was switched on."""

    class SeenPrecision(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.mm.default and out.dtype == torch.float32 and out.shape[0] == out.shape[1] == dk:
                self.seen.append(torch.backends.cuda.matmul.fp32_precision)
            return out

    dk = gpt2.key_size(1)
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        with SeenPrecision() as mode:
            moment_sums(gpt2, windows[:4], [1], F32)
        assert mode.seen and set(mode.seen) == {"ieee"}
        assert matmul.fp32_precision == "tf32"  # restored after
        with pytest.raises(RuntimeError), exact_float32_matmul():
            raise RuntimeError("restored on errors too")
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before


# --- shards ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shards", [2, 3])
def test_float32_shards_merge_into_the_one_pass(gpt2, windows, shards):
    n_batches = len(batch_ranges(len(windows), F32.batch_tokens // window_length(gpt2, F32)))
    one, n_one = accumulate_second_moments(gpt2, windows, LAYERS, F32)
    parts = [
        moment_sums(gpt2, windows, LAYERS, F32, batches=shard_batches(n_batches, i, shards)) for i in range(shards)
    ]
    assert all(0 < n < n_one for _, n in parts)
    f64, _ = accumulate_second_moments(gpt2, windows, LAYERS, F64)
    for layer in LAYERS:
        C, n = merge_sums([(sums[layer], n) for sums, n in parts])
        assert n == n_one
        assert _frob(C, one[layer]) < 1e-10
        assert _frob(one[layer], f64[layer]) > 1e-12  # and these are the float32 numbers, not float64 ones


def test_float32_shard_entries_are_their_own(gpt2, tmp_path):
    store = CovarianceStore(gpt2, F32, tmp_path, remake_args=["model=tiny-gpt2"])
    paths = [store.collect_shard([1], i, 2)[0] for i in range(2)]
    assert all(p.parent == store.path(1).parent for p in paths)
    assert paths[0].parent != CovarianceStore(gpt2, F64, tmp_path).path(1).parent
    _, meta = read_entry(paths[0], {"kind": "mom2_shard", "precision": "float32", "dtype": "float64"})
    assert meta["shard"] == "0" and meta["shards"] == "2"
    # a float64 store sees no shards of its own: it neither merges these nor complains about them
    assert CovarianceStore(gpt2, F64, tmp_path).merge_ready([1]) == []
    merged = CovarianceStore(gpt2, F32, tmp_path).get(1)
    one = CovarianceStore(gpt2, F32, tmp_path / "one").get(1)
    assert _frob(merged, one) < 1e-6  # both stored as float32
    paths[1].unlink()
    store.path(1).unlink()
    with pytest.raises(MissingShardError) as err:
        CovarianceStore(gpt2, F32, tmp_path, remake_args=["model=tiny-gpt2"]).ensure([1])
    assert str(err.value).endswith("stats.max_length=48 stats.precision=float32 stats.shard=1 stats.shards=2")


# --- the cache ------------------------------------------------------------------------------


def test_the_two_precisions_live_apart_and_float64_keeps_todays_path(gpt2, tmp_path):
    key = hashlib.sha256(
        json.dumps({"corpus": "wikitext-bundled", "samples": 24, "max_length": 48}, sort_keys=True).encode()
    )
    today = (
        tmp_path
        / f"tiny-gpt2-{model_fingerprint(gpt2)}"
        / f"wikitext-bundled-{key.hexdigest()[:16]}"
        / "layer1_mom2_24.safetensors"
    )
    auto, f64, f32 = (CovarianceStore(gpt2, s, tmp_path) for s in (AUTO, F64, F32))
    assert auto.path(1) == f64.path(1) == today
    assert f32.path(1) != today and f32.path(1).name == today.name
    C64, C32 = f64.get(1), f32.get(1)
    assert today.is_file() and f32.path(1).is_file()
    assert read_entry(today, {"precision": "float64"})[1]["kind"] == "mom2"
    assert read_entry(f32.path(1), {"precision": "float32"})[1]["kind"] == "mom2"
    again64, again32 = CovarianceStore(gpt2, AUTO, tmp_path), CovarianceStore(gpt2, F32, tmp_path)
    assert again64.missing([1]) == [] and again32.missing([1]) == []
    assert torch.equal(again64.get(1), C64) and torch.equal(again32.get(1), C32)
    assert not torch.equal(C64, C32)


def test_an_entry_written_before_the_setting_still_loads_as_float64(gpt2, tmp_path):
    f64 = CovarianceStore(gpt2, AUTO, tmp_path)
    old_meta = {k: v for k, v in f64.metadata(1).items() if k != "precision"}
    C = torch.eye(gpt2.key_size(1))
    write_entry(f64.path(1), {"mom2": C}, {**old_meta, "windows": "24", "tokens": "1000"})
    assert torch.equal(CovarianceStore(gpt2, AUTO, tmp_path).get(1), C)
    # the same file at the float32 path is not a float32 entry: moved aside and rebuilt
    f32 = CovarianceStore(gpt2, F32, tmp_path)
    f32.path(1).parent.mkdir(parents=True, exist_ok=True)
    f32.path(1).write_bytes(f64.path(1).read_bytes())
    assert not torch.equal(f32.get(1), C)
    assert list(f32.path(1).parent.glob(f32.path(1).name + ".corrupt-*"))


# --- config and plan ------------------------------------------------------------------------


def test_a_bad_precision_is_a_one_line_config_error(gpt2, tmp_path):
    with pytest.raises(ConfigError) as err:
        compose_config(["stats.precision=float16"])
    assert str(err.value) == "unknown stats.precision 'float16' (choose: auto, float32, float64)"
    with pytest.raises(ConfigError, match="unknown stats.precision 'bf16'"):
        CovarianceStore(gpt2, StatsConfig(precision="bf16"), tmp_path)


def test_the_plan_follows_the_precision():
    shape = Shape(
        family="llama", hidden_size=10, intermediate_size=20, n_layers=6, n_heads=2, vocab_size=100, n_params=1000
    )
    facts = RunFacts(
        method="memit",
        strategy="spread",
        keep_previous_keys=False,
        critical=(1, 2),
        written=(1, 2),
        target_layers=(2,),
        points=1,
        batch_size=2,
        chunk=2,
        num_edits=4,
        n_templates=6,
        prefix_tokens=10,
        model_dtype="float32",
        state_dtype="float64",
        device="cpu",
        stats_max_length=64,
        stats_batch_tokens=128,
    )

    def items(**change):
        from dataclasses import replace

        return {i.name: i.bytes for i in make_plan(shape, replace(facts, **change)).items}

    assert items()["C update temporaries"] == 400 * 8  # CPU, auto: the float64 product only
    assert items()["captured keys"] == 128 * 20 * (2 * 4 + 8)
    assert items(device="cuda")["C update temporaries"] == 400 * (4 + 8)  # float32 product and its float64 copy
    assert items(stats_precision="float32")["captured keys"] == 128 * 20 * (2 * 4 + 4)
    assert run_facts(compose_config(["device=cpu"])).stats_precision == "float64"
    assert run_facts(compose_config(["device=cpu", "stats.precision=float32"])).stats_precision == "float32"
    assert run_facts(compose_config(["device=cuda"])).stats_precision == "float32"
