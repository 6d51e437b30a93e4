"""Comfort/smoothness from per-route metric_info.json, computed as Bench2Drive's efficiency_smoothness tool does.

Upstream quirks reproduced on purpose so that numbers stay comparable (see docs/evaluation-metrics.md):
the 20 Hz log is filtered with dt = 0.1 s; CARLA's angular velocity is in deg/s but checked against rad/s
bounds; the "yaw acceleration" is the smoothed yaw *rate* (no derivative is taken); the yaw rate is
phase-unwrapped with 2*pi although it is a rate in deg/s.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from bench2drive_eval.jsonio import JSONFileError, read_json

# Bounds (strict inequalities), from Bench2Drive / nuPlan's comfort metrics.
MIN_LON_ACCEL = -4.05  # m/s^2
MAX_LON_ACCEL = 2.40  # m/s^2
MAX_ABS_LAT_ACCEL = 4.89  # m/s^2
MAX_ABS_JERK = 8.37  # m/s^3
MAX_ABS_LON_JERK = 4.13  # m/s^3
MAX_ABS_YAW_ACCEL = 1.93  # rad/s^2 (applied to deg/s data, see module docstring)
MAX_ABS_YAW_RATE = 0.95  # rad/s (applied to deg/s data)


@dataclass(frozen=True)
class ComfortConfig:
    window: int = 7
    poly_order: int = 2
    dt: float = 0.1  # upstream's time step, although the log is written at 20 Hz
    chunk_steps: int = 20


@dataclass(frozen=True)
class ChunkCheck:
    """Which bounds a chunk stays strictly inside."""

    lon_acc: bool
    lat_acc: bool
    jerk: bool
    lon_jerk: bool
    yaw_acc: bool
    yaw_rate: bool

    @property
    def passed(self) -> bool:
        return all((self.lon_acc, self.lat_acc, self.jerk, self.lon_jerk, self.yaw_acc, self.yaw_rate))


@dataclass(frozen=True)
class MotionLog:
    """Per-step ego motion as dumped into metric_info.json (only the fields the metric uses)."""

    acceleration: np.ndarray  # (T, 3) m/s^2, world frame
    angular_velocity: np.ndarray  # (T, 3) deg/s (CARLA)
    forward_vector: np.ndarray  # (T, 3)
    right_vector: np.ndarray  # (T, 3)

    def __len__(self) -> int:
        return len(self.angular_velocity)

    def slice(self, start: int, stop: int) -> "MotionLog":
        return MotionLog(self.acceleration[start:stop], self.angular_velocity[start:stop],
                         self.forward_vector[start:stop], self.right_vector[start:stop])


class ComfortError(ValueError):
    """A metric_info.json cannot be used; the message names the file and the problem."""


def _phase_unwrap(values: np.ndarray) -> np.ndarray:
    steps = np.zeros_like(values)
    steps[1:] = np.cumsum(np.round(np.diff(values) / (2.0 * math.pi)))
    return values - 2.0 * math.pi * steps


def _inside(values: np.ndarray, low: float, high: float) -> bool:
    return bool(np.all((values > low) & (values < high)))


def check_chunk(log: MotionLog, config: ComfortConfig = ComfortConfig()) -> ChunkCheck:
    """Apply the six comfort bounds to one chunk (upstream's compute_comfort_metric)."""
    from scipy.signal import savgol_filter

    window = min(config.window, len(log))
    if not config.poly_order < window:
        raise ComfortError(f"{len(log)} steps are too few for a order-{config.poly_order} Savitzky-Golay filter")

    def smooth(values: np.ndarray, deriv: int = 0) -> np.ndarray:
        return savgol_filter(values, window_length=window, polyorder=config.poly_order, deriv=deriv,
                             delta=config.dt, axis=-1)

    acc = log.acceleration[:, :2]
    lon_acc = np.einsum("ij,ij->i", acc, log.forward_vector[:, :2])
    lat_acc = np.einsum("ij,ij->i", acc, log.right_vector[:, :2])
    magnitude = np.hypot(acc[:, 0], acc[:, 1])
    yaw_rate_raw = _phase_unwrap(log.angular_velocity[:, 2])
    yaw_acc = smooth(yaw_rate_raw)  # upstream quirk: no derivative here
    yaw_rate = smooth(yaw_rate_raw)
    lon_acc = smooth(lon_acc)
    lat_acc = smooth(lat_acc)
    magnitude = smooth(magnitude)
    jerk = smooth(magnitude, deriv=1)
    lon_jerk = smooth(lon_acc, deriv=1)
    return ChunkCheck(
        lon_acc=_inside(lon_acc, MIN_LON_ACCEL, MAX_LON_ACCEL),
        lat_acc=_inside(lat_acc, -MAX_ABS_LAT_ACCEL, MAX_ABS_LAT_ACCEL),
        jerk=_inside(jerk, -MAX_ABS_JERK, MAX_ABS_JERK),
        lon_jerk=_inside(lon_jerk, -MAX_ABS_LON_JERK, MAX_ABS_LON_JERK),
        yaw_acc=_inside(yaw_acc, -MAX_ABS_YAW_ACCEL, MAX_ABS_YAW_ACCEL),
        yaw_rate=_inside(yaw_rate, -MAX_ABS_YAW_RATE, MAX_ABS_YAW_RATE),
    )


def chunk_checks(log: MotionLog, config: ComfortConfig = ComfortConfig()) -> list[ChunkCheck]:
    """Checks of every complete chunk; a log of at most one chunk is checked as a single block."""
    n = config.chunk_steps
    if len(log) <= n:
        return [check_chunk(log, config)]
    # Upstream drops the incomplete last chunk.
    return [check_chunk(log.slice(start, start + n), config) for start in range(0, len(log) - n + 1, n)]


def route_smoothness(log: MotionLog, config: ComfortConfig = ComfortConfig()) -> float:
    """Fraction of chunks inside all bounds (0 or 1 when the log is a single block)."""
    checks = chunk_checks(log, config)
    return sum(check.passed for check in checks) / len(checks)


def _vectors(steps: Sequence[dict], key: str, path: Path) -> np.ndarray:
    try:
        array = np.asarray([step[key] for step in steps], dtype=np.float64)
    except KeyError:
        raise ComfortError(f"{path}: a step has no '{key}'") from None
    except (TypeError, ValueError):
        raise ComfortError(f"{path}: '{key}' is not a list of 3 numbers in every step") from None
    if array.ndim != 2 or array.shape[1] < 3:
        raise ComfortError(f"{path}: '{key}' must hold 3 numbers per step, got shape {array.shape}")
    return array


def load_metric_info(path: str | os.PathLike) -> MotionLog:
    """Read metric_info.json ({step: {acceleration, angular_velocity, forward_vector, right_vector, ...}})."""
    path = Path(path)
    try:
        data = read_json(path)
    except JSONFileError as error:
        raise ComfortError(str(error)) from None
    if not isinstance(data, dict) or not data:
        raise ComfortError(f"{path}: expected a non-empty object of steps")
    steps = list(data.values())  # upstream iterates the file's key order
    if not all(isinstance(step, dict) for step in steps):
        raise ComfortError(f"{path}: every step must be an object")
    return MotionLog(
        acceleration=_vectors(steps, "acceleration", path),
        angular_velocity=_vectors(steps, "angular_velocity", path),
        forward_vector=_vectors(steps, "forward_vector", path),
        right_vector=_vectors(steps, "right_vector", path),
    )


@dataclass(frozen=True)
class ComfortResult:
    per_route: dict[str, float]  # save_name -> passing fraction (0-1)
    problems: tuple[str, ...]  # routes whose metric_info.json is missing or unusable

    @property
    def smoothness(self) -> float | None:
        """Mean passing fraction over routes with a usable log, 0-1."""
        return sum(self.per_route.values()) / len(self.per_route) if self.per_route else None


def compute_comfort(save_path: str | os.PathLike, save_names: Iterable[str],
                    config: ComfortConfig = ComfortConfig()) -> ComfortResult:
    """Smoothness over the routes' `SAVE_PATH/<save_name>/metric_info.json` files.

    Upstream stops at the first missing file; we skip such routes and list them.
    """
    save_path = Path(save_path)
    if not save_path.is_dir():
        raise FileNotFoundError(f"{save_path}: save path (folder of per-route outputs) not found")
    per_route: dict[str, float] = {}
    problems: list[str] = []
    for name in tqdm(list(save_names), desc="comfort (metric_info.json)", unit="route", disable=None):
        path = save_path / name / "metric_info.json"
        if not name or not path.is_file():
            problems.append(f"{path}: missing")
            continue
        try:
            per_route[name] = route_smoothness(load_metric_info(path), config)
        except ComfortError as error:
            problems.append(str(error) if str(path) in str(error) else f"{path}: {error}")
    return ComfortResult(per_route, tuple(problems))
