"""The built-in scenario: geometry consistent with the camera models, Bench2Drive annotations, labels."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from agent.demo.scene import LANE_WIDTH_M, DemoScene, DemoSceneConfig, write_demo_clip
from agent.debugger.projection import project_points
from model.cameras import BENCH2DRIVE_CAMERAS, router_class_of_label
from model.ego_state import world_to_ego

SMALL = DemoSceneConfig(num_frames=80)


@pytest.fixture(scope="module")
def scene() -> DemoScene:
    return DemoScene(SMALL)


def _red_fraction(image: np.ndarray) -> float:
    r, g, b = (image[..., k].astype(int) for k in range(3))
    return float(np.mean((r > 120) & (g < 80) & (b < 80)))


def test_annotation_has_bench2drive_keys_and_compass_heading(scene):
    annotation = scene.annotation(10)
    for key in ("x", "y", "theta", "speed", "acceleration", "angular_velocity", "x_command_far", "y_command_far",
                "command_far", "x_command_near", "y_command_near", "command_near", "x_target", "y_target",
                "sensors", "bounding_boxes"):
        assert key in annotation, key
    assert len(annotation["acceleration"]) == 3 and len(annotation["angular_velocity"]) == 3
    for camera in BENCH2DRIVE_CAMERAS:
        sensor = annotation["sensors"][camera.name]
        assert set(sensor) >= {"intrinsic", "cam2ego", "world2cam", "image_size_x", "image_size_y", "fov", "location", "rotation"}
        assert (sensor["image_size_x"], sensor["image_size_y"]) == (SMALL.image_width, SMALL.image_height)
    # compass-style theta: the next positions lie straight ahead in the ego frame of world_to_ego
    later = scene.annotation(15)
    ahead = world_to_ego(np.array([[later["x"], later["y"]]]), np.array([annotation["x"], annotation["y"]]), annotation["theta"])
    assert ahead[0, 0] > 2.5 and abs(ahead[0, 1]) < 0.3 * ahead[0, 0]
    # the far command is ahead, the curve turns right (positive y in the ego frame)
    far = world_to_ego(np.array([[annotation["x_command_far"], annotation["y_command_far"]]]),
                       np.array([annotation["x"], annotation["y"]]), annotation["theta"])
    assert far[0, 0] > 20.0 and far[0, 1] > 0.0
    # the speed matches the distance travelled per frame (10 Hz)
    step = math.hypot(scene.annotation(11)["x"] - annotation["x"], scene.annotation(11)["y"] - annotation["y"]) * SMALL.fps
    assert annotation["speed"] == pytest.approx(step, rel=0.05)


def test_lane_edge_line_is_rendered_where_the_camera_model_projects_it(scene):
    image = scene.render(0)["CAM_FRONT"]
    # frame 0 is on the straight; the left edge line lies (LANE_WIDTH - 0.2) - LANE_WIDTH/2 m to the ego's left
    edge_y = -(LANE_WIDTH_M - 0.2 - LANE_WIDTH_M / 2)
    uv = project_points(np.array([[10.0, edge_y]]), "CAM_FRONT", image_size=(SMALL.image_width, SMALL.image_height)).uv[0]
    u, v = int(uv[0]), int(uv[1])
    assert image[v, u].mean() > 180  # white marking
    # 1 m further left is the kerb/verge, not the marking
    uv_off = project_points(np.array([[10.0, edge_y - 1.0]]), "CAM_FRONT", image_size=(SMALL.image_width, SMALL.image_height)).uv[0]
    assert image[int(uv_off[1]), int(uv_off[0])].mean() < 170
    # above the horizon there is sky (blue dominant)
    sky = image[5, SMALL.image_width // 2].astype(int)
    assert sky[2] > sky[0] + 40


def test_camera_labels_follow_the_passed_car(scene):
    labels = scene.camera_labels()
    assert list(labels) == [str(i) for i in range(SMALL.num_frames)]
    runs = [key for key, _ in itertools.groupby(labels.values())]
    assert runs == ["NULL", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK"]
    for value in labels.values():
        router_class_of_label(value)  # every label is a valid router class
    # where the label says a side camera, that camera shows the red car and the opposite side does not
    for name, opposite in (("CAM_FRONT_RIGHT", "CAM_FRONT_LEFT"), ("CAM_BACK_RIGHT", "CAM_BACK_LEFT")):
        index = int([k for k, v in labels.items() if v == name][len([v for v in labels.values() if v == name]) // 2])
        images = scene.render(index)
        assert _red_fraction(images[name]) > 0.05, name
        assert _red_fraction(images[opposite]) == 0.0


def test_annotated_matrices_project_the_car_onto_its_pixels(scene):
    labels = scene.camera_labels()
    index = int(next(k for k, v in labels.items() if v == "CAM_FRONT_RIGHT"))
    annotation = scene.annotation(index)
    car = next(b for b in annotation["bounding_boxes"] if b["class"] == "vehicle")
    sensor = annotation["sensors"]["CAM_FRONT_RIGHT"]
    point = np.array(car["center"][:2] + [0.3, 1.0])  # low on the body, below the cabin's line of sight
    in_cam = np.array(sensor["world2cam"]) @ point  # CARLA axes: x forward, y right, z up
    k = np.array(sensor["intrinsic"])
    u = k[0, 2] + k[0, 0] * in_cam[1] / in_cam[0]
    v = k[1, 2] - k[1, 1] * in_cam[2] / in_cam[0]
    image = scene.render(index)["CAM_FRONT_RIGHT"]
    pixel = image[int(v), int(u)].astype(int)
    assert pixel[0] > 120 and pixel[1] < 80, pixel


def test_write_demo_clip_round_trips_through_the_dataset_reader(tmp_path):
    from model.dataset.b2d_clip import B2DClip

    config = DemoSceneConfig(num_frames=4)
    clip = write_demo_clip(tmp_path, config, progress=False)
    reader = B2DClip(clip.clip_dir)
    assert reader.name == "HazardAtSideLane_Town00_Route0_Weather0"
    assert reader.frame_indices == (0, 1, 2, 3)
    assert reader.read_image("CAM_BACK", 3).shape == (config.image_height, config.image_width, 3)
    assert reader.annotation(2)["x"] == pytest.approx(DemoScene(config).annotation(2)["x"])
    labels = json.loads(clip.camera_labels_path.read_text())
    assert clip.camera_labels_path.name == f"{reader.name}.json"
    assert labels == {str(i): "NULL" for i in range(4)}
