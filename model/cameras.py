"""Camera names, the Bench2Drive camera rig, and the order in which the model sees images.

One definition, used by the agent (sensor declaration, projection), the policy (image order,
router classes) and the data pipeline (dataset folders, camera labels).

Frames: the ego/vehicle frame is CARLA's: x forward, y right, z up, metres, origin at the
vehicle's reference point (centre of the rear axle projected to the ground is *not* assumed;
CARLA uses the bounding-box centre at ground level). Yaw is in degrees, positive to the right
(clockwise seen from above), as in CARLA.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CameraSpec:
    """One Bench2Drive camera: CARLA sensor pose in the ego frame and its image geometry."""

    name: str  # the leaderboard sensor id, e.g. "CAM_FRONT"
    dataset_folder: str  # the folder under <clip>/camera/ in the Bench2Drive dataset
    x: float
    y: float
    z: float
    yaw: float  # degrees, CARLA convention (positive = to the right)
    fov: float  # horizontal field of view, degrees
    width: int = 1600
    height: int = 900
    roll: float = 0.0
    pitch: float = 0.0

    def intrinsics(self) -> np.ndarray:
        """3x3 pinhole matrix as CARLA renders it (principal point at the image centre)."""
        focal = self.width / (2.0 * np.tan(np.deg2rad(self.fov) / 2.0))
        return np.array(
            [[focal, 0.0, self.width / 2.0], [0.0, focal, self.height / 2.0], [0.0, 0.0, 1.0]],
            dtype=np.float64,
        )

    def leaderboard_sensor(self) -> dict:
        """The dict the leaderboard's `sensors()` expects for this camera."""
        return {
            "type": "sensor.camera.rgb",
            "id": self.name,
            "x": self.x,
            "y": self.y,
            "z": self.z,
            "roll": self.roll,
            "pitch": self.pitch,
            "yaw": self.yaw,
            "width": self.width,
            "height": self.height,
            "fov": self.fov,
        }


# The six Bench2Drive cameras (1600x900, z 1.60, roll = pitch = 0), in the dataset's order.
BENCH2DRIVE_CAMERAS: tuple[CameraSpec, ...] = (
    CameraSpec("CAM_FRONT", "rgb_front", 0.80, 0.00, 1.60, 0.0, 70.0),
    CameraSpec("CAM_FRONT_LEFT", "rgb_front_left", 0.27, -0.55, 1.60, -55.0, 70.0),
    CameraSpec("CAM_FRONT_RIGHT", "rgb_front_right", 0.27, 0.55, 1.60, 55.0, 70.0),
    CameraSpec("CAM_BACK", "rgb_back", -2.0, 0.00, 1.60, 180.0, 110.0),
    CameraSpec("CAM_BACK_LEFT", "rgb_back_left", -0.32, -0.55, 1.60, -110.0, 70.0),
    CameraSpec("CAM_BACK_RIGHT", "rgb_back_right", -0.32, 0.55, 1.60, 110.0, 70.0),
)
CAMERAS_BY_NAME: dict[str, CameraSpec] = {c.name: c for c in BENCH2DRIVE_CAMERAS}

FRONT = "CAM_FRONT"
# The front frame from the previous model step (two 20 Hz ticks back); a model input, not a sensor.
FRONT_PREVIOUS = "CAM_FRONT_PREVIOUS"

# Cameras the camera router chooses among; router class k is this tuple's k-th camera and
# image index k + 2 in the model's 7-image tensor. Also the training labels (NULL -> CAM_BACK).
ROUTER_CANDIDATES: tuple[str, ...] = (
    "CAM_FRONT_LEFT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
# Image order of the model's [B, n_img, 3, H, W] tensor (DriveMoE: all 7; Drive-pi0: first 2).
MODEL_IMAGE_ORDER: tuple[str, ...] = (FRONT, FRONT_PREVIOUS) + ROUTER_CANDIDATES

# The authors' label files say "NULL" where no side camera matters; it is trained as CAM_BACK.
NULL_CAMERA_LABEL = "NULL"


def router_class_of_label(label: str) -> int:
    """Camera-router class id of a label from the authors' per-clip camera label files."""
    if label == NULL_CAMERA_LABEL:
        label = "CAM_BACK"
    try:
        return ROUTER_CANDIDATES.index(label)
    except ValueError:
        raise ValueError(
            f"unknown camera label {label!r}: expected one of {ROUTER_CANDIDATES + (NULL_CAMERA_LABEL,)}"
        ) from None
