"""Typed schema of every config group, registered with Hydra's ConfigStore.

Each YAML in ``conf/<group>/`` starts from one of these schemas, so a mistyped
key or a wrong type fails at composition, before any work is done.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf, open_dict

from blue_cli import install_hint
from blue_cli.config.registry import check_solver, dataset_schemas, method_class, method_schemas, strategy_schemas
from blue_cli.errors import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class TargetConfig:
    """Target-vector optimisation (reference names: v_lr, v_num_grad_steps, clamp_norm_factor...)."""

    lr: float = 0.5
    steps: int = 20
    clamp: float = 0.75
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    early_stop_loss: float = 0.05
    batched: bool = True  # optimise all requests of a batch together (false: one at a time)
    reuse_prefix: bool = True  # run the blocks before the target layer once, not every step
    reuse_past: bool = True  # run the positions before the subject's last token once (cached keys/values)
    adaptive_nll: bool = False  # PMET's rule (on for pmet, pmet_seq): NLL x0.1 while the target is the argmax
    drop_stopped: bool = True  # stopped requests leave the batch's forwards (false: kept, to measure it)
    chunk: Optional[int] = None  # requests optimised together; null: as many as the memory budget allows
    memory_budget_gb: Optional[float] = None  # for chunk=null on CUDA: default 60% of the free device memory


@dataclass
class ModelShape:
    """Public architecture facts (the model's HF config.json), so ``blue plan`` and
    ``benchmarks/bench_scale.py`` need no download. ``intermediate_size`` is d_k, the
    rewrite matrix's input width; ``n_params`` counts tied weights once."""

    family: str = MISSING  # gpt2, gptj, llama, qwen2
    hidden_size: int = MISSING
    intermediate_size: int = MISSING
    n_layers: int = MISSING
    n_heads: int = MISSING
    n_kv_heads: Optional[int] = None  # grouped-query attention; null = n_heads
    vocab_size: int = MISSING
    max_positions: int = MISSING
    n_params: int = MISSING


@dataclass
class ModelConfig:
    """Model facts: where to load it from and its critical (edited) layers, 0-based.
    ``shape``: its architecture facts (real models; the tiny ones read their config.json)."""

    name: str = MISSING
    source: str = MISSING
    revision: Optional[str] = None
    dtype: str = "auto"
    device_map: Optional[str] = None
    layers: list[int] = MISSING
    shape: Optional[ModelShape] = None


@dataclass
class DatasetConfig:
    """Edit records: ``path`` is a file or folder, ``bundled`` (the shipped sample) or null
    (download ``url``). Dataset-specific schemas live beside their dataset
    (``blue_cli/datasets/<name>.py``). ``allow_fewer``: run with what the dataset has
    when ``num_edits`` asks for more (else that is an error)."""

    name: str = MISSING
    path: Optional[str] = "bundled"
    offset: int = 0
    url: str = MISSING
    allow_fewer: bool = False


@dataclass
class EvalConfig:
    """What is measured besides the dataset's rates.

    ``generation``: generate on CounterFact's generation prompts (fluency, consistency),
    for every ``generation_every_n_cases``-th case, ``generation_length`` tokens in all
    (prompt included, as the reference's max_out_len), top-k ``generation_top_k``,
    ``generation_batch_size`` prompts per batch (the texts depend on it, as on the seed).
    ``general``: general-capability tasks (sst2, mrpc, cola, rte, mmlu, nli), measured
    before the first batch, every ``general_every`` batches and after the last, on
    ``general_items`` test items each (``general_path``: a folder of full task sets).
    """

    generation: bool = True
    generation_every_n_cases: int = 1
    generation_length: int = 100
    generation_top_k: int = 5
    generation_batch_size: int = 64
    general: list[str] = field(default_factory=list)
    general_every: Optional[int] = None
    general_items: int = 100
    general_shots: int = 0
    general_path: Optional[str] = None
    # Collapse monitoring (docs/long-horizon.md): perplexity on held-out text before the
    # first batch, every ``perplexity_every`` batches and after the last (tokens 0: never).
    perplexity_every: Optional[int] = None
    perplexity_text: str = "bundled"
    perplexity_tokens: int = 4096
    perplexity_window: int = 512
    # Stop the stream (cleanly, with its checkpoint) once perplexity exceeds k x its pre-edit value.
    stop_perplexity_factor: Optional[float] = None
    # Evaluation in the wild: greedy generation, no target tokens given, exact match and token F1.
    wild: bool = True
    wild_max_tokens: int = 50
    # Evaluate at most this many of the edited records (evenly spread over the stream) before,
    # at every evaluation point and after: a long stream's points then cost the same throughout.
    max_cases: Optional[int] = None


@dataclass
class NormAnchorConfig:
    """Norm-Anchor Scaling (Liu et al. 2026, arXiv 2602.02543), for any method and strategy.

    Each solved value vector v* = v0 + delta (v0: the rewrite matrix's output at the subject)
    is rescaled to a reference norm: the mean ||v*|| over ``samples`` requests optimised on
    the original model, the largest ``1 - keep_quantile`` of them left out. A v* longer
    than ``skip_factor`` x the reference is not written (v* = v0). See editing/anchoring.py.
    """

    enabled: bool = False
    samples: int = 1000
    keep_quantile: float = 0.95
    skip_factor: float = 2.0


@dataclass
class MethodConfig:
    """Settings every method shares: target optimisation and whether C_prev is kept.

    ``keep_previous_keys``: keep the keys of earlier batches (C_prev) in every later solve,
    as the reference's ``*_seq`` variants (``cache_c``) and AlphaEdit do; each method's
    YAML sets the default of the reference variant of the same name. ``sequential`` is
    its old name, read for one release with a warning. Method-specific schemas live
    beside their method (``editing/methods/<name>.py``).
    """

    name: str = MISSING
    keep_previous_keys: bool = False
    sequential: Optional[bool] = None  # deprecated: keep_previous_keys
    state_dtype: str = "auto"  # C, C_prev, P on the device: float32 on CUDA, float64 on CPU (auto)
    offload_state: bool = False  # keep C, C_prev, P in CPU memory, move one layer's in for its solve
    solver: str = "auto"  # direct: factorise every batch; updated: factorise once, rank-n updates (docs/solver.md)
    solver_tolerance: float = 1e-6  # updated solver: refactorise when ||U - A Q|| / ||U|| exceeds this
    target: TargetConfig = field(default_factory=TargetConfig)
    norm_anchor: NormAnchorConfig = field(default_factory=NormAnchorConfig)

    @classmethod
    def check(cls, node) -> None:
        """Value checks a schema cannot express, one-line errors; a method's config class
        extends this with its own keys' checks (beside the method)."""
        if node.state_dtype not in ("auto", "float32", "float64"):
            raise ConfigError(f"unknown method.state_dtype '{node.state_dtype}' (choose: auto, float32, float64)")
        if node.get("solver", "auto") not in ("auto", "direct", "updated"):
            raise ConfigError(f"unknown method.solver '{node.solver}' (choose: auto, direct, updated)")
        if not 0 < node.get("solver_tolerance", 1e-6) < 1:
            raise ConfigError(f"method.solver_tolerance must be in (0, 1), got {node.solver_tolerance}")
        if node.target.chunk is not None and node.target.chunk < 1:
            raise ConfigError(f"method.target.chunk must be >= 1 or null, got {node.target.chunk}")
        check_target(node.target)
        for key, value in node.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"method.{key} must be finite, got {value}")


@dataclass
class ModelHparamsConfig:
    """Per-model hyper-parameters that several methods read (set by ``hparams/model/<model>``).

    ``cov_weight``: lambda, the weight of C in MEMIT-style solves (``mom2_update_weight``).
    A setting of one method lives in that method's config (``method.<key>``; per model in
    ``hparams/model_method/<model>_<method>``, per sweep in ``per_method``).
    """

    cov_weight: float = 15000.0


@dataclass
class StrategyConfig:
    """A strategy's config: its name; a strategy with keys of its own registers a subclass
    (``register_strategy(name, config=...)``) and may override :meth:`check`."""

    name: str = MISSING

    @classmethod
    def check(cls, node) -> None:
        """Value checks a schema cannot express; one-line ConfigError. Default: none."""


@dataclass
class SettingConfig:
    """How the stream is cut (``setting=``): ``sequential`` batches of ``batch_size``, or
    ``batch``, every edit in one batch; published settings tuned for one batch key on it."""

    name: str = "sequential"


@dataclass
class StatsConfig:
    """Covariance statistics: corpus (wikitext-bundled, wikipedia, wikitext or a file), windows, length.

    ``shard``/``shards``: ``blue stats stats.shard=i stats.shards=n`` collects the i-th of n
    slices only (see editing/shards.py); runs merge the shards they find.
    ``precision``: dtype of the per-batch key products (auto: float64 on CPU, float32 on
    CUDA, where float64 is slow on most GPUs; see editing/precision.py).
    """

    corpus: str = "wikitext-bundled"
    samples: int = 100000
    max_length: int = 1024
    batch_tokens: int = 4096
    shard: Optional[int] = None
    shards: int = 1
    precision: str = "auto"


@dataclass
class ContextConfig:
    """Context templates: how many self-generated prefixes, of how many tokens."""

    n_prefixes: int = 5
    n_tokens: int = 10
    top_k: int = 5


@dataclass
class RunConfig:
    """The top-level config: groups plus the knobs of the sequential editing loop."""

    model: Any = MISSING
    dataset: Any = MISSING
    method: Any = MISSING
    strategy: Any = MISSING
    setting: SettingConfig = field(default_factory=SettingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    model_hparams: ModelHparamsConfig = field(default_factory=ModelHparamsConfig)
    # method name -> method keys that apply only when that method runs (a sweep over methods
    # that sets one method's knob: per_method.prune.evaluated_weights=...), merged into method
    per_method: dict[str, Any] = field(default_factory=dict)
    stats: StatsConfig = field(default_factory=StatsConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    num_edits: int = 40
    batch_size: int = 10
    seed: int = 0
    device: str = "auto"
    eval_every: Optional[int] = None
    resume: bool = True
    on_nan: str = "stop"  # a non-finite target/key/update: stop the run (exit 1), or skip the batch
    logger: Optional[str] = None  # experiment tracking: none, tensorboard, wandb, mlflow (optional extras)


def register_configs() -> None:
    """Store the schemas; group YAMLs name them in their defaults list (``<choice>_schema``)."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=RunConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/strategy", name="strategy", node=StrategyConfig)
    for name, node in strategy_schemas().items():
        cs.store(group="schema/strategy", name=name, node=node or StrategyConfig)
    for name, node in method_schemas().items():
        cs.store(group="schema/method", name=name, node=node)
    for name, node in dataset_schemas().items():
        cs.store(group="schema/dataset", name=name, node=node)


def conf_dir() -> Path:
    """The Hydra config tree: inside the installed package, else the repo's top-level conf/."""
    package = Path(__file__).resolve().parents[1]  # blue_cli/
    candidates = (package / "conf", package.parent / "conf")  # a wheel's copy, or the repository's
    for candidate in candidates:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise ConfigError(f"cannot find the config tree (looked in {candidates[0]} and {candidates[1]})")


GROUPS = ("model", "dataset", "method", "strategy", "setting")
# Experiment tracking backends (logger=...); each but none is an optional extra.
LOGGERS = ("none", "tensorboard", "wandb", "mlflow")


def missing_extra(backend: str) -> ConfigError:
    """The one-line error for a logger backend whose library is not installed."""
    return ConfigError(f"logger={backend} needs the {backend} extra: {install_hint(backend)}")


def check_logger(name: str | None) -> None:
    """One-line error for a ``logger`` value that is not a known backend, or whose library
    is not installed (checked with the overrides, before a run folder exists)."""
    import importlib.util

    if name is not None and str(name).lower() not in LOGGERS:
        raise ConfigError(f"unknown logger '{name}' (choose: {', '.join(LOGGERS)})")
    backend = "none" if name is None else str(name).lower()
    if backend != "none" and importlib.util.find_spec(backend) is None:
        raise missing_extra(backend)


MAX_TARGET_LR = 1e3
# torch.manual_seed (and torch.Generator.manual_seed) accept these, negatives mapped to 2**64 + seed;
# random.seed takes any int. Outside: ValueError deep inside the run.
SEED_RANGE = (-(2**63), 2**64 - 1)
# The least each float of method.target may be, and whether that value itself is allowed
# (a weight of 0 turns its term off; a step size, clamp or budget of 0 leaves nothing to do).
TARGET_FLOORS = {
    "lr": (0.0, False),
    "clamp": (0.0, False),
    "kl_factor": (0.0, True),
    "weight_decay": (0.0, True),
    "early_stop_loss": (0.0, True),
    "memory_budget_gb": (0.0, False),
}


def resolve_deprecated(cfg, announce: bool = True) -> None:
    """Old config keys still accepted for one release, moved to their new names in ``cfg``."""
    old = cfg.method.get("sequential", None)
    if old is None:
        return
    if announce:
        log.warning("method.sequential is deprecated: use method.keep_previous_keys=%s", str(old).lower())
    cfg.method.keep_previous_keys = bool(old)
    cfg.method.sequential = None


def apply_per_method(cfg) -> None:
    """Merge ``per_method[<method.name>]`` into ``cfg.method`` (idempotent: the checks run twice);
    a key the method's schema lacks is one line naming it."""
    settings = (cfg.get("per_method") or {}).get(cfg.method.name)
    if not settings:
        return
    unknown = sorted(set(settings) - set(cfg.method))
    if unknown:
        raise ConfigError(
            f"per_method.{cfg.method.name}.{unknown[0]}: method {cfg.method.name} has no key '{unknown[0]}' "
            f"(its keys: {', '.join(sorted(cfg.method))})"
        )
    with open_dict(cfg):
        cfg.method = OmegaConf.merge(cfg.method, settings)


def typed(node, cls: type[T]) -> T:
    """The settings object of schema ``cls`` for a config node: ``OmegaConf.to_object`` for a
    node of that schema, else ``cls`` built from the node's keys that ``cls`` has (a node made
    from a plain dict, as tests and the Python API may pass)."""
    if isinstance(node, cls):
        return node
    if OmegaConf.is_config(node) and OmegaConf.get_type(node) is cls:
        return OmegaConf.to_object(node)
    data = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def group_choices(group: str) -> list[str]:
    """The YAML choices of a config group, as ``blue list`` shows them."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def check_setting(cfg) -> None:
    """``setting=batch`` writes every edit in one batch: a smaller batch_size would run the
    one-batch settings sequentially, under the wrong name. (A run folder written before
    settings existed has none: it ran sequentially.)"""
    setting = cfg.get("setting") or {}
    if setting.get("name", "sequential") == "batch" and cfg.batch_size != cfg.num_edits:
        raise ConfigError(
            f"setting=batch writes all num_edits={cfg.num_edits} edits in one batch, but batch_size="
            f"{cfg.batch_size}: set batch_size to num_edits, or choose setting=sequential"
        )


def check_seed(seed: int) -> None:
    """``seed`` within what every seeded generator of a run accepts (:data:`SEED_RANGE`)."""
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise ConfigError(f"seed must be in {low}..{high} (the range torch.manual_seed accepts), got {seed}")


def check_target(t) -> None:
    """method.target: steps >= 1, and every float finite and in its range (:data:`TARGET_FLOORS`);
    NaN would pass a plain comparison and quietly switch its term off."""
    if t.steps < 1:
        raise ConfigError(f"method.target.steps must be >= 1, got {t.steps}")
    for key, (floor, allowed) in TARGET_FLOORS.items():
        value = t[key]
        if value is None and key == "memory_budget_gb":
            continue
        if not math.isfinite(value) or value < floor or (value == floor and not allowed):
            bound = "positive" if not allowed else f">= {floor:g}"
            raise ConfigError(f"method.target.{key} must be {bound} and finite, got {value}")
    if t.lr > MAX_TARGET_LR:  # larger steps overflow the target optimisation (inf, then NaN)
        raise ConfigError(
            f"method.target.lr must be at most {MAX_TARGET_LR:g} (published settings use 0.1-5), got {t.lr}"
        )


def check_run_config(cfg, announce: bool = True) -> None:
    """Value checks that a schema cannot express; one-line errors.

    Also reads deprecated keys into their new names (``method.sequential`` ->
    ``method.keep_previous_keys``), saying so in one warning line when ``announce``
    (the job does; the check of the overrides before it stays quiet, so it is said once).
    """
    resolve_deprecated(cfg, announce)
    apply_per_method(cfg)
    if cfg.num_edits < 1:
        raise ConfigError(f"num_edits must be >= 1, got {cfg.num_edits}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    check_setting(cfg)
    if cfg.dataset.offset < 0:
        raise ConfigError(f"dataset.offset must be >= 0, got {cfg.dataset.offset}")
    if cfg.stats.precision not in ("auto", "float32", "float64"):
        raise ConfigError(f"unknown stats.precision '{cfg.stats.precision}' (choose: auto, float32, float64)")
    if cfg.on_nan not in ("stop", "skip"):
        raise ConfigError(f"unknown on_nan '{cfg.on_nan}' (choose: stop, skip)")
    check_seed(cfg.seed)
    check_logger(cfg.get("logger"))
    method_schemas()[cfg.method.name].check(cfg.method)
    check_solver(method_class(cfg.method.name), cfg.method.get("solver", "auto"))
    strategy_schema = strategy_schemas().get(cfg.strategy.name) or StrategyConfig
    strategy_schema.check(cfg.strategy)
    ev = cfg.eval
    for key in (
        "generation_every_n_cases",
        "generation_length",
        "generation_top_k",
        "generation_batch_size",
        "general_items",
    ):
        if ev[key] < 1:
            raise ConfigError(f"eval.{key} must be >= 1, got {ev[key]}")
    if ev.general_every is not None and ev.general_every < 1:
        raise ConfigError(f"eval.general_every must be >= 1 or null, got {ev.general_every}")
    if ev.perplexity_every is not None and ev.perplexity_every < 1:
        raise ConfigError(f"eval.perplexity_every must be >= 1 or null, got {ev.perplexity_every}")
    if ev.perplexity_tokens < 0:
        raise ConfigError(f"eval.perplexity_tokens must be >= 0 (0: no perplexity), got {ev.perplexity_tokens}")
    if ev.perplexity_window < 2:
        raise ConfigError(f"eval.perplexity_window must be >= 2 tokens, got {ev.perplexity_window}")
    factor = ev.stop_perplexity_factor
    if factor is not None and not (1 <= factor < float("inf")):
        raise ConfigError(f"eval.stop_perplexity_factor must be >= 1 and finite, or null, got {factor}")
    if factor is not None and ev.perplexity_tokens == 0:
        raise ConfigError("eval.stop_perplexity_factor needs perplexity: set eval.perplexity_tokens >= 1")
    if ev.max_cases is not None and ev.max_cases < 1:
        raise ConfigError(f"eval.max_cases must be >= 1 or null, got {ev.max_cases}")
    if ev.wild_max_tokens < 1:
        raise ConfigError(f"eval.wild_max_tokens must be >= 1, got {ev.wild_max_tokens}")
    na = cfg.method.norm_anchor
    if na.samples < 1:
        raise ConfigError(f"method.norm_anchor.samples must be >= 1, got {na.samples}")
    if not (0 < na.keep_quantile <= 1):
        raise ConfigError(f"method.norm_anchor.keep_quantile must be in (0, 1], got {na.keep_quantile}")
    if not (na.skip_factor > 0):
        raise ConfigError(f"method.norm_anchor.skip_factor must be positive, got {na.skip_factor}")
    if cfg.eval_every is not None and cfg.eval_every < 1:
        raise ConfigError(f"eval_every must be >= 1 or null, got {cfg.eval_every}")
    if not cfg.model.layers:
        raise ConfigError("model.layers must name at least one critical layer")
    if min(cfg.model.layers) < 0:
        raise ConfigError(f"model.layers must be >= 0 (0-based block indices), got {list(cfg.model.layers)}")
    if list(cfg.model.layers) != sorted(set(cfg.model.layers)):
        raise ConfigError(f"model.layers must be increasing and distinct, got {list(cfg.model.layers)}")
