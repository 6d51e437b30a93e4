"""The ego-state ("proprio") history the model conditions on: values, units, frames, order.

One definition for both sides of the train/drive boundary: the agent builds it from sensors,
the data pipeline from dataset annotations, and the policy normalises it.

Per history step (oldest first), 10 values:
  0 speed              m/s, forward speed (speedometer / annotation `speed`)
  1-3 acceleration     m/s^2, IMU accelerometer x, y, z (sensor frame = ego frame)
  4-6 angular velocity rad/s, IMU gyroscope x, y, z
  7 theta              rad, heading of that step relative to the current heading:
                       wrap(compass_step - compass_current), positive = clockwise (to the right)
  8-9 command far x, y metres, the far route target point of that step, expressed in the
                       ego frame of the *current* step (x forward, y right)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EGO_STATE_FIELDS: tuple[str, ...] = (
    "speed",
    "acceleration_x",
    "acceleration_y",
    "acceleration_z",
    "angular_velocity_x",
    "angular_velocity_y",
    "angular_velocity_z",
    "theta",
    "command_far_x",
    "command_far_y",
)
EGO_STATE_DIM = len(EGO_STATE_FIELDS)


def world_to_ego(points_xy: np.ndarray, ego_xy: np.ndarray, compass: float) -> np.ndarray:
    """Express world points (CARLA x east, y south; metres) in the ego frame (x forward, y right).

    `compass` is the IMU compass in radians (0 = north, clockwise). With theta = compass - pi/2
    (which equals the CARLA yaw), the rotation is R = [[cos, sin], [-sin, cos]] applied to
    (p - p_ego), exactly as the authors' data pipeline does it.
    """
    theta = compass - np.pi / 2.0
    c, s = np.cos(theta), np.sin(theta)
    rotation = np.array([[c, s], [-s, c]])
    delta = np.asarray(points_xy, dtype=np.float64) - np.asarray(ego_xy, dtype=np.float64)
    return delta @ rotation.T


@dataclass(frozen=True)
class EgoStateHistory:
    """Raw (un-normalised) ego-state history, oldest step first; see the module docstring."""

    speed: np.ndarray  # [T]
    acceleration: np.ndarray  # [T, 3]
    angular_velocity: np.ndarray  # [T, 3]
    theta: np.ndarray  # [T]
    command_far: np.ndarray  # [T, 2]

    @property
    def num_steps(self) -> int:
        return int(np.asarray(self.speed).shape[0])

    def as_array(self) -> np.ndarray:
        """[T, 10] float32 in EGO_STATE_FIELDS order; raises ValueError naming a bad field."""
        t = self.num_steps
        expected = {
            "speed": (t,),
            "acceleration": (t, 3),
            "angular_velocity": (t, 3),
            "theta": (t,),
            "command_far": (t, 2),
        }
        arrays = {}
        for name, shape in expected.items():
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.shape != shape:
                raise ValueError(f"ego state field {name!r} has shape {value.shape}, expected {shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"ego state field {name!r} contains NaN or inf: {value.tolist()}")
            arrays[name] = value
        out = np.concatenate(
            [
                arrays["speed"][:, None],
                arrays["acceleration"],
                arrays["angular_velocity"],
                arrays["theta"][:, None],
                arrays["command_far"],
            ],
            axis=1,
        )
        return out.astype(np.float32)

    @property
    def goal_point(self) -> np.ndarray:
        """The camera router's goal point: the far command of the last (newest) step, metres."""
        return np.asarray(self.command_far, dtype=np.float64)[-1]


def wrap_angle(angle: np.ndarray | float) -> np.ndarray | float:
    """Wrap radians into [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2.0 * np.pi) - np.pi


@dataclass(frozen=True)
class EgoWorldRecord:
    """One time step of ego measurements in world terms, as sensors or dataset annotations give them.

    x, y             metres, CARLA world frame (x east, y south; dataset annotations `x`, `y`)
    compass          rad, 0 = north, clockwise positive (IMU compass; dataset `theta`)
    speed            m/s, forward speed
    acceleration     m/s^2, IMU accelerometer (ego frame: x forward, y right, z up)
    angular_velocity rad/s, IMU gyroscope (ego frame)
    command_far      metres, the far route target point in the CARLA world frame (dataset
                     `x_command_far`, `y_command_far`; live: the route planner's target)
    """

    x: float
    y: float
    compass: float
    speed: float
    acceleration: tuple[float, float, float]
    angular_velocity: tuple[float, float, float]
    command_far: tuple[float, float]


def ego_history_from_world_records(
    records: "list[EgoWorldRecord] | tuple[EgoWorldRecord, ...]",
    reference: EgoWorldRecord | None = None,
) -> EgoStateHistory:
    """Build the model's EgoStateHistory from world-frame records, oldest first.

    `reference` is the step whose pose defines the ego frame (default: the newest record). Per step:
    theta = wrap(compass_step - compass_reference) (rad; positive = that step was headed clockwise,
    i.e. to the right, of the reference heading), and the far command is expressed in the reference
    ego frame with `world_to_ego`. Speed, acceleration and angular velocity are copied as measured.
    The agent and the training data pipeline both call this, so the two sides cannot drift apart.
    """
    if len(records) == 0:
        raise ValueError("ego history needs at least one record")
    ref = records[-1] if reference is None else reference
    ref_xy = np.array([ref.x, ref.y], dtype=np.float64)
    compass = np.array([r.compass for r in records], dtype=np.float64)
    commands = np.array([r.command_far for r in records], dtype=np.float64).reshape(-1, 2)
    return EgoStateHistory(
        speed=np.array([r.speed for r in records], dtype=np.float64),
        acceleration=np.array([r.acceleration for r in records], dtype=np.float64).reshape(-1, 3),
        angular_velocity=np.array([r.angular_velocity for r in records], dtype=np.float64).reshape(-1, 3),
        theta=np.asarray(wrap_angle(compass - ref.compass), dtype=np.float64),
        command_far=world_to_ego(commands, ref_xy, ref.compass),
    )
