"""Training windows, labels, split and statistics against hand-derived values (issue 14).

Each expectation is computed here from the generator's closed-form motion (tests/b2d_synth.py:
speed ramp 0.3 m/s per frame, constant-curvature path, GNSS 1.4 m behind the ego box origin,
compass wrapped into [0, 2π)), never by calling the code under test.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from model.cli import main as drivemoe
from model.skills import Skill, scenario_of_clip_name, skill_from_name, skill_of_scenario
from model.training.index import TRAIN, VALIDATION, read_index
from model.training.split import authors_validation_list, resolve_split_rule, validation_clips
from model.training.statistics import STATISTICS_KEYS, compute_statistics, read_statistics
from model.training.windows import history_positions, window_starts
from tests.b2d_synth import (
    DELETE,
    SynthClip,
    compasses,
    write_camera_labels,
    write_clip,
    write_scenario_labels,
)

RAMP = dict(standing_frames=0, acceleration=3.0, speed=5.0)  # v_i = 0.3 i m/s (below the cruise speed)


def _arc(i):
    """Distance driven by frame i with v_j = 0.3 j held for 0.1 s each: 0.015 i (i - 1)."""
    return 0.015 * i * (i - 1)


def _percentile_by_hand(values, q):
    """numpy's default rule written out: rank q/100 (n - 1) in the sorted values, linear in between."""
    ordered = sorted(values)
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def _prepare(tmp_path, *extra, labels=None):
    args = ["prepare-data", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "index"), "--no-image-check"]
    if labels is not None:
        args += ["--camera-labels", str(labels)]
    assert drivemoe(args + list(extra)) == 0
    return read_index(tmp_path / "index")


def _rows(index, clip_name):
    return np.flatnonzero(index.arrays["clip"] == index.clips.index(clip_name))


def test_window_positions_are_the_authors():
    # N annotations -> N - 10 windows t = 0 … N-11; history padded by repeating frame 0
    assert list(window_starts(16)) == list(range(6))
    assert list(window_starts(10)) == []
    assert history_positions(0) == [0, 0, 0, 0, 0]
    assert history_positions(1) == [0, 0, 0, 0, 1]
    assert history_positions(7) == [3, 4, 5, 6, 7]


def test_straight_clip_windows_value_by_value(tmp_path):
    # route points every 0.25 m, the far command the first one 0.1 m ahead (short, so it moves in 16 frames)
    spec = SynthClip(name="Accident_Town03_Route101_Weather23", num_frames=16, start_yaw=0.3,
                     far_spacing=0.25, far_lookahead=0.1, **RAMP)
    write_clip(tmp_path / "root", spec)
    index = _prepare(tmp_path, "--val-split", "hash", "--val-fraction", "0")
    a = index.arrays
    rows = _rows(index, spec.name)
    assert a["frame"][rows].tolist() == [0, 1, 2, 3, 4, 5]  # 16 - 10 windows; frame 15 is never used
    for row, t in zip(rows, range(6)):
        hist = [max(t - k, 0) for k in (4, 3, 2, 1, 0)]
        ego = a["ego_state"][row]
        np.testing.assert_allclose(ego[:, 0], [0.3 * i for i in hist], atol=1e-6)  # speed, padded with frame 0
        np.testing.assert_allclose(ego[:, 1], [3.0] * 5, atol=1e-4)  # longitudinal IMU acceleration of the ramp
        np.testing.assert_allclose(ego[:, 7], 0.0, atol=1e-6)  # straight: no relative heading
        # far command: the first route point at least 0.1 m ahead of frame i, seen from frame t
        far = [math.ceil((_arc(i) + 0.1) / 0.25) * 0.25 - _arc(t) for i in hist]
        np.testing.assert_allclose(ego[:, 8], far, atol=1e-4)
        np.testing.assert_allclose(ego[:, 9], 0.0, atol=1e-4)
        # future: frames t … t+9 straight ahead, first point (0, 0)
        np.testing.assert_allclose(a["actions"][row][:, 0], [_arc(t + k) - _arc(t) for k in range(10)], atol=1e-5)
        np.testing.assert_allclose(a["actions"][row][:, 1], 0.0, atol=1e-5)
    # statistics of this run (every window is training), from the same closed forms
    stats = read_statistics(tmp_path / "index/statistics.json")
    speeds = [0.3 * max(t - k, 0) for t in range(6) for k in (4, 3, 2, 1, 0)]
    fur_x = [_arc(t + k) - _arc(t) for t in range(6) for k in range(10)]
    for key, values in (("speed", speeds), ("fur_x", fur_x)):
        assert stats[key] == pytest.approx([_percentile_by_hand(values, 1), _percentile_by_hand(values, 99)], abs=1e-5)
    assert stats["theta"] == pytest.approx([-1.0, 1.0]) and stats["fur_y"] == pytest.approx([-1.0, 1.0])  # no spread
    # the far command does jump inside a window's history (0.25 m -> 0.5 m), as in real data
    np.testing.assert_allclose(a["ego_state"][rows[-1]][:, 8] + _arc(5), [0.25, 0.25, 0.25, 0.5, 0.5], atol=1e-5)


def test_ego_position_comes_from_the_ego_box_not_the_gnss(tmp_path):
    # Circle of curvature k = yaw_rate / cruise speed = 0.2 / m, right turn; the actor origin (ego box
    # location) at arc d ahead lies at (sin(k d) / k, (1 - cos(k d)) / k) in the ego frame. The
    # annotation x/y (GNSS, 1.4 m behind) would give (sin/k - 1.4 cos + 1.4, (1 - cos)/k - 1.4 sin).
    spec = SynthClip(name="ParkingExit_Town12_Route5_Weather1", num_frames=14, yaw_rate=1.0, **RAMP)
    write_clip(tmp_path / "root", spec)
    index = _prepare(tmp_path, "--val-split", "hash", "--val-fraction", "0")
    a = index.arrays
    k = 1.0 / 5.0
    for row in _rows(index, spec.name):
        t = int(a["frame"][row])
        d = np.array([_arc(t + j) - _arc(t) for j in range(10)])
        expected = np.stack([np.sin(k * d) / k, (1 - np.cos(k * d)) / k], axis=1)
        np.testing.assert_allclose(a["actions"][row], expected, atol=1e-4)
        gnss = np.stack([np.sin(k * d) / k - 1.4 * np.cos(k * d) + 1.4, (1 - np.cos(k * d)) / k - 1.4 * np.sin(k * d)], 1)
        if t == 3:
            assert np.max(np.abs(gnss - expected)) > 0.05  # the two sources are told apart
        # relative heading of step i: k (s_i - s_t), negative for older steps of a right turn
        hist = [max(t - j, 0) for j in (4, 3, 2, 1, 0)]
        np.testing.assert_allclose(a["ego_state"][row][:, 7], [k * (_arc(i) - _arc(t)) for i in hist], atol=1e-5)


def test_heading_across_north_wrapped_by_default_and_unwrapped_in_the_authors_layout(tmp_path):
    # Heading 0.1 rad left of north, turning right at k = 0.2 / m: the compass goes from 2π - 0.1
    # through 2π = 0 once the car has driven 0.5 m (frame 7, where 0.015 * 7 * 6 = 0.63 m).
    spec = SynthClip(name="LaneChange_Town06_Route1_Weather2", num_frames=20, yaw_rate=1.0,
                     start_yaw=-math.pi / 2 - 0.1, **RAMP)
    write_clip(tmp_path / "root", spec)
    compass = compasses(spec)
    assert compass[6] > 6.0 and compass[7] < 0.1  # the data's compass stays in [0, 2π)
    default = _prepare(tmp_path, "--val-split", "hash", "--val-fraction", "0")
    authors = _prepare(tmp_path, "--layout", "authors", "--restart")
    for key in ("frame", "actions", "camera", "skill"):
        np.testing.assert_array_equal(default.arrays[key], authors.arrays[key])
    np.testing.assert_array_equal(default.arrays["ego_state"][..., [0, 1, 2, 3, 4, 5, 6, 8, 9]],
                                  authors.arrays["ego_state"][..., [0, 1, 2, 3, 4, 5, 6, 8, 9]])
    k, crossing = 0.2, 7
    differ, windows = 0, set()
    for row in range(len(default)):
        t = int(default.arrays["frame"][row])
        hist = [max(t - j, 0) for j in (4, 3, 2, 1, 0)]
        physical = [k * (_arc(i) - _arc(t)) for i in hist]
        np.testing.assert_allclose(default.arrays["ego_state"][row][:, 7], physical, atol=1e-5)
        jumps = [2 * math.pi if i < crossing <= t else 0.0 for i in hist]
        np.testing.assert_allclose(authors.arrays["ego_state"][row][:, 7], np.add(physical, jumps), atol=1e-5)
        differ += sum(j > 0 for j in jumps)
        windows |= {t} if any(jumps) else set()
    assert windows == {7, 8, 9} and differ == 4 + 3 + 2  # windows t = 7, 8, 9 see 4, 3, 2 steps before the crossing
    # the statistics follow: the authors' theta range spans the 2π jump
    assert read_statistics(tmp_path / "index/statistics.json")["theta"][1] > 6.0


def test_bad_values_skip_only_the_windows_that_use_them(tmp_path, capsys):
    nan = float("nan")
    spec = SynthClip(name="ControlLoss_Town04_Route9_Weather3", num_frames=20, **RAMP, overrides=(
        (2, "theta", nan),  # history of t = 2 … 6
        (9, "speed", None),  # history of t = 9 (windows end at t = 9)
        (17, "location", None),  # future of t = 8, 9
        (19, "speed", None), (19, "location", None),  # the last annotation: never used
        (12, "acceleration", DELETE),  # history of t = 12 … 16: no window
    ))
    write_clip(tmp_path / "root", spec)
    index = _prepare(tmp_path, "--val-split", "hash", "--val-fraction", "0")
    assert index.arrays["frame"].tolist() == [0, 1, 7]
    report = json.loads((tmp_path / "index/report.json").read_text())
    assert report["dropped_windows"]["bad_value"] == 7
    problems = report["bad_values"][spec.name]
    assert problems[0] == (f"clip {spec.name} window t=2: frame 2: annotation field 'theta' is nan, expected a finite number")
    assert f"clip {spec.name} window t=9: frame 9: annotation field 'speed' is None, expected a finite number" in problems
    assert f"clip {spec.name} window t=8: frame 17: annotation field bounding_boxes[0]['location'] is None, expected finite x, y" in problems
    assert "7 window(s) of ControlLoss_Town04_Route9_Weather3 skipped for bad values" in capsys.readouterr().out
    # nothing was read as 0: the speeds of the windows kept are the ramp's
    np.testing.assert_allclose(index.arrays["ego_state"][2][:, 0], [0.9, 1.2, 1.5, 1.8, 2.1], atol=1e-6)


def test_a_clip_whose_every_window_is_bad_is_skipped_with_the_reason(tmp_path, capsys):
    spec = SynthClip(name="HardBreakRoute_Town01_Route32_Weather6", num_frames=12,
                     overrides=tuple((i, "location", [1.0]) for i in range(12)))
    write_clip(tmp_path / "root", spec)
    write_clip(tmp_path / "root", SynthClip(name="Accident_Town05_Route1_Weather10", num_frames=11))
    _prepare(tmp_path)
    assert "skipped HardBreakRoute_Town01_Route32_Weather6: no usable window (clip HardBreakRoute_Town01_Route32_Weather6 " \
           "window t=0: frame 0: annotation field bounding_boxes[0]['location'] is [1.0]" in capsys.readouterr().out


def test_authors_scenario_label_vocabulary(tmp_path):
    assert {name: int(skill_from_name(name)) for name in (
        "MERGING", "MERGING_HIGHWAY", "MERGING_JUNCTION", "PARKING_EXIT", "OVERTAKING", "EMERGENCY_BRAKE",
        "GIVEWAY", "GIVEWAY_HIGHWAY", "TRAFFIC_LIGHT", "TRAFFIC_SIGN", "NORMAL")} == {
        "MERGING": 0, "MERGING_HIGHWAY": 0, "MERGING_JUNCTION": 0, "PARKING_EXIT": 1, "OVERTAKING": 2,
        "EMERGENCY_BRAKE": 3, "GIVEWAY": 4, "GIVEWAY_HIGHWAY": 4, "TRAFFIC_LIGHT": 5, "TRAFFIC_SIGN": 5, "NORMAL": 6}
    with pytest.raises(ValueError, match="unknown skill label 'TRAFFIC_LIGHTS'"):
        skill_from_name("TRAFFIC_LIGHTS")
    spec = SynthClip(name="HighwayExit_Town06_Route1_Weather0", num_frames=16)
    write_clip(tmp_path / "root", spec)
    write_camera_labels(tmp_path / "cam", spec.name, ["NULL"] * 16)
    names = ["TRAFFIC_LIGHT", "MERGING_HIGHWAY", "GIVEWAY_HIGHWAY", "MERGING_JUNCTION", "NORMAL", "PARKING_EXIT"] + ["NORMAL"] * 10
    write_scenario_labels(tmp_path / "scenario", spec.name, names)
    index = _prepare(tmp_path, "--scenario-labels", str(tmp_path / "scenario"), labels=tmp_path / "cam")
    assert index.arrays["skill"].tolist() == [5, 0, 4, 0, 6, 1]


def test_authors_layout_skips_clips_with_incomplete_or_missing_label_files(tmp_path, capsys):
    full = SynthClip(name="EnterActorFlow_Town03_Route1_Weather2", num_frames=12)
    short = SynthClip(name="InvadingTurn_Town02_Route2_Weather9", num_frames=12, seed=1)
    unlabelled = SynthClip(name="ParkingCutIn_Town13_Route3_Weather1", num_frames=12, seed=2)
    for spec in (full, short, unlabelled):
        write_clip(tmp_path / "root", spec)
        write_camera_labels(tmp_path / "cam", spec.name, ["CAM_FRONT_LEFT"] * (11 if spec is short else 12))
    for spec in (full, short):
        write_scenario_labels(tmp_path / "scenario", spec.name, ["GIVEWAY"] * 12)
    extra = ["--scenario-labels", str(tmp_path / "scenario")]
    index = _prepare(tmp_path, *extra, "--layout", "authors", labels=tmp_path / "cam")
    printed = capsys.readouterr().out
    assert index.clips == (full.name,)
    assert f"skipped {short.name}: label file" in printed and "labels 11 frames, the clip has 12; missing frames [11]" in printed
    assert f"skipped {unlabelled.name}: label file missing" in printed
    # default layout: the short file's missing frame 11 is no window's current frame, so both windows stay;
    # a clip without a scenario file takes the clip-name rule
    index = _prepare(tmp_path, *extra, "--restart", labels=tmp_path / "cam")
    assert set(index.clips) == {full.name, short.name, unlabelled.name}
    assert _rows(index, short.name).size == 2 and _rows(index, full.name).size == 2
    assert set(index.arrays["skill"][_rows(index, unlabelled.name)].tolist()) == {int(Skill.EMERGENCY_BRAKE)}


def test_validation_split_uses_the_authors_list_for_base(tmp_path):
    names = authors_validation_list()
    assert len(names) == 50
    assert {"StaticCutIn_Town05_Route226_Weather18", "TJunction_Town05_Route260_Weather0",
            "BlockedIntersection_Town03_Route135_Weather5"} <= names
    listed, other = "BlockedIntersection_Town03_Route135_Weather5", "BlockedIntersection_Town03_Route134_Weather3"
    for spec in (SynthClip(name=listed, num_frames=11), SynthClip(name=other, num_frames=11, seed=1)):
        write_clip(tmp_path / "root", spec)
    index = _prepare(tmp_path)
    assert index.meta["validation_rule"] == "authors-list" and index.meta["validation_clips"] == [listed]
    assert index.arrays["split"][_rows(index, listed)].tolist() == [VALIDATION]
    assert index.arrays["split"][_rows(index, other)].tolist() == [TRAIN]
    # without any listed clip: the name hash with --val-fraction
    clips = ["A_Town01_Route1_Weather1", "B_Town01_Route2_Weather1", "C_Town01_Route3_Weather1"]
    assert resolve_split_rule("auto", clips) == "hash"
    assert len(validation_clips(clips, "hash", 0.34)) == 1
    assert resolve_split_rule("auto", [f"Base/{listed}"]) == "authors-list"


def test_base_clip_names_the_mapping_must_cover():
    # Bench2Drive-Base names its T-junction clips TJunction; one folder name is cut short
    assert skill_of_scenario("TJunction") == Skill.NORMAL
    assert scenario_of_clip_name("VehicleTurningRoutePedestrian_Town15_Route523_Weathe") == "VehicleTurningRoutePedestrian"
    with pytest.raises(ValueError, match="does not follow"):
        scenario_of_clip_name("Town05_weather3_route12")


def test_statistics_by_hand_and_in_the_authors_json_layout(tmp_path, drivemoe_reference):
    ego = np.zeros((101, 5, 10), dtype=np.float32)
    ego[:, :, 0] = np.arange(101)[:, None] / 5.0  # every value 5 times: percentiles of 0 … 20 in 0.2 steps
    ego[:, :, 1:4] = -np.arange(101)[:, None, None]
    ego[:, :, 7] = np.linspace(-1, 1, 101)[:, None]
    ego[:, :, 8] = 10.0
    actions = np.zeros((101, 10, 2), dtype=np.float32)
    actions[:, :, 0] = np.arange(101)[:, None]
    actions[:, :, 1] = np.arange(101)[:, None] * 0.5 - 25
    stats = compute_statistics(ego, actions)
    # 505 (1515) sorted copies: the 1st percentile sits at rank 0.01 (n - 1), linear interpolation
    assert stats["speed"] == pytest.approx([0.2, 19.8])
    assert stats["acceleration"] == pytest.approx([-99.0, -1.0])
    assert stats["theta"] == pytest.approx([-0.98, 0.98])
    assert stats["fur_x"] == pytest.approx([1.0, 99.0])
    assert stats["fur_y"] == pytest.approx([-24.5, 24.5])
    assert stats["command_far_x"] == [9.0, 11.0]  # no spread: widened by ±1 (ours; the authors would write [10, 10])
    from model.training.statistics import write_statistics

    write_statistics(tmp_path / "s.json", stats)
    ours = (tmp_path / "s.json").read_text()
    theirs = (drivemoe_reference / "statistics/b2d_statistics.json").read_text()
    assert list(json.loads(ours)) == list(json.loads(theirs)) == list(STATISTICS_KEYS)
    assert ours == json.dumps(json.loads(ours), indent=4) and theirs == json.dumps(json.loads(theirs), indent=4)


def test_front_image_one_frame_earlier_repeats_frame_0_at_the_clip_start(tmp_path):
    from model.config import ModelConfig
    from model.normalization import NormalizationStats
    from model.training.dataset import WindowDataset
    from model.training.train import sample_spec

    spec = SynthClip(name="Accident_Town03_Route101_Weather23", num_frames=12)
    write_clip(tmp_path / "root", spec)
    index = _prepare(tmp_path, "--val-split", "hash", "--val-fraction", "0")
    assert index.arrays["frame"].tolist() == [0, 1]
    dataset = WindowDataset(index, index.rows(TRAIN), sample_spec(ModelConfig.preset("tiny-drivemoe"), 1, False),
                            NormalizationStats())
    at_0, at_1 = dataset[0]["images"], dataset[1]["images"]
    assert torch.equal(at_0[0], at_0[1])  # t = 0: "t-1" is frame 0 again (the authors' dataset.py)
    assert torch.equal(at_1[1], at_0[0]) and not torch.equal(at_1[0], at_1[1])  # t = 1: frame 0 and frame 1
