"""Train one tiny model from scratch: tokenizer, HF config, training loop, saved folder.

Each model has 6 layers of width 128 and is pre-trained on CPU for a fixed number of steps
on a WikiText-2 excerpt mixed with fact sentences built from the bundled CounterFact
sample (``tiny_build.corpus``). Each fact is stated through its subject under many
templates (the record's own prompt, the other prompts of the same relation, paraphrases
and generation prompts), and the neighbourhood and attribute prompts state the same
objects for other subjects. The object therefore has to be recalled from the subject,
which is what locate-then-edit methods rely on.

Measured on the committed weights (``build_info.json``): the true object beats the
CounterFact new object for 99-100% of the first 100 records, but only for 51-58% once the
subject is swapped for another record's (``subject_swapped``), so the facts are keyed on
the subject. Paraphrase and generation prompts are part of the training text, so
paraphrase scores are not held out. Because the models are this shallow, the subject's
residual stream is read by the attention of layers up to about 4: a vector added at the
subject's last token moves the prediction most at layers 0-2, less at 3, not at all at 5.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blue_cli.errors import ConfigError
from blue_cli.models.tiny import TINY_MODELS
from tiny_build.corpus import (
    MIX,
    SEQ_LEN,
    WIKITEXT_FILE,
    encode_units,
    epoch_units,
    fact_corpus,
    load_counterfact_sample,
    pack_units,
    split_wikitext,
    subject_swapped,
)
from tiny_build.quality import fact_scores, heldout_loss

VOCAB_SIZE = 4096
HIDDEN = 128
LAYERS = 6
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 512
MAX_POSITIONS = 256
BATCH_SIZE = 16
DEFAULT_STEPS = 800
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 0.01
WARMUP_FRACTION = 0.05
# CPU reductions differ with the thread count; builds pin it so they are reproducible.
BUILD_THREADS = 1

EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|begin_of_text|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, BOS_TOKEN, PAD_TOKEN)  # ids 0, 1, 2


@dataclass(frozen=True)
class TinySpec:
    """One tiny architecture: its HF class name and whether its tokenizer prepends BOS."""

    name: str
    architecture: str
    add_bos: bool


# One entry per runtime preset in ``blue_cli.models.tiny.TINY_MODELS`` (a test checks).
SPECS: dict[str, TinySpec] = {
    "tiny-gpt2": TinySpec("tiny-gpt2", "GPT2LMHeadModel", add_bos=False),
    "tiny-gptj": TinySpec("tiny-gptj", "GPTJForCausalLM", add_bos=False),
    "tiny-llama": TinySpec("tiny-llama", "LlamaForCausalLM", add_bos=True),
    "tiny-qwen2": TinySpec("tiny-qwen2", "Qwen2ForCausalLM", add_bos=False),
}

ProgressFn = Callable[[int, int, float], None]


def _spec(name: str) -> TinySpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ConfigError(f"unknown tiny model {name!r}; valid names: {', '.join(TINY_MODELS)}") from None


# ------------------------------------------------------------------------ tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` (deterministic).

    The normaliser and pre-tokeniser are those transformers' ``Qwen2Tokenizer`` installs
    (NFC, then its split regex, then byte-level without a regex): ``AutoTokenizer`` always
    rebuilds a qwen2 checkpoint's tokenizer with them, so using them everywhere keeps one
    shared tokenizer that encodes identically for all four models.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def wrap_tokenizer(raw, *, add_bos: bool):
    """Wrap a trained ``tokenizers.Tokenizer`` as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_str(raw.to_str())  # a private copy
    if add_bos:
        bos_id = raw.token_to_id(BOS_TOKEN)
        raw.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{BOS_TOKEN} $A",
                    pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B:1",
                    special_tokens=[(BOS_TOKEN, bos_id)],
                ),
            ]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="right",
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


# --------------------------------------------------------------------------- models


def make_config(name: str, *, vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    """The HF config of tiny model ``name`` (untrained; weights come from training)."""
    import transformers

    spec = _spec(name)
    common = dict(
        vocab_size=vocab_size, tie_word_embeddings=True, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id
    )
    # Tied embeddings keep each folder under 4 MB (real GPT-J, Llama 3 and Qwen2.5-7B untie them).
    gpt = dict(
        common, n_positions=MAX_POSITIONS, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=INTERMEDIATE,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    llama = dict(
        common, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POSITIONS,
    )  # fmt: skip
    configs = {
        "GPT2LMHeadModel": lambda: transformers.GPT2Config(**gpt),
        "GPTJForCausalLM": lambda: transformers.GPTJConfig(rotary_dim=16, **gpt),
        "LlamaForCausalLM": lambda: transformers.LlamaConfig(**llama),
        "Qwen2ForCausalLM": lambda: transformers.Qwen2Config(max_window_layers=LAYERS, **llama),
    }
    if spec.architecture not in configs:  # pragma: no cover - guarded by SPECS
        raise ConfigError(f"no config for architecture {spec.architecture!r}")
    cfg = configs[spec.architecture]()
    cfg.architectures = [spec.architecture]
    return cfg


def _model_class(name: str):
    import transformers

    return getattr(transformers, _spec(name).architecture)


# ------------------------------------------------------------------------- training


def _lr_at(step: int, total: int, peak: float) -> float:
    warm = max(1, int(total * WARMUP_FRACTION))
    if step < warm:
        return peak * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def build_tiny_model(
    name: str,
    out_dir: Path,
    *,
    seed: int = 0,
    steps: int | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Train tiny model ``name`` from scratch and save it to ``out_dir``; return its build info.

    Deterministic for a given seed, step count and torch version: the tokenizer, corpus,
    batch order and initialisation are fixed and training runs on ``BUILD_THREADS`` torch
    threads. ``progress(step, total, loss)`` is called after every optimiser step. Weights
    are saved in float16 (``config.json`` says float32, so a plain ``from_pretrained``
    upcasts them) and the reported losses and fact scores are measured on those weights.
    """
    import torch

    spec = _spec(name)
    steps = DEFAULT_STEPS if steps is None else int(steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        return _build(spec, Path(out_dir), seed=seed, steps=steps, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _build(spec: TinySpec, out_dir: Path, *, seed: int, steps: int, progress: ProgressFn | None):
    import torch

    name = spec.name
    started = time.perf_counter()

    records = load_counterfact_sample()
    train_pars, held_pars = split_wikitext(WIKITEXT_FILE.read_text(encoding="utf-8"))
    groups = fact_corpus(records)
    facts = [x for g in groups.values() for x in g]

    raw_tok = train_tokenizer(train_pars + sorted(set(facts)))
    tokenizer = wrap_tokenizer(raw_tok, add_bos=spec.add_bos)
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id

    pools = {key: encode_units(tokenizer, texts, SEQ_LEN - 2) for key, texts in groups.items()}
    pools["wikitext"] = encode_units(tokenizer, train_pars, SEQ_LEN - 2)

    torch.manual_seed(seed)
    config = make_config(name, vocab_size=len(tokenizer), bos_id=bos, eos_id=eos, pad_id=pad)
    model = _model_class(name)(config)
    model.train()

    decay, no_decay = [], []
    for pname, p in model.named_parameters():
        (
            decay if p.dim() >= 2 and "embed" not in pname and "wte" not in pname and "wpe" not in pname else no_decay
        ).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LEARNING_RATE,
        betas=(0.9, 0.95),
    )

    rng = random.Random(seed)
    epoch_rows: list[tuple[list[int], list[int]]] = []
    losses: list[float] = []
    epochs = 0
    for step in range(steps):
        if len(epoch_rows) < BATCH_SIZE:
            units = epoch_units(pools, rng)
            ids, labels = pack_units(
                units, seq_len=SEQ_LEN, bos_id=bos if spec.add_bos else None, eos_id=eos, pad_id=pad
            )
            rows = list(zip(ids, labels))
            rng.shuffle(rows)
            epoch_rows = rows + epoch_rows
            epochs += 1
        batch, epoch_rows = epoch_rows[-BATCH_SIZE:], epoch_rows[:-BATCH_SIZE]
        x = torch.tensor([b[0] for b in batch])
        y = torch.tensor([b[1] for b in batch])
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, LEARNING_RATE)
        logits = model(input_ids=x, attention_mask=(x != pad).long()).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), y[:, 1:].reshape(-1), ignore_index=-100
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step + 1, steps, losses[-1])

    train_seconds = time.perf_counter() - started
    tail = losses[-max(1, min(50, len(losses))) :]
    # Evaluate what gets shipped: the float16 weights, upcast as they are when loaded.
    model = model.to(torch.float16).to(torch.float32).eval()
    info: dict[str, Any] = {
        "name": name,
        "architecture": spec.architecture,
        "seed": seed,
        "steps": steps,
        "batch_size": BATCH_SIZE,
        "seq_len": SEQ_LEN,
        "learning_rate": LEARNING_RATE,
        "epochs_started": epochs,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "seconds": round(train_seconds, 1),
        "final_train_loss": round(sum(tail) / len(tail), 4),
        "heldout_loss": round(heldout_loss(model, tokenizer, held_pars), 4),
        "uniform_loss": round(math.log(len(tokenizer)), 4),
        "n_params": sum(p.numel() for p in model.parameters()),
        "corpus": {
            "wikitext_train_paragraphs": len(train_pars),
            "wikitext_heldout_paragraphs": len(held_pars),
            "fact_sentences": {k: len(v) for k, v in groups.items()},
            "mix_per_epoch": MIX,
            "counterfact_records": len(records),
        },
    }
    scores = fact_scores(model, tokenizer, records[:100])
    info["facts_first100"] = {k: round(v, 4) for k, v in scores.items()}
    control = fact_scores(model, tokenizer, subject_swapped(records[:100]))
    info["facts_first100_subject_swapped"] = {k: round(control[k], 4) for k in ("rewrite_rate", "median_p_true")}

    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    # save_pretrained records the in-memory dtype; say float32 so loading upcasts.
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["dtype"] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(out_dir)
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
