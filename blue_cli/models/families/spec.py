"""Module paths of each supported architecture family, recognised from the HF class.

One table, so another checkpoint of a listed class works without new code.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from blue_cli.errors import ConfigError


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
        ),
    )
}


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
