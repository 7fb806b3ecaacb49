"""Real-shape benchmark (make bench-scale): random weights of a real architecture, no download.

Builds llama3-8b, gpt-j-6b or gpt2-xl from the shape facts in conf/model/<name>.yaml with
``AutoModelForCausalLM.from_config`` (bf16 on CUDA, float32 on CPU), or a ``--layers N``
slice of one, with the tiny model's tokenizer of the same family. Times one batch of
CounterFact edits (bundled sample) through the project's own Strategy/Method/EditContext:
target optimisation, key collection, solves, writes and diagnostics, under blue's schedule
(all requests together, blocks before the target layer run once) and the reference's
(one request at a time, full forward every step), as ratios from the same run; covariance
throughput on a few corpus windows; peak memory. Writes benchmarks/results/scale-<device>-<time>.json.

On CPU a slice takes the tiny tokenizer's vocabulary (4096) instead of the real one: the
unembedding of 128k words would dominate a 2-layer slice. The statistics come from a few
windows only, so C gets a small ridge (1e-3 of its mean diagonal) to be invertible.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODELS = {
    "llama3-8b": ("llama3", "tiny-llama"),
    "gpt-j-6b": ("gpt-j", "tiny-gptj"),
    "gpt2-xl": ("gpt2-xl", "tiny-gpt2"),
}
SCHEDULES = {"blue": [], "reference": ["method.target.batched=false", "method.target.reuse_prefix=false"]}


def hf_config(shape, n_layers: int, vocab: int):
    """The HF config object of ``shape`` with ``n_layers`` blocks and ``vocab`` words."""
    from transformers import GPT2Config, GPTJConfig, LlamaConfig, Qwen2Config

    if shape.family == "gpt2":
        return GPT2Config(
            n_embd=shape.hidden_size,
            n_inner=shape.intermediate_size,
            n_layer=n_layers,
            n_head=shape.n_heads,
            vocab_size=vocab,
            n_positions=shape.max_positions,
        )
    if shape.family == "gptj":  # GPT-J-6B rotates a quarter of each head (rotary_dim 64 of 256)
        return GPTJConfig(
            n_embd=shape.hidden_size,
            n_inner=shape.intermediate_size,
            n_layer=n_layers,
            n_head=shape.n_heads,
            vocab_size=vocab,
            n_positions=shape.max_positions,
            rotary_dim=shape.hidden_size // shape.n_heads // 4,
            tie_word_embeddings=False,
        )
    cls = LlamaConfig if shape.family == "llama" else Qwen2Config
    return cls(
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=n_layers,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads or shape.n_heads,
        vocab_size=vocab,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=False,
    )


class Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            with self(name):
                return fn(*args, **kwargs)

        return timed


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_bytes() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class FixedStats:
    """Stands in for CovarianceStore: the C measured here, derived tensors computed on demand."""

    def __init__(self, moments: dict[int, torch.Tensor]):
        self.moments = moments

    def get(self, layer: int) -> torch.Tensor:
        return self.moments[layer]

    def cached_tensor(self, layer, name, compute):
        return compute(self.moments[layer])

    def missing(self, layers) -> list[int]:
        return [l for l in layers if l not in self.moments]


def build(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blue_cli.config.overrides import compose_config
    from blue_cli.models.adapter import ModelAdapter
    from blue_cli.models.tiny import tiny_model_dir
    from blue_cli.tools.memory_plan import model_shape

    yaml_name, tiny = MODELS[args.model]
    cfg = compose_config(
        [f"model={yaml_name}", f"method={args.method}", f"batch_size={args.batch_size}", f"num_edits={args.batch_size}"]
    )
    shape = model_shape(cfg.model)
    cuda = torch.cuda.is_available()
    n_layers = args.layers or shape.n_layers
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir(tiny)))
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "right"
    sliced = n_layers < shape.n_layers
    vocab = len(tok) if (sliced and not cuda) else shape.vocab_size
    dtype = torch.bfloat16 if cuda else torch.float32
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(hf_config(shape, n_layers, vocab), dtype=dtype)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    adapter = ModelAdapter(model, tok, name=args.model)
    real = [l for l in cfg.model.layers if l < n_layers - 1]
    critical = real or list(range(max(1, min(len(cfg.model.layers), n_layers - 1))))
    info = {
        "model": args.model,
        "n_layers": n_layers,
        "of_layers": shape.n_layers,
        "vocab": vocab,
        "real_vocab": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "d_k": shape.intermediate_size,
        "dtype": str(dtype).removeprefix("torch."),
        "critical_layers": critical,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    return cfg, adapter, critical, info


def covariance(adapter, layers, windows: int, length: int, timer: Timer):
    from blue_cli.config.schema import StatsConfig
    from blue_cli.editing.statistics.corpus import load_corpus
    from blue_cli.editing.statistics.store import accumulate_second_moments, token_windows

    docs = load_corpus("wikitext-bundled", max_docs=windows * 4)
    chunks = token_windows(adapter.tok, docs, length, windows)
    with timer("covariance"):
        moments, tokens = accumulate_second_moments(
            adapter, chunks, layers, StatsConfig(max_length=length, batch_tokens=length)
        )
    for layer, C in moments.items():
        moments[layer] = (C + 1e-3 * C.diagonal().mean() * torch.eye(C.shape[0], dtype=C.dtype)).float()
    return moments, tokens


def edit_once(
    cfg, adapter, critical, requests, moments, schedule: list[str], strategy_name: str, steps: int | None
) -> dict:
    """One batch under one schedule, from the unedited weights; seconds per phase (the
    session reports keys, targets, solves and writes to the timer it is built with)."""
    from omegaconf import OmegaConf

    from blue_cli.config.overrides import compose_config
    from blue_cli.editing.session import build_session

    over = [f"method={cfg.method.name}", f"strategy={strategy_name}", *schedule]
    scfg = compose_config([f"model={cfg.model.name}", *over])
    OmegaConf.update(scfg, "model.layers", list(critical))
    if steps:
        OmegaConf.update(scfg, "method.target.steps", steps)
    timer = Timer()
    session = build_session(scfg, adapter, stats=FixedStats(moments), timer=timer)
    try:
        with timer("batch"):
            row = session.edit_batch(requests, 0)
    finally:
        for l, w in session.originals.items():
            adapter.set_rewrite(l, w)
    s = timer.seconds
    s["total"] = s.pop("batch")
    s["edit"] = row["edit_seconds"]
    s["diagnostics"] = s["total"] - s["edit"]
    return {k: round(v, 3) for k, v in s.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="llama3-8b")
    parser.add_argument(
        "--layers", type=int, default=None, help="build only the first N blocks (default: all on CUDA, 2 on CPU)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="edits per batch (default: 100 on CUDA, 4 on CPU)")
    parser.add_argument("--method", default="memit")
    parser.add_argument(
        "--strategies",
        default=None,
        help="default: spread,blue on CUDA; blue on CPU (a 2-layer slice writes one layer, so both are the same)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="target optimisation steps (default: the model's hparams on CUDA, 5 on CPU)",
    )
    parser.add_argument("--windows", type=int, default=4, help="corpus windows for the covariance throughput")
    parser.add_argument("--window-length", type=int, default=256)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    args.layers = args.layers if args.layers is not None else (None if cuda else 2)
    args.batch_size = args.batch_size or (100 if cuda else 4)
    args.strategies = args.strategies or ("spread,blue" if cuda else "blue")
    args.steps = args.steps or (None if cuda else 5)

    from blue_cli.datasets.counterfact.records import load_counterfact

    t0 = time.perf_counter()
    cfg, adapter, critical, info = build(args)
    info["build_seconds"] = round(time.perf_counter() - t0, 2)
    requests = load_counterfact("bundled", limit=args.batch_size)
    timer = Timer()
    layers = sorted(set(critical))
    moments, tokens = covariance(adapter, layers, args.windows, args.window_length, timer)
    cov = {
        "tokens": tokens,
        "layers": layers,
        "seconds": round(timer.seconds["covariance"], 3),
        "tokens_per_second": round(tokens / timer.seconds["covariance"], 1),
    }
    print(json.dumps({"model": info, "covariance": cov}), flush=True)
    runs = {}
    for strategy in args.strategies.split(","):
        for name, schedule in SCHEDULES.items():
            runs[f"{strategy}/{name}"] = edit_once(
                cfg, adapter, critical, requests, moments, schedule, strategy, args.steps
            )
            print(json.dumps({f"{strategy}/{name}": runs[f"{strategy}/{name}"]}), flush=True)
    ratios = {
        s: {
            k: round(runs[f"{s}/reference"][k] / max(runs[f"{s}/blue"][k], 1e-9), 2)
            for k in ("targets", "edit", "total")
        }
        for s in args.strategies.split(",")
    }
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    result = {
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "method": args.method,
        "target_steps": args.steps or int(cfg.method.target.steps),
        "model": info,
        "covariance": cov,
        "seconds": runs,
        "reference_over_blue": ratios,
        "peak_memory_bytes": peak_bytes(),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if torch.cuda.is_available() else "max RSS",
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
    out = RESULTS / f"scale-{slug}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    print(json.dumps({"ratios": ratios, "peak_memory_gb": round(result["peak_memory_bytes"] / 1e9, 2)}), flush=True)
    print(f"written {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
