"""Comfort/smoothness on synthetic 20 Hz trajectories whose pass/fail follows by hand from the bounds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench2drive_eval.comfort import (
    ComfortError, MotionLog, check_chunk, chunk_checks, compute_comfort, load_metric_info, route_smoothness,
)

HEADING_X = (1.0, 0.0, 0.0)
RIGHT_OF_X = (0.0, 1.0, 0.0)  # CARLA is left-handed: right of +x is +y


def motion(lon_acc, lat_acc=None, yaw_rate_deg=None) -> MotionLog:
    """Ego heading +x; accelerations in m/s^2, yaw rate in deg/s as CARLA reports it."""
    lon_acc = np.asarray(lon_acc, dtype=float)
    n = len(lon_acc)
    lat_acc = np.zeros(n) if lat_acc is None else np.asarray(lat_acc, dtype=float)
    yaw = np.zeros(n) if yaw_rate_deg is None else np.asarray(yaw_rate_deg, dtype=float)
    return MotionLog(
        acceleration=np.stack([lon_acc, lat_acc, np.zeros(n)], axis=1),
        angular_velocity=np.stack([np.zeros(n), np.zeros(n), yaw], axis=1),
        forward_vector=np.tile(HEADING_X, (n, 1)),
        right_vector=np.tile(RIGHT_OF_X, (n, 1)),
    )


def test_constant_speed_passes():
    check = check_chunk(motion(np.zeros(20)))
    assert check.passed
    assert route_smoothness(motion(np.zeros(100))) == 1.0


def test_hard_brake_fails_only_longitudinal_acceleration():
    # -6 m/s^2 throughout: outside (-4.05, 2.40); constant, so every jerk is 0 and nothing else fails.
    check = check_chunk(motion(np.full(20, -6.0)))
    assert not check.lon_acc
    assert check.lat_acc and check.jerk and check.lon_jerk and check.yaw_rate and check.yaw_acc
    # -4.0 is a firm but allowed brake.
    assert check_chunk(motion(np.full(20, -4.0))).passed


def test_sharp_curve_fails_lateral_acceleration():
    check = check_chunk(motion(np.zeros(20), lat_acc=np.full(20, -5.0)))  # |5| > 4.89
    assert not check.lat_acc and check.lon_acc and check.jerk
    assert check_chunk(motion(np.zeros(20), lat_acc=np.full(20, 4.5))).passed


def test_jerk_is_measured_with_dt_0_1_on_20hz_data():
    # lon_acc rising linearly by 0.3 m/s^2 per step from -3.5 to 2.2 (inside the bounds). Savitzky-Golay
    # (order 2) reproduces a line exactly, so the measured jerk is 0.3 / 0.1 s = 3.0 < 4.13 and the chunk
    # passes, although at the real 20 Hz the jerk is 0.3 / 0.05 s = 6 m/s^3 (upstream's dt quirk).
    k = np.arange(20)
    assert check_chunk(motion(0.3 * k - 3.5)).passed
    # A quadratic is reproduced exactly too: a(k) = 0.025 (k - 9.5)^2 - 1 stays in [-1, 1.26], but its slope at
    # the chunk ends is 2 * 0.025 * 9.5 / 0.1 = 4.75 > 4.13, so lon_jerk fails (and only lon_jerk).
    check = check_chunk(motion(0.025 * (k - 9.5) ** 2 - 1.0))
    assert not check.lon_jerk
    assert check.lon_acc and check.lat_acc and check.jerk and check.yaw_rate
    # With 0.02 instead the end slope is 3.8 < 4.13: passes.
    assert check_chunk(motion(0.02 * (k - 9.5) ** 2 - 1.0)).passed


def test_yaw_rate_in_deg_per_s_against_rad_per_s_bounds():
    # A gentle constant turn of 30 deg/s (0.52 rad/s, inside 0.95 rad/s physically) fails, because upstream
    # compares CARLA's deg/s with the rad/s bound: a quirk we keep for comparable numbers.
    check = check_chunk(motion(np.zeros(20), yaw_rate_deg=np.full(20, 30.0)))
    assert not check.yaw_rate
    # Its smoothed "yaw acceleration" is the yaw rate itself (upstream takes no derivative): 30 > 1.93 too.
    assert not check.yaw_acc
    assert check_chunk(motion(np.zeros(20), yaw_rate_deg=np.full(20, 0.5))).passed


def test_violent_slalom_fails_yaw_rate():
    t = np.arange(20) * 0.05
    check = check_chunk(motion(np.zeros(20), yaw_rate_deg=60.0 * np.sin(2 * np.pi * t)))
    assert not check.yaw_rate


def test_chunks_of_20_incomplete_last_dropped():
    smooth, brake, wild = np.zeros(20), np.full(20, -6.0), np.full(5, -9.0)
    log = motion(np.concatenate([smooth, brake, wild]))  # 45 steps: 2 full chunks, 5 dropped steps
    checks = chunk_checks(log)
    assert [c.passed for c in checks] == [True, False]
    assert route_smoothness(log) == 0.5
    # At most 20 steps: one block, so the score is 0 or 1.
    assert route_smoothness(motion(np.full(15, -6.0))) == 0.0
    assert route_smoothness(motion(np.zeros(15))) == 1.0
    with pytest.raises(ComfortError, match="too few"):
        route_smoothness(motion(np.zeros(2)))


def write_metric_info(path: Path, log: MotionLog) -> None:
    steps = {
        str(i): {
            "acceleration": log.acceleration[i].tolist(), "angular_velocity": log.angular_velocity[i].tolist(),
            "forward_vector": log.forward_vector[i].tolist(), "right_vector": log.right_vector[i].tolist(),
            "location": [float(i), 0.0, 0.0], "rotation": [0.0, 0.0, 0.0],
        }
        for i in range(len(log))
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(steps))


def test_compute_comfort_over_save_path(tmp_path):
    write_metric_info(tmp_path / "route_a" / "metric_info.json", motion(np.zeros(60)))  # 3/3 chunks pass
    write_metric_info(tmp_path / "route_b" / "metric_info.json",
                      motion(np.concatenate([np.zeros(20), np.full(20, -6.0), np.zeros(20), np.zeros(20)])))  # 3/4
    (tmp_path / "route_c").mkdir()
    (tmp_path / "route_c" / "metric_info.json").write_text('{"0": {"acceleration": [0, 0')  # truncated
    result = compute_comfort(tmp_path, ["route_a", "route_b", "route_c", "route_d"])
    assert result.per_route == {"route_a": 1.0, "route_b": 0.75}
    assert result.smoothness == pytest.approx(0.875)
    assert len(result.problems) == 2
    assert any("route_c" in p and "truncated or corrupt" in p for p in result.problems)
    assert any("route_d" in p and "missing" in p for p in result.problems)
    loaded = load_metric_info(tmp_path / "route_b" / "metric_info.json")
    assert len(loaded) == 80 and loaded.acceleration[25, 0] == -6.0
