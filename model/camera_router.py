"""Scene-specialised vision MoE: the camera router that picks which candidate camera(s) to encode.

A learned query cross-attends to [goal-point token ; scaled front-t tokens] (waypoint token first),
then LayerNorm (eps 1e-5) and a small head give one logit per candidate camera
(`model.cameras.ROUTER_CANDIDATES` order). Keys: router_query, waypoint_projector.{0,2},
cross_attn (torch MultiheadAttention: packed in_proj, out_proj), ln, mlp.{0,3}.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.config import CameraRouterConfig


@dataclass
class CameraRouterOutput:
    logits: torch.Tensor  # [B, num_candidates]
    waypoint_token: torch.Tensor  # [B, W_v]
    attn_out: torch.Tensor  # [B, 1, W_v]
    ln_out: torch.Tensor  # [B, W_v]


class CameraRouter(nn.Module):
    def __init__(self, cfg: CameraRouterConfig, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.router_query = nn.Parameter(torch.zeros(1, 1, width, **kw))
        self.waypoint_projector = nn.Sequential(nn.Linear(2, cfg.waypoint_hidden, **kw), nn.ReLU(), nn.Linear(cfg.waypoint_hidden, width, **kw))
        self.cross_attn = nn.MultiheadAttention(width, cfg.num_heads, bias=True, batch_first=True, **kw)
        self.ln = nn.LayerNorm(width, eps=cfg.layer_norm_eps, **kw)
        self.mlp = nn.Sequential(
            nn.Linear(width, width // 2, **kw), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(width // 2, cfg.num_candidates, **kw)
        )

    def forward(self, front_tokens: torch.Tensor, goal: torch.Tensor) -> CameraRouterOutput:
        """front_tokens [B, P, W_v] (already divided by sqrt(W_v)); goal [B, 2] normalised goal point."""
        dtype = self.router_query.dtype
        waypoint = self.waypoint_projector(goal.to(dtype))
        memory = torch.cat([waypoint.unsqueeze(1), front_tokens.to(dtype)], dim=1)
        query = self.router_query.expand(front_tokens.shape[0], -1, -1)
        attn_out, _ = self.cross_attn(query, memory, memory)
        ln_out = self.ln(attn_out.squeeze(1))
        return CameraRouterOutput(logits=self.mlp(ln_out), waypoint_token=waypoint, attn_out=attn_out, ln_out=ln_out)
