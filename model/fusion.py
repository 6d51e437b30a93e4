"""Fused projections for inference: Q/K/V as one GEMM, gate/up as one GEMM, the routed experts'
weights as one stacked tensor, with the weights fused once (at load) and no extra memory.

`fuse_projections(model)` concatenates, per module, the weights of the projections that read the
same input into one new tensor and points the original parameters' `.data` at slices of it. The
parameters keep their identity, names and shapes (state_dict, optimisers and load_state_dict keep
working and write through into the fused storage), so the fused tensor is always current. The
fused GEMMs are used only when gradients are off (inference); with autograd on, the modules run
their separate projections, whose gradients reach the parameters as before. Fuse after the last
`.to(device/dtype)`: moving a module copies each parameter separately (still correct, but the
memory of the fused copies is then paid twice).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _alias_rows(linears: Sequence[nn.Linear], fused: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    start = 0
    for linear in linears:
        rows = linear.weight.shape[0]
        linear.weight.data = fused[start:start + rows]
        if bias is not None:
            linear.bias.data = bias[start:start + rows]
        start += rows


def fuse_linears(linears: Sequence[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One [sum(out), in] weight (and bias) for Linears that read the same input; their parameters
    become views of it. Returns (weight, bias or None)."""
    with torch.no_grad():
        weight = torch.cat([linear.weight.detach() for linear in linears])
        has_bias = all(linear.bias is not None for linear in linears)
        bias = torch.cat([linear.bias.detach() for linear in linears]) if has_bias else None
        _alias_rows(linears, weight, bias)
    return weight, bias


def stack_experts(experts: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    """[E, 2I, W] gate|up and [E, W, I] down weights of GemmaMLP experts; each expert's parameters
    become views of them (and each expert keeps its own fused gate|up view)."""
    with torch.no_grad():
        gate_up = torch.stack([torch.cat([e.gate_proj.weight.detach(), e.up_proj.weight.detach()]) for e in experts])
        down = torch.stack([e.down_proj.weight.detach() for e in experts])
        for index, expert in enumerate(experts):
            _alias_rows((expert.gate_proj, expert.up_proj), gate_up[index])
            expert.down_proj.weight.data = down[index]
            expert.gate_up = gate_up[index]
    return gate_up, down


def fuse_projections(model: nn.Module) -> nn.Module:
    """Fuse every MixtureAttention (Q/K/V), GemmaMLP (gate/up), MoEMLP (stacked experts) and
    SiglipAttention (Q/K/V with biases) in `model`, in place; idempotent. Returns the model."""
    from model.action_moe import GemmaMLP, MoEMLP
    from model.transformer import MixtureAttention
    from model.vision import SiglipAttention

    for module in model.modules():  # each module once, so tied proprio/action layers fuse once
        if isinstance(module, MoEMLP) and module.expert_gate_up is None:
            module.expert_gate_up, module.expert_down = stack_experts(module.skill_experts)
    for module in model.modules():
        if isinstance(module, MixtureAttention) and module.qkv is None:
            module.qkv, _ = fuse_linears((module.q_proj, module.k_proj, module.v_proj))
        elif isinstance(module, SiglipAttention) and module.qkv is None:
            module.qkv, module.qkv_bias = fuse_linears((module.q_proj, module.k_proj, module.v_proj))
        elif isinstance(module, GemmaMLP) and module.gate_up is None:
            module.gate_up, _ = fuse_linears((module.gate_proj, module.up_proj))
    return model


def is_fused(model: nn.Module) -> bool:
    from model.transformer import MixtureAttention

    return any(isinstance(m, MixtureAttention) and m.qkv is not None for m in model.modules())


def set_grouped_experts(model: nn.Module, enabled: bool) -> nn.Module:
    """Run the chosen experts of every fused MoEMLP as grouped GEMMs (torch._grouped_mm) instead of
    gathering their weights, in bf16 (the dtype `torch._grouped_mm` takes under torch.compile; other
    dtypes keep the gather); equal results (tests/test_model_fusion.py). Off by default."""
    from model.action_moe import MoEMLP

    for module in model.modules():
        if isinstance(module, MoEMLP):
            module.grouped_gemm = bool(enabled) and hasattr(torch, "_grouped_mm")
    return model
