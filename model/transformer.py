"""The joint "mixture of transformers": VLM, proprio and action weight groups sharing one attention.

Per layer each active stream applies its own RMSNorm and Q/K/V projections; the keys/values of all
streams (and of a cached prefix) are concatenated in the order vlm, proprio, action; one grouped-query
attention with RoPE, a tanh soft-cap before the additive mask and an fp32 softmax; then each stream its
own o_proj, post-attention RMSNorm and MLP (the action stream's last layers are MoE). In the last layer
the VLM stream only contributes keys/values. The KV cache is a preallocated buffer: the prefix pass
fills its first columns, each denoising step overwrites the action columns.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from model.action_moe import ActionRouter, GemmaMLP, MoEMLP, Routing, route
from model.config import ModelConfig

STREAMS: tuple[str, ...] = ("vlm", "proprio", "action")


class GemmaRMSNorm(nn.Module):
    """y = x * rsqrt(mean(x^2) + eps) * (1 + w), in fp32, cast back to the input dtype."""

    def __init__(self, dim: int, eps: float, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)  # one fused kernel on CUDA
        return (y * (1.0 + self.weight.float())).type_as(x)


class MixtureAttention(nn.Module):
    """Q/K/V/O projections of one stream (no biases); the attention itself is joint."""

    def __init__(self, hidden: int, cfg: ModelConfig, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        j = cfg.joint
        kw = {"bias": False, "device": device, "dtype": dtype}
        self.q_proj = nn.Linear(hidden, j.num_heads * j.head_dim, **kw)
        self.k_proj = nn.Linear(hidden, j.num_kv_heads * j.head_dim, **kw)
        self.v_proj = nn.Linear(hidden, j.num_kv_heads * j.head_dim, **kw)
        self.o_proj = nn.Linear(j.num_heads * j.head_dim, hidden, **kw)
        self.qkv: torch.Tensor | None = None  # [q; k; v] weight view set by model.fusion.fuse_projections
        self._sizes = (j.num_heads * j.head_dim, j.num_kv_heads * j.head_dim, j.num_kv_heads * j.head_dim)

    def project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, k, v) of `h`: one GEMM when fused and gradients are off, else three."""
        if self.qkv is not None and not torch.is_grad_enabled():
            q, k, v = F.linear(h, self.qkv).split(self._sizes, dim=-1)
            return q, k, v
        return self.q_proj(h), self.k_proj(h), self.v_proj(h)


class MixtureLayer(nn.Module):
    def __init__(self, hidden: int, intermediate: int, cfg: ModelConfig, moe: bool,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.self_attn = MixtureAttention(hidden, cfg, device, dtype)
        if moe:
            m = cfg.action_moe
            self.mlp: nn.Module = MoEMLP(hidden, intermediate, m.num_experts, m.num_shared_experts, device, dtype)
        else:
            self.mlp = GemmaMLP(hidden, intermediate, device, dtype)
        self.input_layernorm = GemmaRMSNorm(hidden, cfg.joint.rms_norm_eps, device, dtype)
        self.post_attention_layernorm = GemmaRMSNorm(hidden, cfg.joint.rms_norm_eps, device, dtype)
        self.is_moe = moe


class Mixture(nn.Module):
    """The layers of one stream, plus its final RMSNorm (proprio and action only)."""

    def __init__(self, name: str, cfg: ModelConfig, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        width = getattr(cfg.joint, name)
        self.layers = nn.ModuleList(
            MixtureLayer(width.hidden_size, width.intermediate_size, cfg,
                         moe=(name == "action" and cfg.use_action_moe and i >= cfg.first_moe_layer), device=device, dtype=dtype)
            for i in range(cfg.joint.num_layers)
        )
        self.norm = GemmaRMSNorm(width.hidden_size, cfg.joint.rms_norm_eps, device, dtype) if name != "vlm" else None


def entry_scale(width: int, dtype: torch.dtype) -> float:
    """sqrt(width) rounded to `dtype` (the authors multiply by a tensor of that dtype), in pure Python so
    that no tensor is created per call (CUDA graphs, torch.compile without graph breaks)."""
    value = width ** 0.5
    if dtype == torch.float64:
        return value
    if dtype == torch.float16:
        return struct.unpack("<e", struct.pack("<e", value))[0]
    as_float32 = struct.unpack("<f", struct.pack("<f", value))[0]
    if dtype != torch.bfloat16:
        return as_float32
    bits = struct.unpack("<I", struct.pack("<f", as_float32))[0]
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round to nearest even on the top 16 bits
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [..., T] -> cos, sin [..., T, head_dim] (angles in fp32, [angle | angle] layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    angles = positions.float().unsqueeze(-1) * inv_freq
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, d]; cos/sin broadcastable to it. Rotate-half convention."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """q [B, Hq, Tq, d], k/v [B, Hkv, Tk, d], additive mask [B, 1, Tq, Tk] -> [B, Hq, Tq, d].

    KV head j serves query heads j*r .. j*r+r-1; the query heads of a group are folded into the row
    dimension instead of repeating K/V.
    """
    b, hq, tq, d = q.shape
    hkv = k.shape[1]
    r = hq // hkv
    scores = torch.matmul(q.reshape(b, hkv, r * tq, d), k.transpose(-1, -2)) / math.sqrt(d)
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores.view(b, hkv, r, tq, -1)
    if scores.dtype in (torch.bfloat16, torch.float16):
        # add the mask in fp32: under autocast with fp32 weights the mask holds float32's minimum, which is
        # -inf in bf16, and a fully masked (padding) row would turn into NaN and spread through V
        scores = scores.float()
    scores = scores + mask.to(scores.dtype).unsqueeze(2)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs.view(b, hkv, r * tq, -1), v).view(b, hq, tq, d)


_COMPILED_FLEX = None


def flex_grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Same contract as `grouped_attention`, through FlexAttention: the tanh soft-cap and the additive
    mask are one score_mod, GQA without repeating K/V, scores and softmax in fp32 inside the kernel
    (compiled on CUDA; the eager reference elsewhere). Equal to `grouped_attention` in fp32 within
    rounding (tests/test_model_fusion.py); under bf16 it rounds less (fp32 scores)."""
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention

    additive = mask.to(torch.float32)

    def score_mod(score, b, h, q_idx, kv_idx):
        if softcap:
            score = torch.tanh(score / softcap) * softcap
        return score + additive[b, 0, q_idx, kv_idx]

    kernel = flex_attention
    if q.is_cuda:
        if _COMPILED_FLEX is None:
            _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
        kernel = _COMPILED_FLEX
    return kernel(q, k, v, score_mod=score_mod, enable_gqa=k.shape[1] != q.shape[1])


ATTENTION_KERNELS = {"eager": grouped_attention, "flex": flex_grouped_attention}


@dataclass
class KVCache:
    """Post-RoPE keys/values per layer: [num_layers, B, H_kv, S, head_dim] (preallocated)."""

    keys: torch.Tensor
    values: torch.Tensor

    @classmethod
    def allocate(cls, cfg: ModelConfig, batch: int, length: int, device: torch.device, dtype: torch.dtype) -> "KVCache":
        shape = (cfg.joint.num_layers, batch, cfg.joint.num_kv_heads, length, cfg.joint.head_dim)
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))


@dataclass
class StreamInput:
    """One active stream: embeddings (before the sqrt(width) entry scaling) and its RoPE tables."""

    embeds: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


@dataclass
class JointOutput:
    hidden: dict[str, torch.Tensor]  # final hidden per active stream (proprio/action after their norm)
    routing: Routing | None = None
    router_input: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class JointModel(nn.Module):
    """`mixtures.{vlm,proprio,action}` and, for DriveMoE, `action_router`."""

    def __init__(self, cfg: ModelConfig, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.mixtures = nn.ModuleDict({name: Mixture(name, cfg, device, dtype) for name in STREAMS})
        self.action_router = (
            ActionRouter(cfg.joint.action.hidden_size, cfg.action_moe.num_experts, device, dtype) if cfg.use_action_moe else None
        )
        self.tie_proprio_to_action()
        self.attention_kernel = "eager"  # or "flex" (ATTENTION_KERNELS); not part of the state_dict

    def tie_proprio_to_action(self) -> None:
        """Share the proprio weights with the action weights, as the authors' training does.

        Drive-pi0: the whole proprio mixture is the action mixture. DriveMoE: only the dense layers
        before the first MoE layer; the proprio stream keeps its own last layers and final norm.
        """
        proprio, action = self.mixtures["proprio"], self.mixtures["action"]
        n_tied = self.cfg.first_moe_layer if self.cfg.use_action_moe else self.cfg.joint.num_layers
        for i in range(n_tied):
            proprio.layers[i] = action.layers[i]
        if not self.cfg.use_action_moe:
            proprio.norm = action.norm

    def tied_parameter_names(self) -> list[tuple[str, str]]:
        """(proprio name, action name) pairs that share storage, with the joint_model. prefix."""
        pairs = []
        n_tied = self.cfg.first_moe_layer if self.cfg.use_action_moe else self.cfg.joint.num_layers
        for i in range(n_tied):
            for name, _ in self.mixtures["action"].layers[i].named_parameters():
                pairs.append((f"joint_model.mixtures.proprio.layers.{i}.{name}", f"joint_model.mixtures.action.layers.{i}.{name}"))
        if not self.cfg.use_action_moe:
            pairs.append(("joint_model.mixtures.proprio.norm.weight", "joint_model.mixtures.action.norm.weight"))
        return pairs

    def forward(
        self,
        streams: dict[str, StreamInput],
        mask: torch.Tensor,
        cache: KVCache | None = None,
        cache_offset: int = 0,
        forced_experts: torch.Tensor | None = None,
    ) -> JointOutput:
        """Run the active streams (a subset of vlm, proprio, action, in that order) through all layers.

        With `cache`, the new keys/values are written at columns [cache_offset, cache_offset + T) and
        attention reads columns [0, cache_offset + T); `mask` must cover exactly those columns.
        """
        cfg = self.cfg
        j = cfg.joint
        names = [n for n in STREAMS if n in streams]
        n_layers = j.num_layers
        x = {}
        for n in names:
            emb = streams[n].embeds
            x[n] = emb * entry_scale(getattr(j, n).hidden_size, emb.dtype)
        lengths = [x[n].shape[1] for n in names]
        total = sum(lengths)
        b = x[names[0]].shape[0]
        routing: Routing | None = None
        router_input: torch.Tensor | None = None
        for layer_idx in range(n_layers):
            last = layer_idx == n_layers - 1
            qs, ks, vs = [], [], []
            for n in names:
                layer = self.mixtures[n].layers[layer_idx]
                h = layer.input_layernorm(x[n])
                t = h.shape[1]
                q, k, v = layer.self_attn.project(h)
                q = q.reshape(b, t, j.num_heads, j.head_dim).transpose(1, 2)
                k = k.reshape(b, t, j.num_kv_heads, j.head_dim).transpose(1, 2)
                v = v.reshape(b, t, j.num_kv_heads, j.head_dim).transpose(1, 2)
                cos, sin = streams[n].cos, streams[n].sin
                qs.append(apply_rope(q, cos, sin))
                ks.append(apply_rope(k, cos, sin))
                vs.append(v)
            q = torch.cat(qs, dim=2) if len(qs) > 1 else qs[0]
            k = torch.cat(ks, dim=2) if len(ks) > 1 else ks[0]
            v = torch.cat(vs, dim=2) if len(vs) > 1 else vs[0]
            if cache is not None:
                end = cache_offset + total
                cache.keys[layer_idx, :, :, cache_offset:end] = k
                cache.values[layer_idx, :, :, cache_offset:end] = v
                k = cache.keys[layer_idx, :, :, :end]
                v = cache.values[layer_idx, :, :, :end]
            out = ATTENTION_KERNELS[self.attention_kernel](q, k, v, mask, j.attn_softcap)
            start = 0
            for n, t in zip(names, lengths):
                o = out[:, :, start:start + t]
                start += t
                if n == "vlm" and last:
                    continue  # the VLM's last layer only provides keys/values
                layer = self.mixtures[n].layers[layer_idx]
                x[n] = x[n] + layer.self_attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
                h = layer.post_attention_layernorm(x[n])
                if layer.is_moe:
                    if routing is None:
                        raise RuntimeError("MoE layer reached before the router layer")  # config validation prevents this
                    x[n] = x[n] + layer.mlp(h, routing)
                else:
                    x[n] = x[n] + layer.mlp(h)
                if n == "action" and self.action_router is not None and layer_idx == cfg.router_layer:
                    router_input = h
                    routing = route(self.action_router(h), cfg.action_moe.top_k, h.dtype, forced_experts)
        hidden = {}
        for n in names:
            norm = self.mixtures[n].norm
            hidden[n] = norm(x[n]) if norm is not None else x[n]
        return JointOutput(hidden=hidden, routing=routing, router_input=router_input)
