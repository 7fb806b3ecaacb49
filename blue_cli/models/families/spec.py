"""What blue knows of each supported architecture family: where its points live in the HF
module tree, and the shape facts the plans need. Recognised from the HF class (a loaded
model) or the config's ``model_type`` (a config.json or a model YAML's shape).

One table, so another checkpoint of a listed class works without new code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from blue_cli.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ConfigKeys:
    """The HF config.json keys of the shape facts (``intermediate_size`` missing: 4 x hidden)."""

    hidden_size: str
    intermediate_size: str
    n_layers: str
    n_heads: str
    n_kv_heads: str | None
    max_positions: str


@dataclass(frozen=True)
class FamilySpec:
    """Where the canonical points live in a family's HF module tree.

    Paths under a block are relative to ``blocks.{l}``; ``transposed`` is True where
    the rewrite matrix is a GPT-2 ``Conv1D`` storing its weight as (in x out).
    """

    name: str
    blocks: str
    rewrite: str
    attn_out: str
    final_norm: str
    unembed: str
    transposed: bool
    classes: tuple[str, ...]
    model_types: tuple[str, ...]  # config.json model_type values of this family
    config_keys: ConfigKeys
    # Shape facts the plans read (tools/memory_plan.py, tools/compute_plan.py), counted in
    # HF's code and checked against torch on the tiny models:
    mlp_matrices: int  # d x d_k weight matrices in a block's MLP (up/down, or gate/up/down)
    mlp_saved_dk: int  # activations of width d_k autograd saves per token in the MLP
    norms_saved: int  # norms per block whose input autograd saves
    norm_float32: bool  # the norms upcast their input to float32 (RMSNorm)


FAMILIES: dict[str, FamilySpec] = {
    spec.name: spec
    for spec in (
        FamilySpec(
            name="gpt2",
            blocks="transformer.h",
            rewrite="mlp.c_proj",
            attn_out="attn.c_proj",
            final_norm="transformer.ln_f",
            unembed="lm_head",
            transposed=True,
            classes=("GPT2LMHeadModel",),
            model_types=("gpt2",),
            config_keys=ConfigKeys("n_embd", "n_inner", "n_layer", "n_head", None, "n_positions"),
            mlp_matrices=2,
            mlp_saved_dk=4,  # tanh-GELU
            norms_saved=2,
            norm_float32=False,
        ),
        FamilySpec(
            name="gptj",
            blocks="transformer.h",
            rewrite="mlp.fc_out",
            attn_out="attn.out_proj",
            final_norm="transformer.ln_f",
            unembed="lm_head",
            transposed=False,
            classes=("GPTJForCausalLM",),
            model_types=("gptj",),
            config_keys=ConfigKeys("n_embd", "n_inner", "n_layer", "n_head", None, "n_positions"),
            mlp_matrices=2,
            mlp_saved_dk=4,  # tanh-GELU
            norms_saved=1,  # one LayerNorm feeds attention and MLP in parallel
            norm_float32=False,
        ),
        FamilySpec(
            name="llama",
            blocks="model.layers",
            rewrite="mlp.down_proj",
            attn_out="self_attn.o_proj",
            final_norm="model.norm",
            unembed="lm_head",
            transposed=False,
            # Only classes with a tiny model in the tests: Gemma2's post-FFN norm breaks
            # the linear write into the residual stream, so look-alikes are not assumed.
            classes=("LlamaForCausalLM", "Qwen2ForCausalLM"),
            model_types=("llama", "qwen2"),
            config_keys=ConfigKeys(
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "max_position_embeddings",
            ),
            mlp_matrices=3,
            mlp_saved_dk=3,  # SwiGLU: gate, silu(gate), up
            norms_saved=2,
            norm_float32=True,
        ),
    )
}


def family_named(name: str) -> FamilySpec:
    """The family called ``name``, or the one whose config ``model_type`` it is (qwen2 -> llama)."""
    for spec in FAMILIES.values():
        if name == spec.name or name in spec.model_types:
            return spec
    known = sorted({t for spec in FAMILIES.values() for t in (spec.name, *spec.model_types)})
    raise ConfigError(f"unknown model family or model_type '{name}' (choose: {', '.join(known)})")


def family_for(model: nn.Module) -> FamilySpec:
    """The family of ``model``, by its HF class name.

    Only classes that the tests exercise (a tiny model of each) are listed; a module
    tree that merely looks alike is not enough, since a different norm placement
    (Gemma2) would make edits silently wrong.
    """
    cls = type(model).__name__
    for spec in FAMILIES.values():
        if cls in spec.classes:
            return spec
    supported = ", ".join(c for spec in FAMILIES.values() for c in spec.classes)
    raise ConfigError(f"unsupported model class '{cls}' (supported: {supported})")
