"""Real-shape benchmark (make bench-scale): random weights of a real architecture, no download.

Builds llama3-8b, gpt-j-6b or gpt2-xl from the shape facts in conf/model/<name>.yaml with
``AutoModelForCausalLM.from_config`` (bf16 on CUDA, float32 on CPU), or a ``--layers N``
slice of one, with the tiny model's tokenizer of the same family. For every batch size of
``--batch-sizes`` (the last, 1, is the papers' efficiency protocol of sequential single
edits) it edits ``--batches`` sequential batches of CounterFact (bundled sample) through the
project's own Strategy/Method/EditContext, three ways: blue's schedule (all requests together,
blocks before the target layer run once) with the direct solver and with the updated solver
(docs/solver.md), and the reference's schedule (one request at a time, full forward every
step) with the direct solver; per way: target optimisation, key collection, solves (with
recording the keys after a batch), writes, diagnostics, seconds per edit. Then the updated
solver's accuracy on the slice's statistics (``--accuracy``: sequences of batches of keys,
Delta against the direct float64 solve). Covariance throughput on a few corpus windows; peak
memory. Writes benchmarks/results/solver-<device>-<time>.json (all of it; scripts/solver_docs.py
renders docs/solver.md's block from it) and scale-<device>-<time>.json (the first batch size's
blue-schedule/updated and reference runs, the README's phase table).

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
SCHEDULES = {
    "blue": [],
    "reference": ["method.target.batched=false", "method.target.reuse_prefix=false", "method.target.reuse_past=false"],
}
# the ways each batch size is edited: (schedule, solver)
WAYS = {"direct": ("blue", "direct"), "updated": ("blue", "updated"), "reference": ("reference", "direct")}


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
    """Stands in for CovarianceStore: the C measured here; derived tensors (lambda C's factor,
    AlphaEdit's P) computed once and kept, as the store caches them beside the statistics, with
    the seconds their computation took."""

    def __init__(self, moments: dict[int, torch.Tensor]):
        self.moments = moments
        self.derived: dict[tuple[int, str], torch.Tensor] = {}
        self.seconds: dict[str, float] = {}

    def get(self, layer: int) -> torch.Tensor:
        return self.moments[layer]

    def missing(self, layers) -> list[int]:
        return [l for l in layers if l not in self.moments]

    def cached_tensor(self, layer, name, compute):
        if (layer, name) not in self.derived:
            sync()
            start = time.perf_counter()
            self.derived[layer, name] = compute(self.moments[layer])
            sync()
            self.seconds[f"{name}.{layer}"] = round(time.perf_counter() - start, 3)
        return self.derived[layer, name]


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


def edit_sequence(
    cfg,
    adapter,
    critical,
    requests,
    stats,
    way: str,
    strategy_name: str,
    batch_size: int,
    batches: int,
    steps,
    overrides: tuple[str, ...] = (),
) -> dict:
    """``batches`` sequential batches of ``batch_size`` edits one ``way`` (WAYS), from the unedited
    weights (restored after); seconds per phase summed over the batches (the session reports
    keys, targets, solves, record and writes to the timer it is built with), and per edit.
    ``overrides``: more config overrides (e.g. method.offload_state=true)."""
    from omegaconf import OmegaConf

    from blue_cli.config.overrides import compose_config
    from blue_cli.editing.session import build_session

    schedule, solver = WAYS[way]
    over = [f"method={cfg.method.name}", f"strategy={strategy_name}", f"method.solver={solver}", *SCHEDULES[schedule]]
    over += list(overrides)
    scfg = compose_config([f"model={cfg.model.name}", *over])
    OmegaConf.update(scfg, "model.layers", list(critical))
    if steps:
        OmegaConf.update(scfg, "method.target.steps", steps)
    timer = Timer()
    session = build_session(scfg, adapter, covariances=stats, timer=timer)
    method, written = session.method, session.written
    assert method.solver == solver, (method.solver, solver)
    if solver == "updated":  # the one-time factorisation per written layer (cached beside the statistics)
        with timer("factorisation"):
            for layer in written:
                method.system(layer)
    steps_taken, edit = [], 0.0
    try:
        for b in range(batches):
            with timer("batch"):
                row = session.edit_batch(requests[b * batch_size : (b + 1) * batch_size], b)
            edit += row["edit_seconds"]
            steps_taken += row["target_steps"]  # per target layer, the mean over the batch's requests
    finally:
        for l, w in session.originals.items():
            adapter.set_rewrite(l, w)
    s = timer.seconds
    s["total"] = s.pop("batch")
    s["edit"] = edit
    s["diagnostics"] = s["total"] - edit
    # solve_seconds: the closed form and keeping its state (C_prev or the recorded keys) after a batch
    s["solve_seconds"] = s.get("solves", 0.0) + s.get("record", 0.0)
    s["edit_seconds"] = s["edit"]
    edits = batch_size * batches
    s["seconds_per_edit"] = s["edit"] / edits
    out = {k: round(v, 4) for k, v in s.items()}
    out.update(
        edits=edits,
        batches=batches,
        solve_share=round(s["solve_seconds"] / s["edit"], 4),
        mean_target_steps=round(sum(steps_taken) / max(1, len(steps_taken)), 2),
        refactorisations=sum(getattr(method, "refactorisations", {}).values()),
        max_residual=max(method.residuals.values(), default=None) if solver == "updated" else None,
    )
    return out


def solver_accuracy(cfg, stats, layer: int, d: int, protocol: tuple[int, int], checkpoints: int, seed: int = 0) -> dict:
    """The updated solver against the direct float64 solve over ``protocol`` = (batches, batch
    size) sequential batches of ``cfg.method``'s keep-previous-keys form: every batch, Delta from
    the updated system is solved, then the batch's later keys are recorded (C_prev, recorded
    keys); at ``checkpoints`` evenly spaced batches (the last included) the direct solver solves
    the same batch and the relative Frobenius difference of the two Deltas is kept. Keys are
    drawn from N(0, C) (C = this slice's statistics), R ~ N(0, 1)."""
    from blue_cli.config.overrides import compose_config
    from blue_cli.config.registry import method_class

    batches, size = protocol
    made = {}
    for solver in ("direct", "updated"):
        over = [f"model={cfg.model.name}", f"method={cfg.method.name}", f"method.solver={solver}"]
        mcfg = compose_config(over).method
        mcfg.keep_previous_keys = True
        made[solver] = method_class(mcfg.name)(mcfg, [layer])
        made[solver].prepare(stats, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    direct, updated = made["direct"], made["updated"]
    device = updated.device
    g = torch.Generator(device="cpu").manual_seed(seed)
    # keys ~ N(0, C): C = L L^T / lambda with L lambda C's Cholesky factor (the updated solver's first);
    # every batch's keys and later keys drawn at once (one product with L, not one per batch)
    factor = updated.system(layer).factor
    assert factor.kind == "cholesky", factor.kind
    scale = float(updated.cfg.cov_weight) ** -0.5
    z = torch.randn(factor.value.shape[0], 2 * batches * size, generator=g, dtype=torch.float64)
    keys = (scale * (factor.value @ z.to(device))).split(size, dim=1)
    residuals = torch.randn(d, batches * size, generator=g, dtype=torch.float64).to(device).split(size, dim=1)
    check_at = sorted({max(0, round((i + 1) * batches / checkpoints) - 1) for i in range(checkpoints)})
    rows, timer, pending = [], Timer(), []
    for b in range(batches):
        K, R, K_after = keys[2 * b], residuals[b], keys[2 * b + 1]
        with timer("updated"):
            delta = updated.solve(layer, K, R)
        if b in check_at:
            if pending:  # the direct solver's C_prev: the same keys, added in one product
                direct.record_keys(layer, torch.cat(pending, dim=1))
                pending = []
            with timer("direct"):
                reference = direct.solve(layer, K, R)
            rows.append(
                {
                    "batch": b + 1,
                    "relative_difference": float((delta - reference).norm() / reference.norm()),
                    "residual": updated.residuals[layer],
                    "recorded_keys": updated.systems[layer].recorded,
                }
            )
        with timer("updated"):
            updated.record_keys(layer, K_after)
        pending.append(K_after)
    return {
        "batches": batches,
        "batch_size": size,
        "layer": layer,
        "cov_weight": float(updated.cfg.cov_weight),
        "checks": rows,
        "max_relative_difference": max(r["relative_difference"] for r in rows),
        "refactorisations": updated.refactorisations[layer],
        "updated_seconds": round(timer.seconds.get("updated", 0.0), 2),
        "direct_seconds_per_solve": round(timer.seconds.get("direct", 0.0) / len(rows), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="llama3-8b")
    parser.add_argument(
        "--layers", type=int, default=None, help="build only the first N blocks (default: all on CUDA, 2 on CPU)"
    )
    parser.add_argument(
        "--batch-sizes", default=None, help="edits per batch, comma-separated (default: 100,1 on CUDA, 4,1 on CPU)"
    )
    parser.add_argument(
        "--batches",
        default=None,
        help="sequential batches per batch size, comma-separated (default: 2,10 on CUDA, 1,3 on CPU)",
    )
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
    parser.add_argument(
        "--accuracy",
        default="300x1,20x100",
        help="updated-vs-direct protocols, BATCHESxSIZE comma-separated ('' for none), on --accuracy-method",
    )
    parser.add_argument("--accuracy-method", default="memit_seq")
    parser.add_argument("--checkpoints", type=int, default=3, help="direct solves per accuracy protocol")
    parser.add_argument("--windows", type=int, default=4, help="corpus windows for the covariance throughput")
    parser.add_argument("--window-length", type=int, default=256)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    args.layers = args.layers if args.layers is not None else (None if cuda else 2)
    sizes = [int(x) for x in (args.batch_sizes or ("100,1" if cuda else "4,1")).split(",")]
    counts = [int(x) for x in (args.batches or ("2,10" if cuda else "1,3")).split(",")]
    if len(counts) != len(sizes):
        raise SystemExit(f"--batches gives {len(counts)} counts for {len(sizes)} batch sizes")
    args.batch_size = max(sizes)
    args.strategies = args.strategies or ("spread,blue" if cuda else "blue")
    args.steps = args.steps or (None if cuda else 5)

    from blue_cli.datasets.counterfact.records import load_counterfact

    t0 = time.perf_counter()
    cfg, adapter, critical, info = build(args)
    info["build_seconds"] = round(time.perf_counter() - t0, 2)
    requests = load_counterfact("bundled", limit=max(s * c for s, c in zip(sizes, counts, strict=True)))
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
    stats = FixedStats(moments)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    strategies = args.strategies.split(",")
    common = {
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "method": args.method,
        "target_steps": args.steps or int(cfg.method.target.steps),
        "model": info,
        "covariance": cov,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs: dict[str, dict] = {}
    accuracy: list[dict] = []

    def write(prefix: str, result: dict) -> None:
        """Atomically (re)write this run's file: after every measurement, so an interrupted
        benchmark leaves what it measured (``complete`` says whether it finished)."""
        out = RESULTS / f"{prefix}-{slug}-{stamp}.json"
        peak = {
            "peak_memory_bytes": peak_bytes(),
            "peak_memory_kind": "torch.cuda.max_memory_allocated" if torch.cuda.is_available() else "max RSS",
            "wall_seconds": round(time.perf_counter() - t0, 1),
        }
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({**result, **peak}, indent=2))
        os.replace(tmp, out)

    def solver_file(complete: bool) -> None:
        write(
            "solver",
            {
                **common,
                "complete": complete,
                "batch_sizes": sizes,
                "batches": counts,
                "ways": {k: {"schedule": v[0], "solver": v[1]} for k, v in WAYS.items()},
                "runs": runs,
                "ratios": solver_ratios(runs),
                "derived_seconds": stats.seconds,
                "accuracy": accuracy,
            },
        )

    for size, count in zip(sizes, counts, strict=True):
        for strategy in strategies:
            for way in WAYS:
                key = f"batch{size}/{strategy}/{way}"
                runs[key] = edit_sequence(
                    cfg, adapter, critical, requests, stats, way, strategy, size, count, args.steps
                )
                print(json.dumps({key: runs[key]}), flush=True)
                solver_file(False)
    print(json.dumps({"ratios": solver_ratios(runs)}), flush=True)
    accuracy_cfg = cfg.copy()
    accuracy_cfg.method.name = args.accuracy_method
    for spec in filter(None, args.accuracy.split(",")):
        batches, size = (int(x) for x in spec.split("x"))
        d = info["hidden_size"]
        result = solver_accuracy(accuracy_cfg, stats, critical[0], d, (batches, size), args.checkpoints)
        result["method"] = args.accuracy_method
        accuracy.append(result)
        print(json.dumps({"accuracy": result}), flush=True)
        solver_file(False)
    solver_file(True)
    first = sizes[0]
    write(
        "scale",
        {
            **common,
            "batch_size": first,
            "seconds": {
                f"{s}/{schedule}": runs[f"batch{first}/{s}/{'updated' if schedule == 'blue' else 'reference'}"]
                for s in strategies
                for schedule in SCHEDULES
            },
            "reference_over_blue": {
                s: {
                    k: round(
                        runs[f"batch{first}/{s}/reference"][k] / max(runs[f"batch{first}/{s}/updated"][k], 1e-9), 2
                    )
                    for k in ("targets", "edit", "total")
                }
                for s in strategies
            },
        },
    )
    print(f"written {RESULTS}/solver-{slug}-{stamp}.json and scale-{slug}-{stamp}.json", file=sys.stderr)


def solver_ratios(runs: dict[str, dict]) -> dict[str, dict]:
    """Per batch size and strategy with all three ways measured: the ratios the docs show."""
    ratios = {}
    for key in runs:
        batch, strategy, _ = key.split("/")
        way = {w: runs.get(f"{batch}/{strategy}/{w}") for w in WAYS}
        if f"{batch}/{strategy}" in ratios or any(r is None for r in way.values()):
            continue
        ratios[f"{batch}/{strategy}"] = {
            "direct_over_updated_seconds_per_edit": round(
                way["direct"]["seconds_per_edit"] / way["updated"]["seconds_per_edit"], 2
            ),
            "reference_over_updated_seconds_per_edit": round(
                way["reference"]["seconds_per_edit"] / way["updated"]["seconds_per_edit"], 2
            ),
            "direct_over_updated_solve_seconds": round(
                way["direct"]["solve_seconds"] / max(way["updated"]["solve_seconds"], 1e-9), 1
            ),
            "solve_share_direct": way["direct"]["solve_share"],
            "solve_share_updated": way["updated"]["solve_share"],
        }
    return ratios


if __name__ == "__main__":
    main()
