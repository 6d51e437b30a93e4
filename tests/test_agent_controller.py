"""Controller: sign conventions, desired-speed modes, brake logic, caps, and creep recovery."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agent.runtime.config import ControllerConfig, CreepConfig
from agent.runtime.controller import Controller, aim_point, desired_speed_from_waypoints


def arc(speed: float, curvature: float, n: int = 10) -> np.ndarray:
    """Waypoints at 10 Hz along a circle; curvature > 0 bends right (y > 0), < 0 bends left."""
    s = np.arange(n) * speed * 0.1
    if abs(curvature) < 1e-9:
        return np.stack([s, np.zeros(n)], axis=1)
    return np.stack([np.sin(s * curvature) / curvature, (1 - np.cos(s * curvature)) / curvature], axis=1)


def test_left_turn_steers_left_and_right_turn_steers_right():
    left = Controller(ControllerConfig()).step(arc(6.0, -0.1), speed=6.0)
    right = Controller(ControllerConfig()).step(arc(6.0, 0.1), speed=6.0)
    straight = Controller(ControllerConfig()).step(arc(6.0, 0.0), speed=6.0)
    assert left.steer < -0.05 and right.steer > 0.05
    assert straight.steer == pytest.approx(0.0)


def test_desired_speed_modes():
    wp = arc(4.0, 0.0)  # 0.4 m per 0.1 s = 4 m/s
    assert desired_speed_from_waypoints(wp, "half_second") == pytest.approx(4.0)
    assert desired_speed_from_waypoints(wp, "official") == pytest.approx(0.4 * 7 * 2)  # 5.6: the 1.4x defect


def test_aim_point_is_first_waypoint_beyond_distance_else_last():
    wp = arc(8.0, 0.0)
    assert aim_point(wp, 5.5)[0] == pytest.approx(5.6)
    assert aim_point(arc(2.0, 0.0), 5.5)[0] == pytest.approx(1.8)


def test_accelerates_when_slow_and_brakes_when_too_fast_or_stop_predicted():
    slow = Controller(ControllerConfig()).step(arc(5.0, 0.0), speed=2.0)
    assert slow.throttle > 0.5 and slow.brake == 0.0
    fast = Controller(ControllerConfig()).step(arc(5.0, 0.0), speed=6.0)  # 6 / 5 > 1.1
    assert fast.brake == 1.0 and fast.throttle == 0.0
    stop = Controller(ControllerConfig()).step(np.zeros((10, 2)), speed=0.0)
    assert stop.brake == 1.0 and stop.steer == 0.0


def test_throttle_capped_above_max_speed_and_in_turns():
    config = dataclasses.replace(ControllerConfig(), brake_ratio=10.0)
    over = Controller(config).step(arc(9.0, 0.0), speed=7.5)
    assert over.throttle <= config.capped_throttle + 1e-9
    turning = Controller(config).step(arc(5.5, -0.25), speed=5.0)
    assert abs(turning.steer) > config.turn_steer_threshold and turning.throttle <= config.capped_throttle + 1e-9


def test_creep_after_long_standstill_then_bounded():
    config = dataclasses.replace(ControllerConfig(), creep=CreepConfig(after_s=2.0, duration_s=0.5))
    controller = Controller(config)
    outputs = [controller.step(np.zeros((10, 2)), speed=0.0, dt=0.1) for _ in range(50)]
    creeping = [o.creeping for o in outputs]
    first = creeping.index(True)
    assert first == 19  # 20 steps of 0.1 s = 2 s standstill
    assert creeping[first : first + 5] == [True] * 5 and creeping[first + 5] is False  # 0.5 s bounded
    assert outputs[first].throttle == pytest.approx(0.4) and outputs[first].brake == 0.0
    assert controller.creep_events == 2  # after another 2 s of standstill it tries again
    off = Controller(dataclasses.replace(config, creep=CreepConfig(enabled=False)))
    assert not any(off.step(np.zeros((10, 2)), speed=0.0, dt=0.1).creeping for _ in range(40))


def test_no_creep_when_moving_or_when_motion_is_predicted():
    config = dataclasses.replace(ControllerConfig(), creep=CreepConfig(after_s=1.0))
    moving = Controller(config)
    assert not any(moving.step(np.zeros((10, 2)), speed=3.0, dt=0.1).creeping for _ in range(30))


def test_bad_waypoints_raise_value_error():
    with pytest.raises(ValueError, match="waypoints"):
        Controller(ControllerConfig()).step(np.full((10, 2), np.nan), speed=0.0)


def test_aim_origin_first_waypoint_vs_ego():
    # a trajectory that starts 1 m to the right of the car and runs straight ahead
    wp = np.stack([np.arange(10) * 1.0, np.full(10, 1.0)], axis=1)
    np.testing.assert_allclose(aim_point(wp, 5.5, "first_waypoint"), [6.0, 0.0])  # wp6 - wp0: straight
    np.testing.assert_allclose(aim_point(wp, 5.5, "ego"), [6.0, 1.0])  # first |wp| >= 5.5 is wp6 (6.08 m)
    default = Controller(ControllerConfig()).step(wp, speed=5.0)
    authors = Controller(ControllerConfig(aim_origin="ego", min_aim_norm=0.0)).step(wp, speed=5.0)
    assert default.steer == pytest.approx(0.0) and authors.steer > 0.1  # the authors steer to the offset line
    with pytest.raises(ValueError, match="aim origin"):
        aim_point(wp, 5.5, "wp3")


@pytest.mark.parametrize("speed, fed", [(0.0, False), (0.009, False), (0.01, True), (1.0, True)])
def test_steering_error_is_zero_below_the_standstill_speed(speed, fed):
    wp = arc(3.0, 0.3)  # a right curve, aim vector well above min_aim_norm
    controller = Controller(ControllerConfig())
    command = controller.step(wp, speed=speed)
    assert (controller.last_angle != 0.0) is fed and (command.steer != 0.0) is fed
    assert controller.turn_pid.terms[0] == controller.last_angle


def test_float32_waypoints_keep_their_dtype_in_the_authors_arithmetic():
    wp = (arc(8.0, 0.05) + 0.0123).astype(np.float32)
    desired = desired_speed_from_waypoints(wp, "official")
    assert desired == float(np.linalg.norm(wp[7] - wp[0]) * 2.0)  # float32 norm, as src/utils/pid.py:43
    assert aim_point(wp, 8.5, "ego").dtype == np.float32
