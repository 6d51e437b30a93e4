"""The Bench2Drive clip reader/writer: layout, round trip, clear errors; and the skill mapping."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from model.cameras import BENCH2DRIVE_CAMERAS
from model.dataset.b2d_clip import B2DClip, ClipError, write_frame
from model.skills import Skill, frame_skill, most_critical, scenario_of_clip_name, skill_of_scenario
from tests.b2d_synth import SynthClip, speeds, write_clip


def test_write_frame_uses_the_bench2drive_layout(tmp_path):
    image = np.full((9, 16, 3), 100, dtype=np.uint8)
    write_frame(tmp_path / "clip", 7, {"x": 1.5}, {"CAM_FRONT": image, "CAM_BACK_LEFT": image})
    assert (tmp_path / "clip/anno/00007.json.gz").is_file()
    assert (tmp_path / "clip/camera/rgb_front/00007.jpg").is_file()
    assert (tmp_path / "clip/camera/rgb_back_left/00007.jpg").is_file()
    with gzip.open(tmp_path / "clip/anno/00007.json.gz", "rt") as f:
        assert json.load(f) == {"x": 1.5}


def test_round_trip_of_a_generated_clip(tmp_path):
    spec = SynthClip(num_frames=5)
    clip = B2DClip(write_clip(tmp_path, spec))
    assert clip.name == spec.name
    assert clip.frame_indices == (0, 1, 2, 3, 4)
    assert clip.missing_frames() == []
    anno = clip.annotation(3)
    assert anno["speed"] == pytest.approx(speeds(spec)[3]) and "x_command_far" in anno
    for camera in BENCH2DRIVE_CAMERAS:
        assert clip.image_path(camera.name, 2).parent.name == camera.dataset_folder
        image = clip.read_image(camera.name, 2)
        assert image.dtype == np.uint8 and image.shape == (spec.image_height, spec.image_width, 3)


def test_colours_survive_as_rgb(tmp_path):
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[..., 0] = 200  # pure red in RGB
    write_frame(tmp_path / "c", 0, {}, {"CAM_FRONT": image}, jpeg_quality=95)
    decoded = B2DClip(tmp_path / "c").read_image("CAM_FRONT", 0)
    assert decoded[..., 0].mean() > 180 and decoded[..., 2].mean() < 20


def test_errors_name_clip_frame_and_problem(tmp_path):
    clip_dir = write_clip(tmp_path, SynthClip(num_frames=4))
    (clip_dir / "anno/00002.json.gz").unlink()
    raw = (clip_dir / "anno/00001.json.gz").read_bytes()
    (clip_dir / "anno/00001.json.gz").write_bytes(raw[: len(raw) // 2])
    jpg = clip_dir / "camera/rgb_back/00003.jpg"
    jpg.write_bytes(jpg.read_bytes()[:100])
    clip = B2DClip(clip_dir)
    assert clip.missing_frames() == [2]
    with pytest.raises(ClipError, match=r"Accident_Town03_Route101_Weather23 frame 2 .*missing"):
        clip.annotation(2)
    with pytest.raises(ClipError, match=r"frame 1 .*truncated or corrupt"):
        clip.annotation(1)
    with pytest.raises(ClipError, match=r"frame 3 camera CAM_BACK .*truncated JPEG"):
        clip.read_image("CAM_BACK", 3)
    (clip_dir / "camera/rgb_front/00000.jpg").unlink()
    with pytest.raises(ClipError, match=r"frame 0 camera CAM_FRONT .*missing"):
        clip.read_image("CAM_FRONT", 0)
    with pytest.raises(ValueError, match="unknown camera"):
        clip.image_path("CAM_TOP", 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipError, match="no anno/"):
        B2DClip(tmp_path / "empty")


def test_skill_mapping_follows_the_authors_table():
    assert skill_of_scenario("Accident") == Skill.OVERTAKING
    assert skill_of_scenario("ConstructionObstacleTwoWays") == Skill.OVERTAKING
    assert skill_of_scenario("ParkingExit") == Skill.PARKING_EXIT
    assert skill_of_scenario("HighwayCutIn") == Skill.GIVEWAY
    assert skill_of_scenario("SignalizedJunctionLeftTurnEnterFlow") == Skill.MERGING
    assert skill_of_scenario("BlockedIntersection") == Skill.EMERGENCY_BRAKE
    assert [int(s) for s in Skill] == list(range(7)) and Skill.NORMAL == 6
    with pytest.raises(ValueError, match="NoSuchScenario"):
        skill_of_scenario("NoSuchScenario")
    assert scenario_of_clip_name("ConstructionObstacleTwoWays_Town12_Route1080_Weather14") == (
        "ConstructionObstacleTwoWays"
    )


def test_most_safety_critical_label_wins():
    assert most_critical([Skill.TRAFFIC_SIGN, Skill.EMERGENCY_BRAKE, Skill.MERGING]) == Skill.EMERGENCY_BRAKE
    assert most_critical([Skill.OVERTAKING, Skill.GIVEWAY]) == Skill.GIVEWAY
    assert most_critical([]) == Skill.NORMAL
    assert frame_skill("T_Junction", traffic_control_active=True) == Skill.TRAFFIC_SIGN
    assert frame_skill("Accident", traffic_control_active=True) == Skill.OVERTAKING
