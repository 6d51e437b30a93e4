"""SigLIP vision tower and the PaliGemma projector, with the authors' (= HF SigLIP) parameter names.

Pre-LN encoder, no CLS token, learned position embedding, GELU-tanh MLP, attention softmax in fp32
(scaled_dot_product_attention keeps its softmax in fp32 for every dtype), final post_layernorm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import VisionConfig


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size, **kw)
        self.position_embedding = nn.Embedding(cfg.num_patches, cfg.hidden_size, **kw)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        tokens = patches.flatten(2).transpose(1, 2)  # row-major over the patch grid
        return tokens + self.position_embedding.weight


class SiglipAttention(nn.Module):
    def __init__(self, cfg: VisionConfig, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, **kw)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, **kw)
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, **kw)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, **kw)
        self.qkv: torch.Tensor | None = None  # [q; k; v] weight and bias views set by model.fusion
        self.qkv_bias: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        if self.qkv is not None and not torch.is_grad_enabled():
            projected = F.linear(x, self.qkv, self.qkv_bias).chunk(3, dim=-1)
        else:
            projected = (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        q, k, v = (p.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2) for p in projected)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class SiglipMLP(nn.Module):
    def __init__(self, cfg: VisionConfig, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, device=device, dtype=dtype)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.self_attn = SiglipAttention(cfg, device, dtype)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, device=device, dtype=dtype)
        self.mlp = SiglipMLP(cfg, device, dtype)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg, device, dtype) for _ in range(cfg.num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class SiglipVisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg, device, dtype)
        self.encoder = SiglipEncoder(cfg, device, dtype)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, device=device, dtype=dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))


class SiglipVisionTower(nn.Module):
    """[N, 3, S, S] pixels in [-1, 1] -> [N, num_patches, width] (key prefix `vision_model.`)."""

    def __init__(self, cfg: VisionConfig, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.vision_model = SiglipVisionTransformer(cfg, device, dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_model(pixel_values)


class MultiModalProjector(nn.Module):
    """Linear map from the SigLIP width to the VLM width (key `linear`)."""

    def __init__(self, in_features: int, out_features: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
