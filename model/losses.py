"""Router losses of the authors' CombinedLoss: class-weighted focal losses on camera and skill logits.

FL = mean over samples of alpha[y] (1 - p_t)^gamma ce, with ce the cross-entropy, p_t = exp(-ce) and
alpha_c = (1/n_c) / sum_j (1/n_j) from hard-coded label counts (see `LossConfig`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def inverse_frequency_weights(counts: Sequence[int]) -> torch.Tensor:
    """alpha_c = (1/n_c) / sum_j(1/n_j), computed in float32 as the authors do (bitwise equal)."""
    if not counts or any(int(c) <= 0 for c in counts):
        raise ValueError(f"class counts must be positive, got {list(counts)}")
    inverse = 1.0 / torch.tensor([float(c) for c in counts], dtype=torch.float32)
    return inverse / inverse.sum()


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: torch.Tensor, gamma: float) -> torch.Tensor:
    """logits [B, C], targets [B] class ids -> scalar focal loss (fp32)."""
    if logits.shape[-1] != alpha.shape[0]:
        raise ValueError(f"focal loss: {logits.shape[-1]} logits per sample but {alpha.shape[0]} class weights")
    ce = F.cross_entropy(logits.float(), targets.long(), reduction="none")
    p_t = torch.exp(-ce)
    return (alpha.to(ce.device)[targets.long()] * (1 - p_t) ** gamma * ce).mean()
