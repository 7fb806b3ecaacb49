"""The memory and disk plan of a run, from the model's shape and the config alone.

Pure arithmetic (no model, no download): ``blue plan`` shows it before a multi-hour run.
The plan names no method, strategy or family: it asks the registry. A method declares
the matrices it keeps and solves with (``EditMethod.state_matrices``, ``solve_matrices``),
a strategy where it optimises targets (``Strategy.target_layers``), the family spec the
architecture's shape facts (``FamilySpec``); ``tests/integration/test_plan_measured.py``
compares the items with what a tiny model really allocates.

Phases on the compute device, which do not overlap in time:
- ``statistics``: the one corpus pass that builds C (skipped when C is cached);
- ``targets``: target-vector optimisation (activations saved for the backward pass);
- ``solve``: the closed-form update of one layer.
Resident through the whole run: model weights, the method state (C, P, C_prev) and the
runner's copies of the written matrices. Decimal units: 1 GB = 1e9 bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from omegaconf import DictConfig, OmegaConf

from blue_cli.editing.methods.base import EditMethod, planned_solver
from blue_cli.errors import ConfigError
from blue_cli.models.families.spec import family_named

GB = 1e9
DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}

# Activation elements autograd saves per token and block when only activations need
# gradients (weights are frozen, so a Linear saves no input): attention saves q, k, v and
# its output (4h, k and v repeated to every head); each norm saves its input (h), and the
# MLP what its family spec says (FamilySpec.mlp_saved_dk, norms_saved, norm_float32).
# The usual "34 h bytes in 16-bit" is a GPT estimate with weight gradients and dropout
# masks, which target optimisation has not.
ATTENTION_H = 4
# Per token, outside the blocks: embeddings, the replayed frozen prefix output, the final norm's input.
OUTSIDE_H = 3

# Copies of each written matrix (float32, d x d_k) the runner holds during a batch: the
# originals and the pre-batch weights (shared by diagnostics, NaN restore and revision).
WEIGHT_COPIES = 2
# Per edit, cases.jsonl + cases_pre.jsonl (measured: tiny-gpt2, generation on, ~0.97 KB).
CASE_BYTES = 1000
# Checkpoint metadata per batch (its JSON row) and fixed header; per write, its
# fingerprint (two float64 in JSON), layer and tensor header.
ROW_BYTES = 400
FINGERPRINT_BYTES = 120
# CounterFact token counts for the padded target-optimisation batch (BPE vocabularies of
# 50k-150k): the longest prompt in a batch of requests, the longest and the mean target.
PROMPT_TOKENS = 16
TARGET_TOKENS_MAX = 4
TARGET_TOKENS_MEAN = 2
# Padded positions a target step runs once the batch is split at the subject's last token
# (that token, the rest of the prompt, the target but its last): the most over batches of 10
# of the bundled CounterFact records, GPT-2's and Llama's tokenizers (mean 6.5).
RUN_TOKENS = 8


@dataclass(frozen=True)
class Shape:
    """What the plan needs of the architecture (see ``ModelShape`` in config/schema.py);
    ``family`` is the config's model_type (gpt2, gptj, llama, qwen2), whose FamilySpec
    (``family_named``) holds the facts the plans need."""

    family: str
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    vocab_size: int
    n_params: int
    n_kv_heads: int | None = None
    max_positions: int = 2048


@dataclass(frozen=True)
class Item:
    """One line of the plan: bytes in a phase (``resident``, ``statistics``, ``targets``,
    ``solve``, ``disk``, ``host``)."""

    name: str
    phase: str
    bytes: int
    note: str = ""


@dataclass
class Plan:
    items: list[Item]
    budget: int | None = None
    facts: dict = field(default_factory=dict)

    def total(self, phase: str) -> int:
        return sum(i.bytes for i in self.items if i.phase == phase)

    def phase_peak(self, phase: str) -> int:
        """Device bytes while ``phase`` runs: everything resident plus the phase's own."""
        return self.total("resident") + self.total(phase)

    @property
    def peak(self) -> int:
        return max(self.phase_peak(p) for p in ("statistics", "targets", "solve"))

    @property
    def peak_phase(self) -> str:
        return max(("statistics", "targets", "solve"), key=self.phase_peak)

    @property
    def edit_peak(self) -> int:
        """The peak once statistics are cached (every run after the first on a model)."""
        return max(self.phase_peak("targets"), self.phase_peak("solve"))

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.peak <= self.budget

    def as_dict(self) -> dict:
        return {
            "facts": self.facts,
            "items": [i.__dict__ for i in self.items],
            "phase_peaks": {p: self.phase_peak(p) for p in ("statistics", "targets", "solve")},
            "peak": self.peak,
            "peak_phase": self.peak_phase,
            "edit_peak": self.edit_peak,
            "disk": self.total("disk"),
            "budget": self.budget,
            "fits": self.fits,
        }


def parse_size(text: str) -> int:
    """'48GB' -> 48e9 bytes; GB/MB/TB are decimal, GiB/MiB/TiB binary; a bare number is GB."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?|B)?\s*", text, flags=re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"bad memory size '{text}' (e.g. 48GB, 80GiB, 24000MB)")
    unit = (m.group(2) or "GB").upper().rstrip("B") or "B"
    scale = {"B": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    return int(float(m.group(1)) * scale)


def shape_from_hf_config(config: dict) -> Shape:
    """A Shape from an HF ``config.json``, through its family's config keys; n_params left 0."""
    kind = str(config.get("model_type"))
    keys = family_named(kind).config_keys
    h = config[keys.hidden_size]
    return Shape(
        kind,
        h,
        config.get(keys.intermediate_size) or 4 * h,
        config[keys.n_layers],
        config[keys.n_heads],
        config["vocab_size"],
        0,
        config.get(keys.n_kv_heads) if keys.n_kv_heads else None,
        config.get(keys.max_positions, 2048),
    )


def _tiny_shape(source: str) -> Shape:
    from safetensors import safe_open

    from blue_cli.models.tiny import tiny_model_dir

    folder = tiny_model_dir(source)
    config = json.loads((folder / "config.json").read_text())
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        n_params = sum(
            _numel(f.get_slice(k).get_shape())
            for k in f.keys()
            if not (k == "lm_head.weight" and config.get("tie_word_embeddings"))
        )
    shape = shape_from_hf_config(config)
    return Shape(**{**shape.__dict__, "n_params": n_params})


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def model_shape(model: DictConfig) -> Shape:
    """The shape facts of ``model``: its YAML's ``shape``, or a tiny model's committed config.json."""
    from blue_cli.models.tiny import is_tiny

    if model.get("shape") is not None:
        s = OmegaConf.to_container(model.shape)
        family_named(s["family"])  # known, or a one-line error
        return Shape(**s)
    if is_tiny(model.source):
        return _tiny_shape(model.source)
    raise ConfigError(
        f"model '{model.name}' has no shape facts (add model.shape to its YAML: hidden_size, intermediate_size, ...)"
    )


@dataclass(frozen=True)
class RunFacts:
    """What the plan reads from a composed config, in plain values."""

    method: str  # names, for display only: what the plan counts comes from the declarations below
    strategy: str
    keep_previous_keys: bool
    critical: tuple[int, ...]
    written: tuple[int, ...]
    target_layers: tuple[int, ...]
    points: int  # target vectors per request (PMET: 2)
    batch_size: int
    chunk: int  # requests per target-optimisation chunk
    num_edits: int
    n_templates: int  # "{}" plus the prefixes
    prefix_tokens: int
    model_dtype: str
    state_dtype: str
    device: str
    stats_max_length: int
    stats_batch_tokens: int
    stats_precision: str = "auto"  # dtype of the statistics pass's key products (auto: by device)
    stats_samples: int = 100_000
    target_steps: int = 25
    reuse_prefix: bool = True
    reuse_past: bool = True  # method.target.reuse_past: steps run only the positions from the subject on
    state_matrices: tuple[str, ...] = ("statistics C",)  # EditMethod.state_matrices
    solve_matrices: int = 3  # EditMethod.solve_matrices (+1 if it upcasts a float32 state matrix)
    solve_flops: Callable[[int, int, int], float] = EditMethod.solve_flops  # its declared FLOPs
    solver: str = "direct"  # method.solver, resolved: "auto" becomes whichever fits (planned_facts)
    solver_choice: str = "direct"  # method.solver as configured
    updated_solve_matrices: int = 2  # EditMethod.updated_solve_matrices
    updated_solve_flops: Callable[[int, int, int], float] = EditMethod.updated_solve_flops
    updated_state: Callable[..., list] = EditMethod.updated_state  # its declared state per layer

    @property
    def declared_solve_flops(self) -> Callable[[int, int, int], float]:
        """The FLOPs of one layer's write under the solver this run uses."""
        return self.updated_solve_flops if self.solver == "updated" else self.solve_flops


def run_facts(cfg: DictConfig) -> RunFacts:
    """Read the plan's inputs from ``cfg``; the device is CUDA unless ``device`` says cpu."""
    from blue_cli.config.registry import method_class, strategy_class
    from blue_cli.editing.statistics.precision import product_precision

    critical = tuple(cfg.model.layers)
    strategy = strategy_class(cfg.strategy.name)(cfg.strategy)
    method = method_class(cfg.method.name)
    written = tuple(strategy.written_layers(list(critical)))
    targets = tuple(strategy.target_layers(list(critical)))
    device = "cpu" if str(cfg.device).startswith("cpu") else "cuda"
    dtype = cfg.model.dtype if cfg.model.dtype != "auto" else ("float16" if device == "cuda" else "float32")
    state = cfg.method.get("state_dtype", None) or "auto"
    if state == "auto":  # as EditMethod.prepare: float32 on CUDA, float64 on CPU
        state = "float32" if device == "cuda" else "float64"
    if state not in ("float32", "float64"):
        raise ConfigError(f"unknown method.state_dtype '{state}' (choose: auto, float32, float64)")
    solver = cfg.method.get("solver", None) or "auto"
    planned = planned_solver(method, solver)
    t = cfg.method.target
    chunk = 1 if not t.batched else (t.get("chunk", None) or cfg.batch_size)
    if chunk < 1:
        raise ConfigError(f"method.target.chunk must be >= 1 or null, got {chunk}")
    return RunFacts(
        method=cfg.method.name,
        strategy=cfg.strategy.name,
        keep_previous_keys=bool(cfg.method.keep_previous_keys),
        critical=critical,
        written=written,
        target_layers=tuple(targets),
        points=len(method.points),
        batch_size=cfg.batch_size,
        chunk=min(chunk, cfg.batch_size),
        num_edits=cfg.num_edits,
        n_templates=1 + cfg.context.n_prefixes,
        prefix_tokens=cfg.context.n_tokens,
        model_dtype=dtype,
        state_dtype=state,
        device=device,
        stats_max_length=cfg.stats.max_length,
        stats_batch_tokens=cfg.stats.batch_tokens,
        stats_precision=product_precision(cfg.stats.get("precision", "auto"), device),
        stats_samples=cfg.stats.samples,
        target_steps=t.steps,
        reuse_prefix=bool(t.get("reuse_prefix", True)),
        reuse_past=bool(t.get("reuse_past", True)),
        state_matrices=tuple(method.state_matrices),
        solve_matrices=method.solve_matrices + (1 if method.solve_upcasts_state and state != "float64" else 0),
        solve_flops=method.solve_flops,
        solver=planned,
        solver_choice=solver,
        updated_solve_matrices=method.updated_solve_matrices,
        updated_solve_flops=method.updated_solve_flops,
        updated_state=method.updated_state,
    )


def weight_bytes(shape: Shape, dtype: str, n_written: int) -> int:
    """All parameters in ``dtype``, the written matrices in float32 (adapter.keep_rewrite_float32)."""
    b = DTYPE_BYTES[dtype]
    return shape.n_params * b + n_written * shape.hidden_size * shape.intermediate_size * max(0, 4 - b)


def state_items(shape: Shape, facts: RunFacts) -> list[Item]:
    """C or P per written layer, and C_prev per written layer for sequential methods; under
    the updated solver, what the method declares instead (EditMethod.updated_state)."""
    dk = shape.intermediate_size
    dk2 = dk**2 * DTYPE_BYTES[facts.state_dtype]
    n = len(facts.written)
    if facts.solver == "updated":
        declared = facts.updated_state(dk, DTYPE_BYTES[facts.state_dtype], facts.keep_previous_keys, facts.num_edits)
        return [Item(f"{name} (updated solver)", "resident", n * b, f"{n} x {note}") for name, b, note in declared]
    items = [Item(name, "resident", n * dk2, f"{n} x d_k^2 {facts.state_dtype}") for name in facts.state_matrices]
    if facts.keep_previous_keys:
        items.append(Item("C_prev", "resident", n * dk2, f"{n} x d_k^2 {facts.state_dtype}"))
    return items


def solve_bytes(shape: Shape, facts: RunFacts) -> int:
    """The largest solve's float64 temporaries (one layer at a time); under the updated
    solver, a refactorisation's (a solve itself keeps only d_k x n matrices)."""
    matrices = facts.updated_solve_matrices if facts.solver == "updated" else facts.solve_matrices
    return matrices * shape.intermediate_size**2 * 8


def sequence_length(
    prefix_tokens: int, prompt_tokens: int = PROMPT_TOKENS, target_tokens: int = TARGET_TOKENS_MAX
) -> int:
    """Padded length of the target batch: prefix, ". ", the prompt, the target but its last token."""
    return prefix_tokens + 2 + prompt_tokens + target_tokens - 1


def activation_bytes(shape: Shape, dtype: str, blocks: int, tokens: int) -> int:
    """Activations saved for the backward pass through ``blocks`` blocks for ``tokens`` tokens,
    plus one block's worth of transient gradients and what lies outside the blocks."""
    b = DTYPE_BYTES[dtype]
    h, dk = shape.hidden_size, shape.intermediate_size
    family = family_named(shape.family)
    norm_b = 4 if family.norm_float32 else b
    per_block = b * (ATTENTION_H * h + family.mlp_saved_dk * dk) + family.norms_saved * h * norm_b
    return tokens * (per_block * (blocks + 1) + OUTSIDE_H * h * b)


def logit_bytes(shape: Shape, dtype: str, rows: int, requests: int) -> int:
    """Vocabulary logits at the scored positions: model dtype, float32 copy, log-softmax and its
    gradient per row, plus the initial KL log-probabilities kept per request."""
    b = DTYPE_BYTES[dtype]
    per_row = b + (4 if b != 4 else 0) + 4 + 4
    return shape.vocab_size * (rows * per_row + requests * 4)


def kv_width(shape: Shape) -> int:
    """Width of one block's keys (or values) per token: the hidden size, less under GQA."""
    return shape.hidden_size * (shape.n_kv_heads or shape.n_heads) // shape.n_heads


def run_lengths(facts: RunFacts, seq_len: int, run_len: int | None, past_len: int | None) -> tuple[int, int]:
    """(positions each step runs, cached positions) per sequence: (seq_len, 0) unsplit."""
    if not facts.reuse_past:
        return seq_len, 0
    return min(run_len or RUN_TOKENS, seq_len), past_len if past_len is not None else seq_len


def target_items(
    shape: Shape,
    facts: RunFacts,
    seq_len: int | None = None,
    target_mean: float = TARGET_TOKENS_MEAN,
    run_len: int | None = None,
    past_len: int | None = None,
) -> list[Item]:
    """Target optimisation of one chunk at the shallowest target layer (the most blocks to backprop).

    Split at the subject (``reuse_past``), the steps save activations for ``run_len``
    positions per sequence and keep every block's keys and values of ``past_len`` cached
    positions, plus the blocks' concatenated ones the backward reads."""
    layer = min(facts.target_layers)
    blocks = shape.n_layers - layer - 1 + (1 if facts.points > 1 else 0)
    seq_len = seq_len or sequence_length(facts.prefix_tokens)
    run, past = run_lengths(facts, seq_len, run_len, past_len)
    sequences = facts.chunk * (facts.n_templates + 1)
    tokens = sequences * run
    rows = int(round(facts.chunk * (facts.n_templates * target_mean + 1)))
    note = f"{facts.chunk} requests x {facts.n_templates + 1} seqs x {run} tokens, {blocks} blocks from layer {layer}"
    items = [
        Item("activations", "targets", activation_bytes(shape, facts.model_dtype, blocks, tokens), note),
        Item(
            "logits",
            "targets",
            logit_bytes(shape, facts.model_dtype, rows, facts.chunk),
            f"{rows} rows x {shape.vocab_size} vocab",
        ),
    ]
    if past:
        per_position = 2 * kv_width(shape) * DTYPE_BYTES[facts.model_dtype] * sequences
        cached = per_position * (shape.n_layers * past + blocks * (past + run))
        items.append(Item("cached keys and values", "targets", cached, f"{past} positions x {shape.n_layers} blocks"))
    return items


def statistics_items(shape: Shape, facts: RunFacts) -> list[Item]:
    """The covariance pass: float64 accumulators for every written layer, one product x^T x
    (float32 products: plus its float64 copy), and each layer's captured keys for one
    forward plus one layer's keys cast to the product's precision."""
    from blue_cli.editing.statistics.precision import product_precision

    dk, n = shape.intermediate_size, len(facts.written)
    b = DTYPE_BYTES[facts.model_dtype]
    window = min(facts.stats_max_length, shape.max_positions)  # covariance.window_length
    tokens = max(1, facts.stats_batch_tokens // window) * window
    precision = product_precision(facts.stats_precision, facts.device)
    update, note = (
        (dk * dk * (4 + 8), "x^T x in float32, then float64")
        if precision == "float32"
        else (dk * dk * 8, "x^T x in float64")
    )
    return [
        Item("C accumulators", "statistics", n * dk * dk * 8, f"{n} x d_k^2 float64"),
        Item("C update temporaries", "statistics", update, note),
        Item(
            "captured keys",
            "statistics",
            tokens * dk * (n * b + DTYPE_BYTES[precision]),
            f"{tokens} tokens x d_k per layer",
        ),
    ]


def disk_items(shape: Shape, facts: RunFacts) -> list[Item]:
    """The run folder: one checkpoint (rewritten each batch) and the per-case JSONL files.

    The checkpoint holds each write's residual (d x batch float32; spread writes every
    critical layer, blue two), not the weights or C_prev's keys: a resume replays."""
    batches = -(-facts.num_edits // facts.batch_size)
    writes = len(facts.written)
    ckpt = batches * writes * shape.hidden_size * facts.batch_size * 4 + batches * (
        ROW_BYTES + writes * FINGERPRINT_BYTES
    )
    per_batch = writes * shape.hidden_size * facts.batch_size * 4 + ROW_BYTES + writes * FINGERPRINT_BYTES
    note = (
        f"{writes} residuals of d x {facts.batch_size} float32 per batch: grows {per_batch / 2**20:.2f} MiB "
        f"a batch, {per_batch * (1000 / facts.batch_size) / 2**20:.1f} MiB per 1000 edits"
    )
    return [
        Item("checkpoint (one file, rewritten each batch)", "disk", ckpt, note),
        Item("per-case JSONL", "disk", facts.num_edits * CASE_BYTES, f"{facts.num_edits} edits"),
        # The same residuals stay in host memory (EditSession.log) to be saved after each batch;
        # device memory does not grow with the number of batches.
        Item(
            "residuals kept for the checkpoint",
            "host",
            batches * writes * shape.hidden_size * facts.batch_size * 4,
            "as the checkpoint: grows with the batches, in RAM (not on the device)",
        ),
    ]


def make_plan(shape: Shape, facts: RunFacts, budget: int | None = None) -> Plan:
    """Every item of the plan; the peak per device and whether it fits ``budget`` bytes."""
    from blue_cli.editing.statistics.precision import product_precision

    n = len(facts.written)
    d, dk = shape.hidden_size, shape.intermediate_size
    items = [
        Item(
            "model weights",
            "resident",
            weight_bytes(shape, facts.model_dtype, n),
            f"{shape.n_params / 1e9:.2f}B params {facts.model_dtype}, written matrices float32",
        )
    ]
    items += state_items(shape, facts)
    items.append(
        Item(
            "written-matrix copies",
            "resident",
            WEIGHT_COPIES * n * d * dk * 4,
            f"{WEIGHT_COPIES} x {n} x d x d_k float32",
        )
    )
    items += statistics_items(shape, facts)
    items += target_items(shape, facts)
    items.append(Item("solve temporaries", "solve", solve_bytes(shape, facts), "largest layer's system, float64"))
    items += disk_items(shape, facts)
    items.append(
        Item(
            "statistics cache (outside the run folder)",
            "host",
            n * dk * dk * 4,
            f"{n} x d_k^2 float32 on disk and in RAM",
        )
    )
    plan_facts = {
        "written_layers": list(facts.written),
        "target_layers": list(facts.target_layers),
        "method": facts.method,
        "strategy": facts.strategy,
        "batch_size": facts.batch_size,
        "chunk": facts.chunk,
        "model_dtype": facts.model_dtype,
        "state_dtype": facts.state_dtype,
        "solver": facts.solver,
        "device": facts.device,
        "d": d,
        "d_k": dk,
        "stats_precision": product_precision(facts.stats_precision, facts.device),
    }
    return Plan(items, budget, plan_facts)


def largest_chunk(shape: Shape, facts: RunFacts, budget: int) -> int:
    """The most requests per target-optimisation chunk whose plan fits ``budget`` (0: none does)."""
    from dataclasses import replace

    for chunk in range(facts.batch_size, 0, -1):
        if make_plan(shape, replace(facts, chunk=chunk), budget).edit_peak <= budget:
            return chunk
    return 0


def planned_facts(cfg: DictConfig, budget: int | None = None) -> tuple[Shape, RunFacts]:
    """The shape and run facts of ``cfg``. With ``method.target.chunk`` null on CUDA the
    run sizes its target chunks from the free memory (EditContext.chunk_size); the plan
    does the same against ``budget``. ``method.solver: auto`` plans the updated solver
    unless no target chunk fits ``budget`` with its extra state and one does without (then direct)."""
    shape, facts = model_shape(cfg.model), run_facts(cfg)
    if facts.solver_choice == "auto" and budget and not largest_chunk(shape, facts, budget):
        direct = replace(facts, solver="direct")
        if largest_chunk(shape, direct, budget):  # the updated solver's state is what does not fit
            facts = direct
    auto = cfg.method.target.get("chunk", None) is None and cfg.method.target.batched
    if auto and facts.device == "cuda" and budget:
        fitting = largest_chunk(shape, facts, budget)
        if fitting:
            facts = replace(facts, chunk=fitting)
    return shape, facts


def plan_for_config(cfg: DictConfig, budget: int | None = None) -> Plan:
    """The plan of the run ``cfg`` describes."""
    shape, facts = planned_facts(cfg, budget)
    return make_plan(shape, facts, budget)
