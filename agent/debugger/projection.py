"""Project ego-frame points into the Bench2Drive cameras (and cast pixel rays back), CARLA conventions.

Frames: ego and camera frames are CARLA's (x forward, y right, z up, metres). A camera sees along
its own +x; the image has u to the right and v downwards, so u = cx + f*y/x and v = cy - f*z/x.
Rotations follow CARLA's `Transform.get_matrix()` (yaw, pitch, roll in degrees).
Images rendered or stored at a reduced size use the same camera model with the intrinsics scaled
by (width / spec.width, height / spec.height).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.cameras import CAMERAS_BY_NAME, CameraSpec

# Points closer to the image plane than this (metres along the optical axis) are not projected.
MIN_DEPTH_M = 0.1


def rotation_matrix(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """3x3 rotation of a CARLA `Rotation` (degrees), the upper-left block of `Transform.get_matrix()`."""
    cy, sy = np.cos(np.deg2rad(yaw)), np.sin(np.deg2rad(yaw))
    cp, sp = np.cos(np.deg2rad(pitch)), np.sin(np.deg2rad(pitch))
    cr, sr = np.cos(np.deg2rad(roll)), np.sin(np.deg2rad(roll))
    return np.array(
        [
            [cp * cy, cy * sp * sr - sy * cr, -cy * sp * cr - sy * sr],
            [cp * sy, sy * sp * sr + cy * cr, -sy * sp * cr + cy * sr],
            [sp, -cp * sr, cp * cr],
        ],
        dtype=np.float64,
    )


def transform_matrix(x: float, y: float, z: float, yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """4x4 child-to-parent matrix of a CARLA `Transform` (same as `carla.Transform.get_matrix()`)."""
    matrix = np.eye(4, dtype=np.float64)
    matrix[:3, :3] = rotation_matrix(yaw, pitch, roll)
    matrix[:3, 3] = (x, y, z)
    return matrix


def cam_to_ego(camera: CameraSpec) -> np.ndarray:
    """4x4 camera-to-ego matrix (CARLA axes on both sides), as Bench2Drive's `cam2ego` annotation."""
    return transform_matrix(camera.x, camera.y, camera.z, camera.yaw, camera.pitch, camera.roll)


def scaled_intrinsics(camera: CameraSpec, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """3x3 intrinsics of `camera` for an image of `image_size` = (width, height) (default: native)."""
    matrix = camera.intrinsics()
    if image_size is None:
        return matrix
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {image_size}")
    scale = np.diag([width / camera.width, height / camera.height, 1.0])
    return scale @ matrix


def _camera(camera: CameraSpec | str) -> CameraSpec:
    if isinstance(camera, CameraSpec):
        return camera
    try:
        return CAMERAS_BY_NAME[camera]
    except KeyError:
        raise ValueError(f"unknown camera {camera!r}: expected one of {tuple(CAMERAS_BY_NAME)}") from None


@dataclass(frozen=True)
class Projection:
    """Pixel coordinates of projected points; `visible` is in front of the camera and inside the image."""

    uv: np.ndarray  # [N, 2] float (NaN where the point is behind the camera)
    depth: np.ndarray  # [N] metres along the optical axis (camera +x)
    visible: np.ndarray  # [N] bool


def ego_to_camera(points_ego: np.ndarray, camera: CameraSpec | str) -> np.ndarray:
    """[N, 3] ego-frame points -> [N, 3] points in the camera's CARLA frame (x forward, y right, z up)."""
    spec = _camera(camera)
    points = np.asarray(points_ego, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape [N, 3], got {points.shape}")
    matrix = cam_to_ego(spec)
    return (points - matrix[:3, 3]) @ matrix[:3, :3]


def project_points(
    points_ego: np.ndarray,
    camera: CameraSpec | str,
    image_size: tuple[int, int] | None = None,
) -> Projection:
    """Project [N, 3] ego-frame points (or [N, 2] ground points, z = 0) into `camera`'s image."""
    spec = _camera(camera)
    points = np.asarray(points_ego, dtype=np.float64)
    if points.ndim == 2 and points.shape[1] == 2:
        points = np.concatenate([points, np.zeros((points.shape[0], 1))], axis=1)
    in_camera = ego_to_camera(points, spec)
    intrinsics = scaled_intrinsics(spec, image_size)
    width, height = image_size if image_size is not None else (spec.width, spec.height)
    depth = in_camera[:, 0]
    in_front = depth > MIN_DEPTH_M
    safe_depth = np.where(in_front, depth, 1.0)
    u = intrinsics[0, 2] + intrinsics[0, 0] * in_camera[:, 1] / safe_depth
    v = intrinsics[1, 2] - intrinsics[1, 1] * in_camera[:, 2] / safe_depth
    uv = np.stack([u, v], axis=1)
    uv[~in_front] = np.nan
    inside = in_front & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return Projection(uv=uv, depth=depth, visible=inside)


def pixel_rays_ego(camera: CameraSpec | str, image_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rays through every pixel centre: (origin [3], directions [H, W, 3]) in the ego frame.

    Used to render the ground by inverse perspective mapping: the ground point of pixel (v, u)
    is origin + t * direction with t = -origin_z / direction_z (when direction_z < 0).
    """
    spec = _camera(camera)
    width, height = image_size if image_size is not None else (spec.width, spec.height)
    intrinsics = scaled_intrinsics(spec, (width, height))
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    # camera frame: forward 1, right (u - cx)/f, up -(v - cy)/f
    directions_cam = np.stack(
        [np.ones_like(u), (u - intrinsics[0, 2]) / intrinsics[0, 0], -(v - intrinsics[1, 2]) / intrinsics[1, 1]],
        axis=-1,
    )
    matrix = cam_to_ego(spec)
    return matrix[:3, 3].copy(), directions_cam @ matrix[:3, :3].T
