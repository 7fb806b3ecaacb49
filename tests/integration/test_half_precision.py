"""Edits survive a half-precision model: the rewrite matrices stay float32."""

from __future__ import annotations

import torch

from blue_cli.models.loading import load_model


def test_rewrite_matrix_keeps_a_small_update_exactly_in_a_bf16_model():
    adapter = load_model("tiny-gpt2", device="cpu", dtype="bfloat16")
    W_bf16 = adapter.rewrite_weight(2).detach().clone()
    delta = (
        1e-3
        * W_bf16.float().norm()
        / W_bf16.numel() ** 0.5
        * torch.randn(W_bf16.shape, generator=torch.Generator().manual_seed(0))
    )
    lost_in_bf16 = (W_bf16 + delta.bfloat16()).float() - W_bf16.float()
    assert (lost_in_bf16 - delta).norm() / delta.norm() > 0.2  # what the reference avoids by editing fp32

    adapter.keep_rewrite_float32([2])
    W = adapter.rewrite_weight(2).detach().clone()
    assert W.dtype == torch.float32 and adapter.dtype == torch.bfloat16
    adapter.add_to_rewrite(2, delta)
    assert torch.equal(adapter.rewrite_weight(2).detach(), W + delta)


def test_float32_rewrite_module_computes_in_float32_and_returns_the_model_dtype():
    adapter = load_model("tiny-llama", device="cpu", dtype="bfloat16")
    batch = adapter.encode(["The capital of France is", "Danielle Darrieux speaks"])
    before = adapter.read_points(batch, ["mlp.1", "block.3"])
    adapter.keep_rewrite_float32([1])
    module = adapter.rewrite_module(1)
    seen = {}
    handle = module.register_forward_hook(lambda m, args, out: seen.update(inp=args[0].dtype))
    try:
        after = adapter.read_points(batch, ["mlp.1", "block.3"])
    finally:
        handle.remove()
    assert seen["inp"] == torch.float32
    assert after["mlp.1"].dtype == torch.bfloat16 and after["block.3"].dtype == torch.bfloat16
    # same function as before, up to bf16 rounding of the output
    assert torch.allclose(after["mlp.1"].float(), before["mlp.1"].float(), rtol=2e-2, atol=2e-2)
