"""Skill-specialised action MoE: the per-trajectory router and the shared + routed expert MLP.

The router reads the post-attention RMSNorm output of one dense action layer, averages the per-token
logits over the action tokens and divides by |temperature|; one decision drives every MoE layer of
that forward pass. Experts are combined with dense [B, E] weights that are zero off the top-k: adding
0 * E_e(h) is exact, so the result equals the authors' ascending-index sum over the chosen experts,
with static shapes and no data-dependent control flow (GPU friendly).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class GemmaMLP(nn.Module):
    """down(GELU_tanh(gate(h)) * up(h)), no biases."""

    def __init__(self, hidden: int, intermediate: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"bias": False, "device": device, "dtype": dtype}
        self.gate_proj = nn.Linear(hidden, intermediate, **kw)
        self.up_proj = nn.Linear(hidden, intermediate, **kw)
        self.down_proj = nn.Linear(intermediate, hidden, **kw)
        self.gate_up: torch.Tensor | None = None  # [2I, W] view set by model.fusion.fuse_projections

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None and not torch.is_grad_enabled():
            gate, up = F.linear(h, self.gate_up).chunk(2, dim=-1)
            return self.down_proj(F.gelu(gate, approximate="tanh") * up)
        return self.down_proj(F.gelu(self.gate_proj(h), approximate="tanh") * self.up_proj(h))


@dataclass
class Routing:
    """One routing decision for a batch: logits/probs [B, E], top-k (descending) and dense weights."""

    logits: torch.Tensor
    probs: torch.Tensor
    topk_idx: torch.Tensor
    topk_weights: torch.Tensor
    dense_weights: torch.Tensor  # [B, E], zero off the top-k, in the activation dtype


class ActionRouter(nn.Module):
    """Linear(W_a -> E, no bias) per action token, mean over tokens, / |temperature|."""

    def __init__(self, hidden: int, num_experts: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(1, device=device, dtype=dtype))
        self.router_linear = nn.Linear(hidden, num_experts, bias=False, device=device, dtype=dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.router_linear(h).mean(dim=1) / self.temperature.abs()


def route(logits: torch.Tensor, top_k: int, dtype: torch.dtype, forced_experts: torch.Tensor | None = None) -> Routing:
    """Softmax in fp32, top-k in descending order, weights renormalised over the k chosen experts.

    `forced_experts` ([B] expert ids: ground-truth selection in training, counterfactuals) replaces the
    learned choice of a row by that single expert with weight 1 (its other top-k slots name it again with
    weight 0); a negative id keeps the row's learned choice. The logits still come from the router.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    weights, idx = torch.topk(probs, top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    if forced_experts is not None:
        forced = forced_experts.long().unsqueeze(-1)  # [B, 1]
        learned = forced < 0
        only_first = torch.zeros_like(weights)
        only_first[:, 0] = 1.0
        idx = torch.where(learned, idx, forced.expand_as(idx))
        weights = torch.where(learned, weights, only_first)
    weights = weights.to(dtype)
    # scatter_add: a forced row repeats its expert (weight 0 after the first), which scatter would race on
    dense = torch.zeros(probs.shape, dtype=dtype, device=probs.device).scatter_add(-1, idx, weights)
    return Routing(logits=logits, probs=probs, topk_idx=idx, topk_weights=weights, dense_weights=dense)


class MoEMLP(nn.Module):
    """Shared experts (always on, added last) + routed skill experts (keys shared_experts.*, skill_experts.*)."""

    def __init__(self, hidden: int, intermediate: int, num_experts: int, num_shared: int,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.shared_experts = nn.ModuleList(GemmaMLP(hidden, intermediate, device, dtype) for _ in range(num_shared))
        self.skill_experts = nn.ModuleList(GemmaMLP(hidden, intermediate, device, dtype) for _ in range(num_experts))
        self._stacked: tuple[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        # [E, 2I, W] gate|up and [E, W, I] down, the experts' own storage once fused (model.fusion)
        self.expert_gate_up: torch.Tensor | None = None
        self.expert_down: torch.Tensor | None = None
        self.grouped_gemm = False  # fused inference: the chosen experts as one grouped GEMM (torch._grouped_mm)

    @torch.compiler.disable
    def _stacked_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[E, I, W] gate/up and [E, W, I] down weights, rebuilt whenever a weight changed (load, step)."""
        params = [p for e in self.skill_experts for p in (e.gate_proj.weight, e.up_proj.weight, e.down_proj.weight)]
        try:
            key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        except RuntimeError:  # weights made under inference_mode have no version counter: rebuild each call
            key = None
        if key is None or self._stacked is None or self._stacked[0] != key:
            stacks = tuple(torch.stack([getattr(e, name).weight.detach() for e in self.skill_experts])
                           for name in ("gate_proj", "up_proj", "down_proj"))
            self._stacked = (key, stacks)
        return self._stacked[1]

    def forward(self, h: torch.Tensor, routing: Routing) -> torch.Tensor:
        b, k = routing.topk_idx.shape
        if torch.is_grad_enabled() or b * k >= len(self.skill_experts):
            out = self._dense(h, routing)
        elif self.expert_gate_up is not None and self.grouped_gemm and h.dtype == torch.bfloat16:  # _grouped_mm: bf16 only
            out = self._grouped(h, routing)
        else:
            out = self._gathered(h, routing)
        for expert in self.shared_experts:
            out = out + expert(h)
        return out

    def _dense(self, h: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Every expert on every sample, weighted by the dense (mostly zero) weights: training path."""
        weights = routing.dense_weights.to(h.dtype)
        out = torch.zeros_like(h)
        for e, expert in enumerate(self.skill_experts):
            out = out + expert(h) * weights[:, e, None, None]
        return out

    def _gathered(self, h: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Only the chosen experts, via weights gathered per sample (inference with B*k < E): fewer
        kernels and weight reads. Summed in ascending expert index like the dense path."""
        order = routing.topk_idx.argsort(dim=-1)
        idx = routing.topk_idx.gather(-1, order)
        weights = routing.topk_weights.gather(-1, order).to(h.dtype)
        hk = h.unsqueeze(1)  # [B, 1, T, W]
        if self.expert_gate_up is not None:  # fused: one gather + GEMM for gate and up
            gate, up = (hk @ self.expert_gate_up[idx].transpose(-1, -2)).chunk(2, dim=-1)
            act = F.gelu(gate, approximate="tanh") * up
            per_expert = act @ self.expert_down[idx].transpose(-1, -2)
        else:
            gate, up, down = self._stacked_weights()
            act = F.gelu(hk @ gate[idx].transpose(-1, -2), approximate="tanh") * (hk @ up[idx].transpose(-1, -2))
            per_expert = act @ down[idx].transpose(-1, -2)  # [B, k, T, W]
        out = torch.zeros_like(h)
        for j in range(idx.shape[1]):
            out = out + per_expert[:, j] * weights[:, j, None, None]
        return out


    def _grouped(self, h: torch.Tensor, routing: Routing) -> torch.Tensor:
        """The chosen experts' FFNs as two grouped GEMMs over the stacked weights (no weight gather):
        the B*k (sample, expert) token blocks are ordered by expert and the GEMM of an expert with no
        tokens is empty. Shapes are static and the group offsets stay on the device (graph safe).
        Summed in ascending expert index like the other paths."""
        b, t, w = h.shape
        k = routing.topk_idx.shape[1]
        num_experts = self.expert_gate_up.shape[0]
        order = routing.topk_idx.argsort(dim=-1)
        idx = routing.topk_idx.gather(-1, order)  # [B, k] ascending per sample
        weights = routing.topk_weights.gather(-1, order).to(h.dtype)
        flat = idx.reshape(-1)
        by_expert = flat.argsort(stable=True)  # block j of the GEMM input is (sample, slot) by_expert[j]
        blocks = h.unsqueeze(1).expand(b, k, t, w).reshape(b * k, t, w)[by_expert].reshape(b * k * t, w)
        experts = torch.arange(num_experts, device=flat.device)
        counts = (flat.unsqueeze(1) == experts).sum(0) * t  # not bincount: it reads its size on the host
        offsets = counts.cumsum(0).to(torch.int32)
        gate_up = torch._grouped_mm(blocks, self.expert_gate_up.transpose(-1, -2), offs=offsets)
        gate, up = gate_up.chunk(2, dim=-1)
        act = (F.gelu(gate, approximate="tanh") * up).contiguous()
        rows = torch._grouped_mm(act, self.expert_down.transpose(-1, -2), offs=offsets)  # [B*k*T, W]
        per_expert = torch.empty_like(rows).view(b * k, t, w)
        per_expert[by_expert] = rows.view(b * k, t, w)
        per_expert = per_expert.view(b, k, t, w)
        out = torch.zeros_like(h)
        for j in range(k):
            out = out + per_expert[:, j] * weights[:, j, None, None]
        return out


def load_balancing_loss(routing: Routing) -> torch.Tensor:
    """Switch-Transformer auxiliary loss E * sum_e f_e * P_e over the batch (f: dispatch fraction)."""
    num_experts = routing.probs.shape[-1]
    dispatch = torch.zeros_like(routing.probs).scatter(-1, routing.topk_idx, 1.0)
    fraction = dispatch.mean(dim=0) / routing.topk_idx.shape[-1]
    mean_prob = routing.probs.mean(dim=0)
    return num_experts * (fraction * mean_prob).sum()
