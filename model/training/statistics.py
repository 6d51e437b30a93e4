"""Normalisation statistics of a training index, with the DriveMoE authors' percentile rule.

Each quantity gets a [p01, p99] pair: the 1st and 99th percentiles (numpy linear interpolation)
of all its values over the training windows — every history step of every window for the ego
state, every future waypoint for the trajectory. The three acceleration axes share one pair, as do
the three angular-velocity axes. The output has the keys and layout of the authors'
`b2d_statistics.json`, so the model's normaliser reads either file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench2drive_eval.jsonio import read_json, write_json_atomic

STATISTICS_KEYS: tuple[str, ...] = (
    "speed",
    "acceleration",
    "angular_velocity",
    "theta",
    "fur_x",
    "fur_y",
    "command_far_x",
    "command_far_y",
)
LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.0
# A quantity with (almost) no spread (e.g. a tiny dataset driving straight) would make the
# normalisation divide by ~0; its pair is widened to value -/+ DEGENERATE_HALF_WIDTH.
DEGENERATE_HALF_WIDTH = 1.0
MIN_SPREAD = 1e-6


def _pair(values: np.ndarray, name: str) -> list[float]:
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if flat.size == 0:
        raise ValueError(f"no values to compute the statistics of {name!r}: the training split is empty")
    low, high = (float(v) for v in np.percentile(flat, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    if high - low < MIN_SPREAD:
        middle = 0.5 * (low + high)
        return [middle - DEGENERATE_HALF_WIDTH, middle + DEGENERATE_HALF_WIDTH]
    return [low, high]


def compute_statistics(ego_state: np.ndarray, actions: np.ndarray) -> dict[str, list[float]]:
    """Statistics from raw ego states [N, T, 10] (EGO_STATE_FIELDS order) and waypoints [N, H, 2] (metres)."""
    ego = np.asarray(ego_state)
    act = np.asarray(actions)
    if ego.ndim != 3 or ego.shape[-1] != 10:
        raise ValueError(f"ego_state must be [N, T, 10], got {ego.shape}")
    if act.ndim != 3 or act.shape[-1] != 2:
        raise ValueError(f"actions must be [N, H, 2], got {act.shape}")
    return {
        "speed": _pair(ego[..., 0], "speed"),
        "acceleration": _pair(ego[..., 1:4], "acceleration"),
        "angular_velocity": _pair(ego[..., 4:7], "angular_velocity"),
        "theta": _pair(ego[..., 7], "theta"),
        "fur_x": _pair(act[..., 0], "fur_x"),
        "fur_y": _pair(act[..., 1], "fur_y"),
        "command_far_x": _pair(ego[..., 8], "command_far_x"),
        "command_far_y": _pair(ego[..., 9], "command_far_y"),
    }


AUTHORS_JSON_INDENT = 4  # their get_statistics.py writes json.dump(data, f, indent=4)


def write_statistics(path: Path, statistics: dict[str, list[float]]) -> None:
    """Write in the authors' layout: the keys in their order, [p01, p99] each, indent 4."""
    write_json_atomic(Path(path), {key: [float(v) for v in statistics[key]] for key in STATISTICS_KEYS},
                      indent=AUTHORS_JSON_INDENT)


def read_statistics(path: Path) -> dict[str, tuple[float, float]]:
    """Read a statistics file (ours or the authors'); errors name the file and the bad key."""
    data = read_json(Path(path))
    if not isinstance(data, dict):
        raise ValueError(f"statistics file {path}: expected a JSON object")
    out = {}
    for key in STATISTICS_KEYS:
        pair = data.get(key)
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair)):
            raise ValueError(f"statistics file {path}: key {key!r} must be [p01, p99], got {pair!r}")
        if not pair[1] > pair[0]:
            raise ValueError(f"statistics file {path}: key {key!r} has p99 <= p01 ({pair})")
        out[key] = (float(pair[0]), float(pair[1]))
    return out
