"""Write a llama-family model as a GGUF file, as llama.cpp's converter lays it out, so the
tests cover blue's GGUF loader without the 93 MB download of a real one.

Only what transformers' GGUF reader needs: the llama metadata, the byte-level BPE
tokenizer (tokens, types, merges), and float32 tensors under llama.cpp's names, with the
query and key rows permuted the way llama.cpp's converter permutes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# HF parameter -> GGUF tensor name, per block and outside the blocks.
BLOCK_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
CONTROL, NORMAL = 3, 1  # llama.cpp's token types


def llama_cpp_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """The row order llama.cpp's converter gives q_proj/k_proj (rotary halves interleaved)."""
    return (
        weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_llama_gguf(model, tokenizer_dir: Path, path: Path) -> Path:
    """Write ``model`` (a LlamaForCausalLM with tied embeddings) and the tokenizer saved in
    ``tokenizer_dir`` (tokenizer.json, byte-level BPE) to the GGUF file ``path``."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(cfg.vocab_size)
    _add_tokenizer(writer, json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text(encoding="utf-8")), cfg)
    for name, tensor in _gguf_tensors(model).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer, spec: dict, cfg) -> None:
    vocab = spec["model"]["vocab"]
    tokens = [None] * len(vocab)
    for token, index in vocab.items():
        tokens[index] = token
    special = {added["id"] for added in spec["added_tokens"] if added["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types([CONTROL if i in special else NORMAL for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    writer.add_pad_token_id(cfg.pad_token_id)
    writer.add_add_bos_token("TemplateProcessing" in json.dumps(spec.get("post_processor")))  # HF's adds BOS


def _gguf_tensors(model) -> dict[str, np.ndarray]:
    cfg = model.config
    state = {name: p.detach().float().numpy() for name, p in model.state_dict().items()}
    out = {gguf_name: state[hf_name] for hf_name, gguf_name in TOP_NAMES.items()}
    for layer in range(cfg.num_hidden_layers):
        for hf_suffix, gguf_suffix in BLOCK_NAMES.items():
            weight = state[f"model.layers.{layer}.{hf_suffix}"]
            if hf_suffix.startswith("self_attn.q_proj"):
                weight = llama_cpp_permute(weight, cfg.num_attention_heads)
            elif hf_suffix.startswith("self_attn.k_proj"):
                weight = llama_cpp_permute(weight, cfg.num_key_value_heads)
            out[f"blk.{layer}.{gguf_suffix}"] = np.ascontiguousarray(weight)
    return out
