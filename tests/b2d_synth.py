"""Generator of small Bench2Drive clips (real folder layout and annotation keys) for tests.

The ego drives at constant speed with a constant yaw rate; world frame is CARLA's (x east,
y south), `theta` is the compass-style heading (0 = north, clockwise), so yaw = theta - pi/2.
Images are small and carry a per-frame pattern so different frames look different.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.cameras import BENCH2DRIVE_CAMERAS
from model.dataset.b2d_clip import write_frame


@dataclass(frozen=True)
class SynthClip:
    """Parameters of one generated clip."""

    name: str = "Accident_Town03_Route101_Weather23"
    num_frames: int = 24
    speed: float = 5.0  # m/s
    yaw_rate: float = 0.0  # rad/s, positive = turning right
    start_xy: tuple[float, float] = (100.0, 50.0)
    start_yaw: float = 0.3  # rad, CARLA yaw
    image_width: int = 48
    image_height: int = 27
    far_distance: float = 30.0  # metres ahead of the start heading, fixed for the clip
    seed: int = 0


def ego_track(spec: SynthClip, hz: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """World positions [N, 2] and CARLA yaws [N] of the ego at each frame."""
    dt = 1.0 / hz
    xy = np.zeros((spec.num_frames, 2))
    yaw = np.zeros(spec.num_frames)
    x, y = spec.start_xy
    heading = spec.start_yaw
    for i in range(spec.num_frames):
        xy[i] = (x, y)
        yaw[i] = heading
        x += spec.speed * math.cos(heading) * dt
        y += spec.speed * math.sin(heading) * dt
        heading += spec.yaw_rate * dt
    return xy, yaw


def frame_images(spec: SynthClip, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.seed * 100003 + index)
    images = {}
    for k, camera in enumerate(BENCH2DRIVE_CAMERAS):
        base = rng.integers(0, 255, size=(spec.image_height, spec.image_width, 3), dtype=np.uint8)
        base[:, : 4 + k] = (40 * k) % 255  # a stripe identifying the camera
        images[camera.name] = base
    return images


def frame_annotation(spec: SynthClip, index: int, xy: np.ndarray, yaw: np.ndarray) -> dict:
    far = xy[0] + spec.far_distance * np.array([math.cos(spec.start_yaw), math.sin(spec.start_yaw)])
    near = xy[index] + 8.0 * np.array([math.cos(yaw[index]), math.sin(yaw[index])])
    return {
        "x": float(xy[index, 0]),
        "y": float(xy[index, 1]),
        "theta": float(yaw[index] + math.pi / 2.0),
        "speed": float(spec.speed),
        "throttle": 0.4,
        "steer": 0.0,
        "brake": 0.0,
        "reverse": False,
        "x_command_far": float(far[0]),
        "y_command_far": float(far[1]),
        "command_far": 4,
        "x_command_near": float(near[0]),
        "y_command_near": float(near[1]),
        "command_near": 4,
        "x_target": float(far[0]),
        "y_target": float(far[1]),
        "next_command": 4,
        "should_brake": 0,
        "only_ap_brake": False,
        "weather": {"cloudiness": 10.0},
        "acceleration": [0.1 * index, 0.01, 9.81],
        "angular_velocity": [0.0, 0.0, float(spec.yaw_rate)],
        "sensors": {},
        "bounding_boxes": [{"class": "ego_vehicle", "id": 1, "speed": float(spec.speed)}],
    }


def write_clip(root: Path, spec: SynthClip) -> Path:
    """Write the clip under root/<spec.name> and return its folder."""
    clip_dir = Path(root) / spec.name
    xy, yaw = ego_track(spec)
    for i in range(spec.num_frames):
        write_frame(clip_dir, i, frame_annotation(spec, i, xy, yaw), frame_images(spec, i))
    return clip_dir


def write_camera_labels(label_dir: Path, clip_name: str, labels: list[str]) -> Path:
    """A camera-label file in the authors' format: {"<frame>": "CAM_..." or "NULL"}."""
    label_dir.mkdir(parents=True, exist_ok=True)
    path = label_dir / f"{clip_name}.json"
    path.write_text(json.dumps({str(i): label for i, label in enumerate(labels)}, indent=4))
    return path
