"""`pose_origin`: the localised pose is the vehicle origin (`default`, as the training windows) or the
GNSS antenna at x = -1.4 m (`official`, as the authors' agent); the replay's GNSS reads the antenna."""
from __future__ import annotations

import math

import numpy as np
import pytest

from agent.debugger.replay import ClipTick, antenna_position
from agent.runtime.config import AgentConfigError, agent_config_from_dict, preset_switches
from agent.runtime.localization import GeoReference, Localizer, ego_offset_to_world, world_to_gps
from agent.runtime.sensor_frames import IMU_GNSS_POSE, gnss_mount_offset, leaderboard_sensors
from agent.runtime.stack import AgentStack
from model.dataset.b2d_clip import B2DClip
from model.ego_state import world_to_ego
from tests.b2d_synth import SynthClip, ego_track, frame_annotation, gnss_positions, write_clip

REF = GeoReference()


def test_the_mount_offset_is_the_declared_sensor_position():
    gnss = next(s for s in leaderboard_sensors() if s["type"] == "sensor.other.gnss")
    assert gnss_mount_offset() == (gnss["x"], gnss["y"]) == (IMU_GNSS_POSE["x"], IMU_GNSS_POSE["y"]) == (-1.4, 0.0)


@pytest.mark.parametrize(
    "compass, forward, right",
    [(0.0, (0.0, -1.0), (1.0, 0.0)),  # heading north (CARLA y points south): right is east
     (math.pi / 2, (1.0, 0.0), (0.0, 1.0)),  # heading east: right is south
     (math.pi, (0.0, 1.0), (-1.0, 0.0))],
)
def test_ego_offsets_turn_with_the_compass(compass, forward, right):
    assert ego_offset_to_world(1.0, 0.0, compass) == pytest.approx(forward, abs=1e-12)
    assert ego_offset_to_world(0.0, 1.0, compass) == pytest.approx(right, abs=1e-12)


def test_localizer_reports_the_vehicle_origin_once_the_heading_is_known():
    origin, compass = np.array([120.0, -35.0]), 2.2
    dx, dy = ego_offset_to_world(*gnss_mount_offset(), compass)
    gnss = world_to_gps(origin + [dx, dy], REF)
    shifted, plain = Localizer(REF, gnss_mount_offset()), Localizer(REF)
    first = shifted.update(gnss, None)  # compass not valid yet: the heading is unknown, the fix is kept
    assert (first.x, first.y) == pytest.approx(tuple(origin + [dx, dy]), abs=1e-6)
    pose = shifted.update(gnss, compass)
    assert (pose.x, pose.y) == pytest.approx(tuple(origin), abs=1e-6)
    held = shifted.update(gnss, float("nan"))  # a later NaN holds the last compass, so the shift stays
    assert (held.x, held.y) == pytest.approx(tuple(origin), abs=1e-6)
    plain.update(gnss, None)
    mount = plain.update(gnss, compass)
    assert math.dist((mount.x, mount.y), (pose.x, pose.y)) == pytest.approx(1.4, abs=1e-6)


def test_presets_set_the_pose_origin_and_the_trace_header_records_it():
    default = agent_config_from_dict({"checkpoint": "m"})
    official = agent_config_from_dict({"checkpoint": "m", "preset": "official"})
    assert default.pose_origin == "vehicle" and official.pose_origin == "gnss_mount"
    assert preset_switches(official)["switches"]["pose_origin"] == "gnss_mount"
    assert agent_config_from_dict({"checkpoint": "m", "pose_origin": "gnss_mount"}).pose_origin == "gnss_mount"
    with pytest.raises(AgentConfigError, match=r"agent config a.yaml: field 'pose_origin' is 'antenna', expected one of \['vehicle', 'gnss_mount'\]"):
        agent_config_from_dict({"checkpoint": "m", "pose_origin": "antenna"}, source="agent config a.yaml")


def test_replay_gnss_is_the_antenna_of_the_ego_box():
    spec = SynthClip(num_frames=12, yaw_rate=0.6, standing_frames=1)
    annotation = frame_annotation(spec, 8)
    # the synthetic clip's x, y are the antenna (Bench2Drive fills them from the GNSS at x = -1.4 m)
    assert antenna_position(annotation) == pytest.approx(tuple(gnss_positions(spec)[8]), abs=1e-9)
    no_box = {**annotation, "bounding_boxes": []}
    assert antenna_position(no_box) == (annotation["x"], annotation["y"])
    bad_theta = {**annotation, "theta": None}
    assert antenna_position(bad_theta) == (annotation["x"], annotation["y"])


class _Standing:
    """A policy whose controls are never looked at."""

    def predict(self, observation: dict) -> object:
        return type("Prediction", (), {"waypoints": np.zeros((10, 2))})


@pytest.mark.parametrize("preset", ["default", "official"])
def test_replayed_stack_sees_the_vehicle_origin_with_default(tmp_path, preset):
    """A turning synthetic clip through ClipTick + AgentStack: `default` localises the ego box location
    (what the training windows use) at every tick, `official` the antenna, both to 1e-6 m."""
    spec = SynthClip(num_frames=16, yaw_rate=0.8, standing_frames=1, image_width=16, image_height=9)
    clip = B2DClip(write_clip(tmp_path, spec))
    boxes, _ = ego_track(spec)
    antennas = gnss_positions(spec)
    config = agent_config_from_dict({"checkpoint": "m", "preset": preset, "test_time_augmentation": False, "jpeg_quality": None})
    route = np.array([boxes[0], boxes[-1]])
    stack = AgentStack(config, _Standing(), route, REF, image_size=16, observation_factory=dict)
    expected = boxes if preset == "default" else antennas
    errors = []
    for frame in clip.frame_indices:
        tick = ClipTick(clip, frame, clip.annotation(frame), REF)
        for sub in range(2):
            stack.tick(tick, frame / 10 + sub / 20)
            errors.append(math.dist((stack.pose.x, stack.pose.y), tuple(expected[frame])))
    assert max(errors) <= 1e-6
    records = stack.history.selected_records()  # the history the last inference used: frames 11..15
    assert np.allclose([[r.x, r.y] for r in records], expected[-5:], atol=1e-6)


def test_replay_ground_truth_waypoints_are_the_training_targets():
    """The replay's scoring target of a frame equals the training window's actions (ego box positions)."""
    from agent.debugger.replay_scoring import future_waypoints
    from model.training.windows import build_window, read_frame, window_starts

    spec = SynthClip(num_frames=24, yaw_rate=0.6, standing_frames=1)
    annotations = {i: frame_annotation(spec, i) for i in range(spec.num_frames)}
    frames = [read_frame(annotations[i]) for i in range(spec.num_frames)]
    for t in window_starts(spec.num_frames):
        _, actions = build_window(frames, t)
        np.testing.assert_allclose(future_waypoints(annotations, t, 10), actions, atol=1e-5)
    no_box = {i: {**a, "bounding_boxes": []} if i == 5 else a for i, a in annotations.items()}
    antenna_track = future_waypoints(no_box, 0, 10)  # one frame without a box: all from x, y
    xy = gnss_positions(spec)[:10]
    np.testing.assert_allclose(antenna_track, world_to_ego(xy, xy[0], annotations[0]["theta"]), atol=1e-9)
