"""`drivemoe prepare-data` on generated Bench2Drive clips: windows, labels, statistics, split,
broken clips skipped by name, and a rerun that continues instead of starting over."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np

from model.cli import main as drivemoe
from model.skills import Skill
from model.training.index import TRAIN, VALIDATION, read_index
from model.training.labels import read_camera_labels, traffic_control_active
from model.training.statistics import read_statistics
from tests.b2d_synth import SynthClip, frame_annotation, write_camera_labels, write_clip, ego_track

STRAIGHT = SynthClip(name="Accident_Town03_Route101_Weather23", num_frames=24, speed=5.0, start_yaw=0.3)
TURNING = SynthClip(name="ParkingExit_Town12_Route5_Weather1", num_frames=20, speed=4.0, yaw_rate=0.5, seed=1)
THIRD = SynthClip(name="HighwayCutIn_Town06_Route7_Weather2", num_frames=16, speed=8.0, seed=2)
TRUNCATED = SynthClip(name="ControlLoss_Town04_Route9_Weather3", num_frames=18, seed=3)
GAPPY = SynthClip(name="InvadingTurn_Town02_Route11_Weather4", num_frames=18, seed=4)


def _dataset(tmp_path):
    root, labels = tmp_path / "b2d", tmp_path / "camera_labels"
    for spec in (STRAIGHT, TURNING, THIRD, TRUNCATED, GAPPY):
        write_clip(root, spec)
        write_camera_labels(labels, spec.name, ["NULL"] * 8 + ["CAM_FRONT_LEFT"] * (spec.num_frames - 8))
    jpg = root / TRUNCATED.name / "camera/rgb_back_right/00011.jpg"
    jpg.write_bytes(jpg.read_bytes()[:-200])
    (root / GAPPY.name / "anno/00009.json.gz").unlink()
    return root, labels


def _run(root, labels, out, *extra):
    return drivemoe(["prepare-data", "--root", str(root), "--camera-labels", str(labels), "--out", str(out),
                     "--val-fraction", "0.34", *extra])


def test_windows_labels_split_and_broken_clips(tmp_path, capsys):
    root, labels = _dataset(tmp_path)
    out = tmp_path / "index"
    assert _run(root, labels, out) == 0
    printed = capsys.readouterr().out
    assert f"skipped {TRUNCATED.name}" in printed and "truncated JPEG" in printed and "00011" in printed
    assert f"skipped {GAPPY.name}" in printed and "missing frames [9]" in printed

    index = read_index(out)
    assert set(index.clips) == {STRAIGHT.name, TURNING.name, THIRD.name}
    # the authors' windows: N - 10 per clip, t = 0 … N-11
    assert len(index) == sum(s.num_frames - 10 for s in (STRAIGHT, TURNING, THIRD))
    a = index.arrays
    # the split is by clip, never by window
    for clip_id in range(len(index.clips)):
        assert len(set(a["split"][a["clip"] == clip_id].tolist())) == 1
    assert len(index.rows(TRAIN)) > 0 and len(index.rows(VALIDATION)) > 0
    assert json.loads((out / "index.json").read_text())["validation_rule"] == "hash"

    straight = index.clips.index(STRAIGHT.name)
    rows = np.flatnonzero(a["clip"] == straight)
    assert a["frame"][rows].tolist() == list(range(0, STRAIGHT.num_frames - 10))
    first = rows[0]
    # t = 0: a standing start, history all frame 0, waypoints from the ego box origin
    xy, yaw = ego_track(STRAIGHT)
    forward = (xy[:10] - xy[0]) @ np.array([math.cos(yaw[0]), math.sin(yaw[0])])
    np.testing.assert_allclose(a["actions"][first], np.stack([forward, np.zeros(10)], 1), atol=1e-5)
    ego = a["ego_state"][first]
    np.testing.assert_allclose(ego[:, 0], 0.0)  # speed of frame 0, five times
    np.testing.assert_allclose(ego[:, 7], 0.0, atol=1e-6)  # relative heading
    # camera labels in the authors' format: NULL -> CAM_BACK (2), CAM_FRONT_LEFT -> 0
    labels_of_frames = dict(zip(a["frame"][rows].tolist(), a["camera"][rows].tolist()))
    assert labels_of_frames[7] == 2 and labels_of_frames[8] == 0
    assert set(a["skill"][rows].tolist()) == {int(Skill.OVERTAKING)}

    turning = np.flatnonzero(a["clip"] == index.clips.index(TURNING.name))[-1]
    xy, yaw = ego_track(TURNING)
    t = int(a["frame"][turning])
    c, s = math.cos(yaw[t]), math.sin(yaw[t])
    d = xy[t + 9] - xy[t]
    np.testing.assert_allclose(a["actions"][turning][9], [c * d[0] + s * d[1], -s * d[0] + c * d[1]], atol=1e-4)
    assert a["actions"][turning][9][1] > 0.1  # a right turn ends to the right (y right)
    # compass grows clockwise with a right turn: older steps are to the left (negative)
    np.testing.assert_allclose(a["ego_state"][turning][:, 7], yaw[t - 4 : t + 1] - yaw[t], atol=1e-5)
    assert set(a["skill"][a["clip"] == index.clips.index(TURNING.name)].tolist()) == {int(Skill.PARKING_EXIT)}
    assert set(a["skill"][a["clip"] == index.clips.index(THIRD.name)].tolist()) == {int(Skill.GIVEWAY)}

    # statistics: the authors' keys, 1st/99th percentiles of the training windows only
    stats = read_statistics(out / "statistics.json")
    train = a["split"] == TRAIN
    np.testing.assert_allclose(stats["fur_x"], np.percentile(a["actions"][train][..., 0], [1, 99]), rtol=1e-6)
    np.testing.assert_allclose(stats["acceleration"], np.percentile(a["ego_state"][train][..., 1:4], [1, 99]), rtol=1e-6)
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["skipped"]) == sorted([TRUNCATED.name, GAPPY.name])


def test_statistics_file_has_the_authors_layout(tmp_path, drivemoe_reference):
    root, labels = _dataset(tmp_path)
    _run(root, labels, tmp_path / "index")
    ours = json.loads((tmp_path / "index/statistics.json").read_text())
    theirs = json.loads((drivemoe_reference / "statistics/b2d_statistics.json").read_text())
    assert set(ours) == set(theirs)
    assert all(len(v) == 2 and v[0] <= v[1] for v in ours.values())


def test_authors_camera_label_files_parse(drivemoe_reference):
    path = drivemoe_reference / "camera_labels/Accident_Town03_Route101_Weather23.json"
    raw = json.loads(path.read_text())
    classes = read_camera_labels(path)
    assert len(classes) == len(raw)
    assert all(classes[int(k)] == (2 if v == "NULL" else ["CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK",
                                                            "CAM_BACK_LEFT", "CAM_BACK_RIGHT"].index(v))
               for k, v in raw.items())


def test_rerun_continues_where_it_stopped(tmp_path, capsys):
    root, labels = _dataset(tmp_path)
    out = tmp_path / "index"
    _run(root, labels, out)
    first = read_index(out)
    # Simulate a run that stopped before THIRD was done, and make the finished clips unreadable:
    # a rerun must reuse their results and process only THIRD.
    (out / "clips" / f"{THIRD.name}.npz").unlink()
    shutil.rmtree(root / STRAIGHT.name / "camera")
    assert _run(root, labels, out) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["clips_resumed"] == 4
    second = read_index(out)
    for key in first.arrays:
        np.testing.assert_array_equal(first.arrays[key], second.arrays[key])
    # other settings on the same folder are refused rather than mixed
    assert drivemoe(["prepare-data", "--root", str(root), "--camera-labels", str(labels), "--out", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err


def test_bad_label_file_is_reported_by_name(tmp_path, capsys):
    root, labels = _dataset(tmp_path)
    (labels / f"{THIRD.name}.json").write_text(json.dumps({"4": "CAM_TOP"}))
    (labels / f"{TURNING.name}.json").unlink()
    _run(root, labels, tmp_path / "index", "--workers", "2")
    printed = capsys.readouterr().out
    assert f"skipped {THIRD.name}" in printed and "CAM_TOP" in printed
    assert f"skipped {TURNING.name}" in printed and "label file missing" in printed


def test_traffic_control_marks_traffic_sign_frames(tmp_path):
    spec = SynthClip(name="T_Junction_Town01_Route3_Weather0", num_frames=16)
    annotation = frame_annotation(spec, 5)
    assert not traffic_control_active(annotation)
    annotation["bounding_boxes"].append({"class": "traffic_light", "state": 0, "affects_ego": True})
    assert traffic_control_active(annotation)
    annotation["bounding_boxes"][-1]["state"] = 2  # green
    assert not traffic_control_active(annotation)
    annotation["bounding_boxes"].append({"class": "traffic_sign", "type_id": "traffic.stop", "affects_ego": True})
    assert traffic_control_active(annotation)


def test_nested_layout_takes_the_scenario_from_the_parent_folder(tmp_path):
    spec = SynthClip(name="Town05_weather3_route12", num_frames=15)
    write_clip(tmp_path / "b2d" / "ParkedObstacle", spec)
    write_camera_labels(tmp_path / "labels", spec.name, ["NULL"] * 15)
    assert drivemoe(["prepare-data", "--root", str(tmp_path / "b2d"), "--camera-labels", str(tmp_path / "labels"),
                     "--out", str(tmp_path / "index"), "--val-fraction", "0"]) == 0
    index = read_index(tmp_path / "index")
    assert index.clips == ("ParkedObstacle/Town05_weather3_route12",)
    assert set(index.arrays["skill"].tolist()) == {int(Skill.OVERTAKING)} and len(index) == 5


def test_scenario_label_files_override_the_clip_name(tmp_path):
    root, labels = _dataset(tmp_path)
    scenario = tmp_path / "scenario_labels"
    scenario.mkdir()
    # composite scene: the most safety-critical label wins; ids and scenario types are accepted too
    frames = {str(i): ["MERGING", "EMERGENCY_BRAKE"] if i < 8 else (4 if i < 10 else "ParkingExit") for i in range(24)}
    (scenario / f"{STRAIGHT.name}.json").write_text(json.dumps(frames))
    assert drivemoe(["prepare-data", "--root", str(root), "--camera-labels", str(labels), "--scenario-labels",
                     str(scenario), "--out", str(tmp_path / "index"), "--val-fraction", "0"]) == 0
    index = read_index(tmp_path / "index")
    a = index.arrays
    rows = a["clip"] == index.clips.index(STRAIGHT.name)
    skills = dict(zip(a["frame"][rows].tolist(), a["skill"][rows].tolist()))
    assert skills[7] == Skill.EMERGENCY_BRAKE and skills[9] == Skill.GIVEWAY and skills[12] == Skill.PARKING_EXIT
    # clips without a scenario file keep the rule from their names
    assert set(a["skill"][a["clip"] == index.clips.index(THIRD.name)].tolist()) == {int(Skill.GIVEWAY)}


def test_statistics_percentiles_and_degenerate_quantities():
    from model.training.statistics import compute_statistics

    rng = np.random.default_rng(0)
    ego = rng.normal(size=(200, 5, 10)).astype(np.float32)
    ego[..., 7] = 0.25  # no spread at all
    actions = rng.uniform(-3, 3, size=(200, 10, 2))
    stats = compute_statistics(ego, actions)
    np.testing.assert_allclose(stats["speed"], np.percentile(ego[..., 0], [1, 99]))
    np.testing.assert_allclose(stats["angular_velocity"], np.percentile(ego[..., 4:7], [1, 99]))
    np.testing.assert_allclose(stats["fur_y"], np.percentile(actions[..., 1], [1, 99]))
    assert stats["theta"] == [-0.75, 1.25]
