"""Flow matching (t = 0 noise, t = 1 data): time embedding, action encoder, time sampling, loss, Euler.

psi_t = (1 - (1 - sigma) t) x0 + t x1, target velocity u = x1 - (1 - sigma) x0, loss = mean (v - u)^2.
Training samples t = t_max (1 - z), z ~ Beta(alpha, beta); inference integrates N forward-Euler steps
from t = 0 with dt = 1/N (t accumulated in fp32, as the authors do).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import FlowConfig


def sinusoidal_time_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t [B] in [0, 1] (not scaled by 1000) -> [B, dim] = [sin(t w) | cos(t w)], w_i = exp(-i ln(P)/(half-1))."""
    half = dim // 2
    scale = math.log(max_period) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=t.device) * -scale)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ActionEncoder(nn.Module):
    """pi0-style action token: linear_3(SiLU(linear_2([time ; linear_1(x_t)]))), time first."""

    def __init__(self, action_dim: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.linear_1 = nn.Linear(action_dim, width, **kw)
        self.linear_2 = nn.Linear(2 * width, width, **kw)
        self.linear_3 = nn.Linear(width, width, **kw)

    def forward(self, actions: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        """actions [B, H, A], time_embedding [B, W] -> [B, H, W]."""
        dtype = self.linear_1.weight.dtype
        action_emb = self.linear_1(actions.to(dtype))
        time_emb = time_embedding.to(dtype).unsqueeze(1).expand(-1, actions.shape[1], -1)
        return self.linear_3(F.silu(self.linear_2(torch.cat([time_emb, action_emb], dim=-1))))


def sample_time(batch: int, cfg: FlowConfig, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> torch.Tensor:
    """t = t_max (1 - z), z ~ Beta(alpha, beta); [B] float32. Seeded when `generator` is given."""
    if cfg.time_beta_beta == 1.0:
        # Beta(a, 1) has CDF z^a, so z = u^(1/a) is an exact sample that can use a torch.Generator
        u = torch.rand(batch, generator=generator, device=device)
        z = u.pow(1.0 / cfg.time_beta_alpha)
    else:
        if generator is not None:
            raise ValueError("flow.time_beta_beta != 1: seeded time sampling (generator) is only supported for Beta(alpha, 1)")
        z = torch.distributions.Beta(cfg.time_beta_alpha, cfg.time_beta_beta).sample((batch,)).to(device)
    return cfg.time_max * (1.0 - z)


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, sig_min: float) -> torch.Tensor:
    """psi_t for t [B]."""
    t = t.view(-1, *([1] * (x1.dim() - 1)))
    return (1 - (1 - sig_min) * t) * x0 + t * x1


def target_velocity(x0: torch.Tensor, x1: torch.Tensor, sig_min: float) -> torch.Tensor:
    return x1 - (1 - sig_min) * x0


def flow_matching_loss(velocity: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, sig_min: float) -> torch.Tensor:
    """Mean over all elements of (v - u)^2."""
    return torch.mean((velocity.float() - target_velocity(x0, x1, sig_min).float()) ** 2)
