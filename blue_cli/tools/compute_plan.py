"""The compute of a run by phase, and the least time it can take on a known GPU.

``blue plan --gpu a40`` adds this to the memory plan. FLOPs are counted from the
shape the way the runner spends them: matrix products only (2 x the block's weights
per token and block forward, the attention scores, the vocabulary head), the
backward pass of target optimisation as much again (the weights are frozen, so only
input gradients), and the float64 solves by their textbook counts. Each phase is
divided by the GPU's datasheet peak in the dtype it runs in (the model's for
forwards, float64 for solves, the statistics precision for the key products). Real
kernels reach a fraction of peak, so the times are lower bounds: they say which
phase dominates and whether a run takes minutes or days, not its measured time
(``make bench-scale`` on the GPU gives that). A test checks the counted target and
key FLOPs against torch's own FLOP counter on a tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass

from blue_cli.errors import ConfigError
from blue_cli.models.families.spec import family_named
from blue_cli.tools.memory_plan import (
    PROMPT_TOKENS,
    TARGET_TOKENS_MAX,
    TARGET_TOKENS_MEAN,
    RunFacts,
    Shape,
    run_lengths,
    sequence_length,
)

# The statistics pass is counted per this many tokens: how many a corpus gives depends on
# its documents' lengths (at most samples x window; Wikipedia articles are mostly shorter).
STATS_TOKENS = 100_000_000
# Forward passes of the batch's prompts with their targets in a batch's diagnostics:
# log-probabilities before, after and with z injected, values before and after.
DIAGNOSTIC_FORWARDS = 5


@dataclass(frozen=True)
class Gpu:
    """Datasheet peaks in FLOP/s, dense: 16-bit tensor cores, float32 without TF32
    (blue keeps TF32 off), float64 (tensor cores where the card has them)."""

    name: str
    bf16: float
    fp32: float
    fp64: float

    def peak(self, dtype: str) -> float:
        return {"bfloat16": self.bf16, "float16": self.bf16, "float32": self.fp32, "float64": self.fp64}[dtype]


GPUS = {
    "a40": Gpu("NVIDIA A40", 149.7e12, 37.4e12, 0.585e12),
    "a100": Gpu("NVIDIA A100 SXM", 312e12, 19.5e12, 19.5e12),
    "h100": Gpu("NVIDIA H100 SXM", 989e12, 67e12, 67e12),
    "h200": Gpu("NVIDIA H200", 989e12, 67e12, 67e12),
}


def gpu(name: str) -> Gpu:
    if name.lower() not in GPUS:
        raise ConfigError(f"unknown --gpu '{name}' (choose: {', '.join(GPUS)})")
    return GPUS[name.lower()]


@dataclass(frozen=True)
class Phase:
    """FLOPs of one phase per batch (or once, for the statistics pass), and its dtype."""

    name: str
    flops: float
    dtype: str
    per_batch: bool = True
    note: str = ""


def block_weights(shape: Shape) -> int:
    """Weights of one block's matrices: attention (GQA's smaller K and V) and the MLP."""
    d, dk = shape.hidden_size, shape.intermediate_size
    kv = d * (shape.n_kv_heads or shape.n_heads) // shape.n_heads
    return 2 * d * d + 2 * d * kv + family_named(shape.family).mlp_matrices * d * dk


def forward_flops(shape: Shape, tokens: int, blocks: int, seq_len: int) -> float:
    """``tokens`` tokens (rows of ``seq_len``) through ``blocks`` blocks: the products with
    the weights and the attention scores and values (4 seq_len d per token and block)."""
    return tokens * blocks * (2 * block_weights(shape) + 4 * seq_len * shape.hidden_size)


def head_flops(shape: Shape, rows: int) -> float:
    return 2 * rows * shape.hidden_size * shape.vocab_size


def target_flops(
    shape: Shape,
    facts: RunFacts,
    layer: int,
    steps: int,
    reuse_prefix: bool = True,
    seq_len: int | None = None,
    target_mean: float = TARGET_TOKENS_MEAN,
    run_len: int | None = None,
    past_len: int | None = None,
) -> float:
    """Optimising the targets of all ``batch_size`` requests at ``layer`` for ``steps`` steps.

    Per step, forward and backward through the blocks after the target point (the last
    step only forward); the blocks
    before it run once per batch when the prefix is reused (else every step, the
    reference's schedule). Split at the subject (``facts.reuse_past``), the steps run
    ``run_len`` positions per sequence attending to ``past_len`` cached ones, after one
    forward of the cached positions; one forward of the plain prompts to ``layer`` reads
    the initial states. ``seq_len``, ``target_mean``: a batch's
    real padded length and mean target tokens (default: CounterFact's, as the memory plan)."""
    seq_len = seq_len or sequence_length(facts.prefix_tokens)
    run, past = run_lengths(facts, seq_len, run_len, past_len)
    sequences = facts.batch_size * (facts.n_templates + 1)
    rows = facts.batch_size * (facts.n_templates * target_mean + 1)
    after = shape.n_layers - layer - 1 + (1 if facts.points > 1 else 0)
    before = shape.n_layers - after
    suffix = forward_flops(shape, sequences * run, after, past + run) + head_flops(shape, rows)
    prefix = forward_flops(shape, sequences * run, before, past + run)
    cache = forward_flops(shape, sequences * past, shape.n_layers, past) if past else 0.0
    initial = forward_flops(shape, facts.batch_size * seq_len, layer + 1, seq_len)  # the plain prompts' states
    # ``steps`` forwards, a backward after all but the last (as the reference counts steps)
    return (2 * steps - 1) * suffix + (prefix if reuse_prefix else steps * prefix) + cache + initial


def key_flops(shape: Shape, facts: RunFacts, layer: int, seq_len: int | None = None) -> float:
    """One key collection at ``layer``: every context template with the prompt, to that layer."""
    seq_len = seq_len or facts.prefix_tokens + 2 + PROMPT_TOKENS
    return forward_flops(shape, facts.batch_size * facts.n_templates * seq_len, layer + 1, seq_len)


def solve_flops(shape: Shape, facts: RunFacts) -> float:
    """One layer's closed-form write (the method's declared ``solve_flops``, or ``updated_solve_flops``
    under the updated solver): n = batch_size keys."""
    return facts.declared_solve_flops(shape.hidden_size, shape.intermediate_size, facts.batch_size)


def phases(shape: Shape, facts: RunFacts) -> list[Phase]:
    """The run's compute by phase: per batch (at most ``target_steps`` steps: early
    stopping only shortens it), and the statistics pass once per model."""
    from blue_cli.editing.statistics.precision import product_precision

    steps, reuse_prefix, samples = facts.target_steps, facts.reuse_prefix, facts.stats_samples
    dtype = facts.model_dtype
    writes = len(facts.written)
    z_layers = facts.target_layers
    targets = sum(target_flops(shape, facts, l, steps, reuse_prefix) for l in z_layers)
    keys = sum(key_flops(shape, facts, l) for l in facts.written)
    if facts.keep_previous_keys:  # C_prev's keys after the batch, one forward to the deepest written layer
        keys += key_flops(shape, facts, max(facts.written))
    value_len = PROMPT_TOKENS
    values = writes * forward_flops(shape, facts.batch_size * value_len, max(facts.critical) + 1, value_len)
    diag_len = PROMPT_TOKENS + TARGET_TOKENS_MAX
    diagnostics = DIAGNOSTIC_FORWARDS * (
        forward_flops(shape, facts.batch_size * diag_len, shape.n_layers, diag_len)
        + head_flops(shape, facts.batch_size * diag_len)
    )
    window = min(facts.stats_max_length, shape.max_positions)
    tokens = STATS_TOKENS
    stats_forward = forward_flops(shape, tokens, max(facts.written) + 1, window)
    stats_products = writes * 2 * shape.intermediate_size**2 * tokens
    return [
        Phase(
            "target optimisation",
            targets,
            dtype,
            note=f"{steps} steps at layers {list(z_layers)}, {facts.batch_size} requests",
        ),
        Phase(
            "key collection",
            keys + values,
            dtype,
            note=f"{writes} writes" + (" + C_prev's keys" if facts.keep_previous_keys else ""),
        ),
        Phase(
            "solves",
            writes * solve_flops(shape, facts),
            "float64",
            note=f"{writes} x d_k={shape.intermediate_size} systems, {facts.solver} solver",
        ),
        Phase("diagnostics", diagnostics, dtype, note=f"{DIAGNOSTIC_FORWARDS} forwards of the batch"),
        Phase(
            "statistics forward",
            stats_forward,
            dtype,
            per_batch=False,
            note=f"per 100M tokens ({samples} documents: up to {samples * window / 1e6:.0f}M)",
        ),
        Phase(
            "statistics products",
            stats_products,
            product_precision(facts.stats_precision, facts.device),
            per_batch=False,
            note=f"{writes} x d_k^2 per token",
        ),
    ]


def seconds_at_peak(phase: Phase, card: Gpu) -> float:
    return phase.flops / card.peak(phase.dtype)


def run_seconds(items: list[Phase], card: Gpu, batches: int) -> tuple[float, float]:
    """(edit time of the whole run, statistics pass per 100M tokens) at peak: lower bounds."""
    edit = batches * sum(seconds_at_peak(p, card) for p in items if p.per_batch)
    stats = sum(seconds_at_peak(p, card) for p in items if not p.per_batch)
    return edit, stats


def as_dict(items: list[Phase], card: Gpu, batches: int) -> dict:
    edit, stats = run_seconds(items, card, batches)
    return {
        "gpu": card.name,
        "phases": [{**p.__dict__, "seconds_at_peak": seconds_at_peak(p, card)} for p in items],
        "batches": batches,
        "edit_seconds_at_peak": edit,
        "statistics_seconds_at_peak_per_token": stats / STATS_TOKENS,
    }
