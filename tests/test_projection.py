"""Projection of ego-frame points into the Bench2Drive cameras lands where the camera model says."""
from __future__ import annotations

import numpy as np
import pytest

from agent.debugger.projection import (
    cam_to_ego,
    pixel_rays_ego,
    project_points,
    scaled_intrinsics,
    transform_matrix,
)
from model.cameras import BENCH2DRIVE_CAMERAS, CAMERAS_BY_NAME


def test_point_at_camera_height_straight_ahead_hits_the_centre():
    front = CAMERAS_BY_NAME["CAM_FRONT"]
    result = project_points(np.array([[front.x + 20.0, 0.0, front.z]]), "CAM_FRONT")
    np.testing.assert_allclose(result.uv[0], [800.0, 450.0], atol=1e-9)
    assert result.visible[0]
    assert result.depth[0] == pytest.approx(20.0)


def test_ground_point_ahead_is_below_the_centre_line_at_the_pinhole_row():
    front = CAMERAS_BY_NAME["CAM_FRONT"]
    distance = 10.0
    result = project_points(np.array([[front.x + distance, 0.0]]), "CAM_FRONT")
    focal = 1600 / (2 * np.tan(np.deg2rad(35.0)))
    assert result.uv[0, 1] > 450.0
    assert result.uv[0, 1] == pytest.approx(450.0 + focal * front.z / distance)
    assert result.uv[0, 0] == pytest.approx(800.0)


def test_left_and_right_signs():
    right = project_points(np.array([[20.0, 3.0, 1.6]]), "CAM_FRONT").uv[0, 0]
    left = project_points(np.array([[20.0, -3.0, 1.6]]), "CAM_FRONT").uv[0, 0]
    assert right > 800.0 > left
    # CAM_BACK looks backwards: a point behind and to the ego's right appears on the image's left.
    behind_right = project_points(np.array([[-20.0, 3.0, 1.6]]), "CAM_BACK").uv[0, 0]
    assert behind_right < 800.0


def test_points_behind_a_camera_are_not_visible():
    result = project_points(np.array([[-10.0, 0.0, 0.0]]), "CAM_FRONT")
    assert not result.visible[0]
    assert np.all(np.isnan(result.uv[0]))


@pytest.mark.parametrize("camera", BENCH2DRIVE_CAMERAS, ids=lambda c: c.name)
def test_point_on_each_optical_axis_hits_its_centre(camera):
    yaw = np.deg2rad(camera.yaw)
    point = np.array([[camera.x + 15 * np.cos(yaw), camera.y + 15 * np.sin(yaw), camera.z]])
    result = project_points(point, camera)
    np.testing.assert_allclose(result.uv[0], [800.0, 450.0], atol=1e-6)


def test_side_camera_sees_a_point_at_its_yaw_and_the_front_camera_does_not():
    # 55 degrees to the right of the vehicle is the centre of CAM_FRONT_RIGHT and outside CAM_FRONT's 70 deg fov.
    point = np.array([[0.27 + 10 * np.cos(np.deg2rad(55)), 0.55 + 10 * np.sin(np.deg2rad(55)), 1.6]])
    assert project_points(point, "CAM_FRONT_RIGHT").visible[0]
    assert not project_points(point, "CAM_FRONT").visible[0]


def test_scaled_intrinsics_project_to_scaled_pixels():
    point = np.array([[12.0, 2.0, 0.3]])
    full = project_points(point, "CAM_FRONT").uv[0]
    quarter = project_points(point, "CAM_FRONT", image_size=(400, 225)).uv[0]
    np.testing.assert_allclose(quarter, full / 4.0, atol=1e-9)
    np.testing.assert_allclose(scaled_intrinsics(CAMERAS_BY_NAME["CAM_FRONT"], (400, 225))[0, 0],
                               CAMERAS_BY_NAME["CAM_FRONT"].intrinsics()[0, 0] / 4)


def test_pixel_rays_invert_the_projection():
    camera = CAMERAS_BY_NAME["CAM_FRONT_LEFT"]
    origin, rays = pixel_rays_ego(camera, (160, 90))
    # the ground point seen by pixel (v=70, u=40) projects back onto that pixel centre
    direction = rays[70, 40]
    t = -origin[2] / direction[2]
    ground = origin + t * direction
    assert ground[2] == pytest.approx(0.0, abs=1e-9)
    uv = project_points(ground[None], camera, image_size=(160, 90)).uv[0]
    np.testing.assert_allclose(uv, [40.5, 70.5], atol=1e-6)


def test_matrices_match_carla_transform():
    carla = pytest.importorskip("carla")
    for yaw, pitch, roll in [(55.0, 0.0, 0.0), (-110.0, 10.0, 5.0), (180.0, -20.0, 30.0)]:
        reference = np.array(
            carla.Transform(carla.Location(x=1.0, y=-2.0, z=3.0), carla.Rotation(pitch=pitch, yaw=yaw, roll=roll)).get_matrix()
        )
        np.testing.assert_allclose(transform_matrix(1.0, -2.0, 3.0, yaw, pitch, roll), reference, atol=1e-5)
    spec = CAMERAS_BY_NAME["CAM_BACK_RIGHT"]
    reference = np.array(
        carla.Transform(carla.Location(x=spec.x, y=spec.y, z=spec.z), carla.Rotation(yaw=spec.yaw)).get_matrix()
    )
    np.testing.assert_allclose(cam_to_ego(spec), reference, atol=1e-5)
