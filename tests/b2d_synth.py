"""Generator of small Bench2Drive clips (real folder layout and annotation keys) for tests.

What real Bench2Drive data holds, and the generator reproduces:
* a standing start: `standing_frames` frames at speed 0, then a ramp at `acceleration` m/s² up to
  the cruise `speed` (so speed and the IMU acceleration vary within the clip);
* a path of constant curvature yaw_rate / speed (a car standing still does not turn);
* `bounding_boxes[0]` is the ego box, its `location` the actor origin; the annotation's `x`/`y`
  is the GNSS antenna, mounted 1.4 m behind the origin (Bench2Drive tools/data_collect.py:636-637);
* `theta` is the IMU compass (0 = north, clockwise) wrapped into [0, 2π), so it jumps by 2π when
  the heading crosses north;
* the far command is a route point `far_spacing` metres apart along the path, the first one at
  least `far_lookahead` metres ahead, so it jumps forward as the ego passes route points;
* `overrides` put None / NaN / anything else into chosen fields of chosen frames.
World frame is CARLA's (x east, y south); yaw = compass - π/2. Images are small and carry a
per-frame pattern so different frames look different.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.cameras import BENCH2DRIVE_CAMERAS
from model.dataset.b2d_clip import write_frame

HZ = 10.0
DELETE = object()  # an override value that removes the field
GNSS_BEHIND_ORIGIN = 1.4  # metres, Bench2Drive's GNSS mount x = -1.4


@dataclass(frozen=True)
class SynthClip:
    """Parameters of one generated clip."""

    name: str = "Accident_Town03_Route101_Weather23"
    num_frames: int = 24
    speed: float = 5.0  # m/s, cruise speed
    yaw_rate: float = 0.0  # rad/s at cruise speed, positive = turning right
    start_xy: tuple[float, float] = (100.0, 50.0)
    start_yaw: float = 0.3  # rad, CARLA yaw
    image_width: int = 48
    image_height: int = 27
    standing_frames: int = 2  # frames at speed 0 before the car starts
    acceleration: float = 3.0  # m/s², the ramp from start_speed to the cruise speed
    start_speed: float = 0.0  # m/s once the car moves (cruise speed: a clip cut out of a drive)
    far_spacing: float = 6.0  # metres between route points along the path
    far_lookahead: float = 5.0  # the far command is the first route point at least this far ahead
    overrides: tuple[tuple[int, str, object], ...] = ()  # (frame, field, value); field "location" = ego box
    seed: int = 0


def speeds(spec: SynthClip) -> np.ndarray:
    """Forward speed [N] of every frame (m/s)."""
    moving = np.arange(spec.num_frames) - spec.standing_frames
    ramp = np.minimum(spec.start_speed + spec.acceleration * moving / HZ, spec.speed)
    return np.where(moving < 0, 0.0, np.maximum(ramp, 0.0))


def arc_lengths(spec: SynthClip) -> np.ndarray:
    """Distance [N] driven along the path at every frame (each frame's speed held for 0.1 s)."""
    return np.concatenate([[0.0], np.cumsum(speeds(spec)[:-1] / HZ)])


def path_pose(spec: SynthClip, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Actor origin (x, y) [..., 2] and CARLA yaw [...] at distance s along the path."""
    s = np.asarray(s, dtype=np.float64)
    x0, y0 = spec.start_xy
    yaw0 = spec.start_yaw
    curvature = spec.yaw_rate / spec.speed if spec.speed > 0 else 0.0
    yaw = yaw0 + curvature * s
    if abs(curvature) < 1e-12:
        xy = np.stack([x0 + s * math.cos(yaw0), y0 + s * math.sin(yaw0)], axis=-1)
    else:
        xy = np.stack([x0 + (np.sin(yaw) - math.sin(yaw0)) / curvature,
                       y0 - (np.cos(yaw) - math.cos(yaw0)) / curvature], axis=-1)
    return xy, yaw


def ego_track(spec: SynthClip) -> tuple[np.ndarray, np.ndarray]:
    """Actor-origin positions [N, 2] (the ego box `location`) and CARLA yaws [N] of every frame."""
    return path_pose(spec, arc_lengths(spec))


def gnss_positions(spec: SynthClip) -> np.ndarray:
    """The annotation's `x`, `y` [N, 2]: the GNSS antenna 1.4 m behind the actor origin."""
    xy, yaw = ego_track(spec)
    return xy - GNSS_BEHIND_ORIGIN * np.stack([np.cos(yaw), np.sin(yaw)], axis=-1)


def compasses(spec: SynthClip) -> np.ndarray:
    """The annotation's `theta` [N]: compass = yaw + π/2 wrapped into [0, 2π)."""
    return np.mod(ego_track(spec)[1] + math.pi / 2.0, 2.0 * math.pi)


def far_commands(spec: SynthClip) -> np.ndarray:
    """World position [N, 2] of the far command of every frame."""
    ahead = arc_lengths(spec) + spec.far_lookahead
    route_s = np.ceil(ahead / spec.far_spacing) * spec.far_spacing
    return path_pose(spec, route_s)[0]


def frame_images(spec: SynthClip, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.seed * 100003 + index)
    images = {}
    for k, camera in enumerate(BENCH2DRIVE_CAMERAS):
        base = rng.integers(0, 255, size=(spec.image_height, spec.image_width, 3), dtype=np.uint8)
        base[:, : 4 + k] = (40 * k) % 255  # a stripe identifying the camera
        images[camera.name] = base
    return images


def frame_annotation(spec: SynthClip, index: int) -> dict:
    """The annotation of one frame, overrides applied."""
    xy, yaw = ego_track(spec)
    v = speeds(spec)
    gnss, compass, far = gnss_positions(spec), compasses(spec), far_commands(spec)
    near = xy[index] + 8.0 * np.array([math.cos(yaw[index]), math.sin(yaw[index])])
    nxt = min(index + 1, spec.num_frames - 1)
    longitudinal = (v[nxt] - v[index]) * HZ
    turn_rate = (yaw[nxt] - yaw[index]) * HZ
    annotation = {
        "x": float(gnss[index, 0]),
        "y": float(gnss[index, 1]),
        "theta": float(compass[index]),
        "speed": float(v[index]),
        "throttle": 0.4,
        "steer": 0.0,
        "brake": 0.0,
        "reverse": False,
        "x_command_far": float(far[index, 0]),
        "y_command_far": float(far[index, 1]),
        "command_far": 4,
        "x_command_near": float(near[0]),
        "y_command_near": float(near[1]),
        "command_near": 4,
        "x_target": float(far[index, 0]),
        "y_target": float(far[index, 1]),
        "next_command": 4,
        "should_brake": 0,
        "only_ap_brake": False,
        "weather": {"cloudiness": 10.0},
        "acceleration": [float(longitudinal), float(v[index] * turn_rate), 9.81],
        "angular_velocity": [0.0, 0.0, float(turn_rate)],
        "sensors": {},
        "bounding_boxes": [
            {
                "class": "ego_vehicle",
                "id": "1",
                "location": [float(xy[index, 0]), float(xy[index, 1]), 0.0],
                "rotation": [0.0, 0.0, math.degrees(yaw[index])],
                "speed": float(v[index]),
            }
        ],
    }
    for frame, key, value in spec.overrides:
        if frame != index:
            continue
        if key == "location":
            annotation["bounding_boxes"][0]["location"] = value
        elif value is DELETE:
            annotation.pop(key, None)
        else:
            annotation[key] = value
    return annotation


def write_clip(root: Path, spec: SynthClip) -> Path:
    """Write the clip under root/<spec.name> and return its folder."""
    clip_dir = Path(root) / spec.name
    for i in range(spec.num_frames):
        write_frame(clip_dir, i, frame_annotation(spec, i), frame_images(spec, i))
    return clip_dir


def _write_label_file(label_dir: Path, clip_name: str, labels: list) -> Path:
    label_dir.mkdir(parents=True, exist_ok=True)
    path = label_dir / f"{clip_name}.json"
    path.write_text(json.dumps({str(i): label for i, label in enumerate(labels)}, indent=4))
    return path


def write_camera_labels(label_dir: Path, clip_name: str, labels: list[str]) -> Path:
    """A camera-label file in the authors' format: {"<frame>": "CAM_..." or "NULL"}."""
    return _write_label_file(label_dir, clip_name, labels)


def write_scenario_labels(label_dir: Path, clip_name: str, labels: list[str]) -> Path:
    """A scenario-label file in the authors' format: {"<frame>": "MERGING_HIGHWAY", "TRAFFIC_LIGHT", ...}."""
    return _write_label_file(label_dir, clip_name, labels)
