"""Percentile normalisation of the ego state and the trajectory: n = 2(x - p01)/(p99 - p01) - 1.

The statistics are the 1st/99th percentiles of the authors' `b2d_statistics.json`. The three
acceleration axes share one pair, and so do the three angular-velocity axes. Everything here works
per sample on a leading batch dimension; the authors' `infer_traj` un-normalised only batch element 0
(their quirk Q11), which we do not reproduce.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch

Pair = tuple[float, float]


def normalize(x: torch.Tensor, pair: Pair) -> torch.Tensor:
    """Map [p01, p99] onto [-1, 1] (values outside are not clipped)."""
    low, high = pair
    return 2.0 * (x - low) / (high - low) - 1.0


def denormalize(n: torch.Tensor, pair: Pair) -> torch.Tensor:
    """Inverse of `normalize`: x = (n + 1)(p99 - p01)/2 + p01."""
    low, high = pair
    return (n + 1.0) * (high - low) / 2.0 + low


@dataclass(frozen=True)
class NormalizationStats:
    """Per-quantity (p01, p99) pairs, in the units of model/ego_state.py (m/s, m/s^2, rad/s, rad, m)."""

    speed: Pair = (-0.021534712985157967, 11.078810691833496)
    acceleration: Pair = (-7.852330207824707, 10.291455268859863)
    angular_velocity: Pair = (-0.5025739073753357, 0.4207775592803955)
    theta: Pair = (-0.18638665676116944, 0.22671463966369854)
    fur_x: Pair = (-0.009059280324727297, 8.094476861953734)
    fur_y: Pair = (-1.1331352233886718, 0.9688886409997939)
    command_far_x: Pair = (3.677370071411133, 57.07126235961914)
    command_far_y: Pair = (-16.13709259033203, 22.37385368347168)

    def __post_init__(self) -> None:
        for f in fields(self):
            pair = getattr(self, f.name)
            if len(pair) != 2 or not float(pair[1]) > float(pair[0]):
                raise ValueError(f"normalisation statistics: {f.name} must be [p01, p99] with p99 > p01, got {pair!r}")
            object.__setattr__(self, f.name, (float(pair[0]), float(pair[1])))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "statistics") -> "NormalizationStats":
        """Build from a b2d_statistics.json-style dict (extra keys are ignored, missing keys are errors)."""
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise ValueError(f"{source}: missing normalisation statistics {missing}")
        try:
            return cls(**{f.name: tuple(data[f.name]) for f in fields(cls)})
        except TypeError as error:
            raise ValueError(f"{source}: malformed statistics ({error})") from None

    def to_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in asdict(self).items()}

    def normalize_ego_state(
        self,
        speed: torch.Tensor,
        acceleration: torch.Tensor,
        angular_velocity: torch.Tensor,
        theta: torch.Tensor,
        command_far_x: torch.Tensor,
        command_far_y: torch.Tensor,
    ) -> torch.Tensor:
        """[..., T] / [..., T, 3] raw ego-state history -> [..., T, 10] normalised proprio tokens.

        Dims per step: speed, acc x/y/z, angular velocity x/y/z, theta, far command x, far command y.
        """
        return torch.cat(
            [
                normalize(speed, self.speed).unsqueeze(-1),
                normalize(acceleration, self.acceleration),
                normalize(angular_velocity, self.angular_velocity),
                normalize(theta, self.theta).unsqueeze(-1),
                normalize(command_far_x, self.command_far_x).unsqueeze(-1),
                normalize(command_far_y, self.command_far_y).unsqueeze(-1),
            ],
            dim=-1,
        )

    def normalize_goal(self, command_far_x: torch.Tensor, command_far_y: torch.Tensor) -> torch.Tensor:
        """[..., T] far-command history -> [..., 2] normalised goal point (the last step's command)."""
        return torch.stack(
            [normalize(command_far_x[..., -1], self.command_far_x), normalize(command_far_y[..., -1], self.command_far_y)],
            dim=-1,
        )

    def normalize_trajectory(self, trajectory: torch.Tensor) -> torch.Tensor:
        """[..., H, 2] metres (x forward, y lateral) -> normalised actions."""
        return torch.stack(
            [normalize(trajectory[..., 0], self.fur_x), normalize(trajectory[..., 1], self.fur_y)], dim=-1
        )

    def denormalize_trajectory(self, actions: torch.Tensor) -> torch.Tensor:
        """[..., H, 2] normalised actions -> metres, for every batch element."""
        return torch.stack(
            [denormalize(actions[..., 0], self.fur_x), denormalize(actions[..., 1], self.fur_y)], dim=-1
        )
