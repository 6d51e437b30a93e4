"""Waypoints -> CARLA steer / throttle / brake: lateral and longitudinal PID with caps and recovery.

Input: predicted waypoints [H, 2] in the ego frame (x forward, y right, metres) at 10 Hz, the first
point being the current position, and the measured speed (m/s). Signs: CARLA steer > 0 turns right,
so an aim point with y < 0 (to the left) gives steer < 0.

Longitudinal: desired speed from the waypoint spacing (`half_second`: |wp5 - wp0| / 0.5 s;
`official`: |wp7 - wp0| * 2, which spans 0.7 s and over-estimates by ~1.4x); brake when the desired
speed is below `brake_speed` or speed / desired > `brake_ratio`; otherwise a PID on the speed error
clipped to [0, clip_delta], throttle clipped to [0, max_throttle]. Above a speed cap (turn cap when
|steer| > threshold, else max speed) the throttle is limited to `capped_throttle`.
Lateral: aim at the first waypoint at least `aim_distance_slow` (or `aim_distance_fast` when the
desired speed is high) away, else the last one; angle = atan2(y, x) in degrees / 90 into a PID.
`aim_origin` says what "away" and the angle are measured from: `first_waypoint` (wp0, the predicted
current position; the aim vector is wp - wp0) or `ego` (the car's origin; the authors' src/utils/pid.py:59-66).
Below `steer_standstill_speed` (and for aim vectors shorter than `min_aim_norm`) the angle fed to the PID is 0,
so the integrator does not wind up while the car stands (pid.py:67-69).
The waypoints keep the dtype the policy returns (float32): the desired speed, the aim search and
the angle are computed in it, as the authors' numpy code does, so the replay matches to float32 rounding.
Recovery (`creep`): after standing still for `after_s` with a stop predicted, drive with a fixed small
throttle for `duration_s`, never above `max_speed`; then the standstill timer starts again.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from agent.runtime.config import ControllerConfig, PIDGains

WAYPOINT_DT = 0.1  # seconds between predicted waypoints (10 Hz)
_EPS = 1e-6  # timers accumulate float steps; compare with a tolerance


class PIDController:
    """PID over a sliding window: integral = mean of the window, derivative = last difference."""

    def __init__(self, gains: PIDGains) -> None:
        self.gains = gains
        self._window: deque[float] = deque([0.0] * gains.window, maxlen=gains.window)
        self._sum = 0.0
        self.terms = (0.0, 0.0, 0.0)  # (error, integral, derivative) of the last step

    def step(self, error: float) -> float:
        error = float(error)
        self._sum += error - self._window[0]
        previous = self._window[-1]
        self._window.append(error)
        integral = self._sum / len(self._window)
        derivative = error - previous
        self.terms = (error, integral, derivative)
        return self.gains.kp * error + self.gains.ki * integral + self.gains.kd * derivative

    def reset(self) -> None:
        self._window.extend([0.0] * self.gains.window)
        self._sum = 0.0


@dataclass(frozen=True)
class ControlCommand:
    """One control decision and the quantities it was derived from (for the trace)."""

    steer: float
    throttle: float
    brake: float
    desired_speed: float
    aim: tuple[float, float]
    creeping: bool = False

    def as_dict(self) -> dict[str, float]:
        return {"steer": self.steer, "throttle": self.throttle, "brake": self.brake}


BRAKE = ControlCommand(steer=0.0, throttle=0.0, brake=1.0, desired_speed=0.0, aim=(0.0, 0.0))


def _float_waypoints(waypoints: np.ndarray) -> np.ndarray:
    wp = np.asarray(waypoints)
    return wp if wp.dtype in (np.float32, np.float64) else wp.astype(np.float64)


def desired_speed_from_waypoints(waypoints: np.ndarray, mode: str) -> float:
    """Target speed (m/s) implied by the waypoint spacing; see the module docstring for the modes."""
    wp = _float_waypoints(waypoints)
    if mode == "official":
        index, factor = 7, 2.0  # the authors' computation (src/utils/pid.py:43), kept for reproduction
    elif mode == "half_second":
        index, factor = 5, 1.0 / (5 * WAYPOINT_DT)
    else:
        raise ValueError(f"unknown desired speed mode {mode!r}")
    index = min(index, wp.shape[0] - 1)
    return float(np.linalg.norm(wp[index] - wp[0]) * factor)


def aim_point(waypoints: np.ndarray, min_distance: float, origin: str = "first_waypoint") -> np.ndarray:
    """The aim vector: the first waypoint at least `min_distance` from the origin, else the last.

    `first_waypoint`: distances from wp0 and the vector wp - wp0; `ego`: from (0, 0), the point itself.
    """
    if origin not in ("first_waypoint", "ego"):
        raise ValueError(f"unknown aim origin {origin!r}")
    wp = _float_waypoints(waypoints)
    relative = wp - wp[0] if origin == "first_waypoint" else wp
    distance = np.linalg.norm(relative, axis=1)
    far = np.nonzero(distance >= min_distance)[0]
    return relative[far[0]] if far.size else relative[-1]


class Controller:
    """Stateful waypoint follower; call `step` once per model inference with the elapsed time."""

    def __init__(self, config: ControllerConfig, desired_speed_mode: str = "half_second") -> None:
        self.config = config
        self.desired_speed_mode = desired_speed_mode
        self.turn_pid = PIDController(config.turn_pid)
        self.speed_pid = PIDController(config.speed_pid)
        self.standstill_s = 0.0
        self.creep_left_s = 0.0
        self.creep_events = 0
        self.last_angle = 0.0  # the steering error of the last step (for traces and replays)

    def step(self, waypoints: np.ndarray, speed: float, dt: float = WAYPOINT_DT) -> ControlCommand:
        cfg = self.config
        wp = _float_waypoints(waypoints)
        if wp.ndim != 2 or wp.shape[1] != 2 or wp.shape[0] < 2 or not np.all(np.isfinite(wp)):
            raise ValueError(f"waypoints must be a finite [H>=2, 2] array, got shape {wp.shape}")
        speed = float(speed) if math.isfinite(speed) else 0.0
        desired = desired_speed_from_waypoints(wp, self.desired_speed_mode)

        fast = desired >= cfg.aim_fast_speed
        aim = aim_point(wp, cfg.aim_distance_fast if fast else cfg.aim_distance_slow, cfg.aim_origin)
        if speed < cfg.steer_standstill_speed or math.hypot(aim[0], aim[1]) < cfg.min_aim_norm:
            angle = 0.0  # standing, or no direction to follow when the prediction collapses to a point
        else:
            angle = float(np.degrees(np.arctan2(aim[1], aim[0])) / 90.0)
        self.last_angle = angle
        steer = min(max(self.turn_pid.step(angle), -1.0), 1.0)

        brake = desired < cfg.brake_speed or (desired > 0 and speed / desired > cfg.brake_ratio)
        delta = min(max(desired - speed, 0.0), cfg.clip_delta)
        throttle = min(max(self.speed_pid.step(delta), 0.0), cfg.max_throttle)
        turning = abs(steer) > cfg.turn_steer_threshold
        if (turning and speed > cfg.turn_speed_cap) or speed > cfg.max_speed:
            throttle = min(throttle, cfg.capped_throttle)
        if brake:
            throttle = 0.0

        creeping = self._update_creep(speed, stop_predicted=brake, dt=dt)
        if creeping:
            brake = False
            throttle = cfg.creep.throttle if speed < cfg.creep.max_speed else 0.0
        return ControlCommand(
            steer=steer,
            throttle=throttle,
            brake=1.0 if brake else 0.0,
            desired_speed=desired,
            aim=(float(aim[0]), float(aim[1])),
            creeping=creeping,
        )

    def _update_creep(self, speed: float, stop_predicted: bool, dt: float) -> bool:
        creep = self.config.creep
        if not creep.enabled:
            return False
        if self.creep_left_s > _EPS:
            self.creep_left_s -= dt
            return True
        if speed < creep.standstill_speed and stop_predicted:
            self.standstill_s += dt
        else:
            self.standstill_s = 0.0
        if self.standstill_s >= creep.after_s - _EPS:
            self.standstill_s = 0.0
            self.creep_left_s = creep.duration_s - dt
            self.creep_events += 1
            return True
        return False
