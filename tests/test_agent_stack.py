"""AgentStack: inference timing, held controls, initial brake, previous-front chaining, bad predictions."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np

from agent.runtime.config import agent_config_from_dict
from agent.runtime.localization import GeoReference, world_to_gps
from agent.runtime.sensor_frames import GNSS_ID, IMU_GNSS_POSE, IMU_ID, SPEED_ID
from agent.runtime.stack import AgentStack
from agent.runtime.routing_trace import TraceWriter
from model.cameras import FRONT, FRONT_PREVIOUS


class FrontReader:
    """Reads both fronts like a policy; returns straight-ahead waypoints at 5 m/s (or NaN when told)."""

    def __init__(self, nan_at: int = -1) -> None:
        self.calls, self.nan_at, self.previous_seen = 0, nan_at, []

    def predict(self, observation):
        front = observation["images"][FRONT]
        self.previous_seen.append((observation["images"][FRONT_PREVIOUS].chw.copy(), front.chw.copy()))
        waypoints = np.stack([np.arange(10) * 0.5, np.zeros(10)], axis=1)
        if self.calls == self.nan_at:
            waypoints = np.full((10, 2), np.nan)
        self.calls += 1
        return SimpleNamespace(waypoints=waypoints, camera_probs=None, action_router_logits=None, timings_ms={})


def tick_data(tick: int, ref: GeoReference) -> dict:
    frame = np.full((9, 16, 4), 255, dtype=np.uint8)
    frame[..., 0] = tick * 10 % 256  # each tick's front looks different
    gnss = world_to_gps(np.array([0.25 * tick + IMU_GNSS_POSE["x"], 0.0]), ref)  # antenna behind the car, which faces east
    return {
        FRONT: (tick, frame),
        GNSS_ID: (tick, np.array([gnss[0], gnss[1], 0.0])),
        IMU_ID: (tick, np.array([0, 0, 9.8, 0, 0, 0, math.pi / 2])),
        SPEED_ID: (tick, {"speed": 1.0}),
    }


def make_stack(tmp_path=None, **config):
    ref = GeoReference()
    route = np.stack([np.arange(300.0), np.zeros(300)], axis=1)
    config = agent_config_from_dict({"checkpoint": "x", **config})
    policy = FrontReader(**({"nan_at": 3} if tmp_path is None else {}))
    trace = TraceWriter(tmp_path) if tmp_path is not None else None
    return AgentStack(config, policy, route, ref, image_size=8, trace=trace, observation_factory=dict), policy, ref


def test_inference_every_second_tick_controls_held_and_initial_brake():
    stack, policy, ref = make_stack(controller={"initial_brake_ticks": 4})
    outputs = [stack.tick(tick_data(t, ref), t * 0.05) for t in range(10)]
    assert [o.inferred for o in outputs] == [True, False] * 5
    assert all(o.control.brake == 1.0 for o in outputs[:4])
    assert outputs[4].control.throttle > 0 and outputs[4].control.brake == 0.0
    assert outputs[5].control == outputs[4].control  # held between inferences
    assert outputs[6].control.brake == 1.0 and outputs[6].control.throttle == 0.0  # NaN prediction: brake
    assert outputs[7].control == outputs[6].control


def test_previous_front_is_the_front_of_the_previous_inference(tmp_path):
    stack, policy, ref = make_stack(tmp_path)
    for t in range(6):
        stack.tick(tick_data(t, ref), t * 0.05)
    pairs = policy.previous_seen
    assert np.array_equal(pairs[0][0], pairs[0][1])  # first inference: no history yet, current front
    for k in (1, 2):
        assert np.array_equal(pairs[k][0], pairs[k - 1][1]) and not np.array_equal(pairs[k][0], pairs[k][1])
    stack.trace.close()
    lines = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 2, 4]
    assert abs(lines[2]["position"][0] - 1.0) < 1e-6 and lines[2]["target_point"][0] > 0
    assert lines[0]["camera_router"] is None and lines[0]["control"]["brake"] == 1.0


def test_inference_interval_from_config():
    stack, policy, ref = make_stack(inference_interval=3)
    inferred = [stack.tick(tick_data(t, ref), t * 0.05).inferred for t in range(7)]
    assert inferred == [True, False, False, True, False, False, True]


def test_after_initial_brake_schedule_calls_nothing_during_the_brake_and_uses_the_front_of_t_minus_2():
    stack, policy, ref = make_stack(inference_start="after_initial_brake", jpeg_quality=None,
                                    controller={"initial_brake_ticks": 11})
    steps, original_step = [], stack.controller.step
    stack.controller.step = lambda *a, **k: steps.append(stack.frame) or original_step(*a, **k)
    outputs = [stack.tick(tick_data(t, ref), t * 0.05) for t in range(16)]
    assert [t for t, o in enumerate(outputs) if o.inferred] == [11, 13, 15] and steps == [11, 13, 15]
    assert all(o.control.brake == 1.0 and not o.inferred for o in outputs[:11])
    assert outputs[12].control == outputs[11].control  # held
    # first call: the history front is tick 9's raw frame, prepared on demand; then the previous call's front
    previous, front = policy.previous_seen[0]
    assert int(previous[2, 0, 0]) == 9 * 10 % 256 and int(front[2, 0, 0]) == 11 * 10 % 256
    assert np.array_equal(policy.previous_seen[1][0], policy.previous_seen[0][1])


def test_default_schedule_runs_the_model_during_the_brake_but_not_the_controller():
    stack, policy, ref = make_stack(jpeg_quality=None)
    steps, original_step = [], stack.controller.step
    stack.controller.step = lambda *a, **k: steps.append(stack.frame) or original_step(*a, **k)
    outputs = [stack.tick(tick_data(t, ref), t * 0.05) for t in range(15)]
    assert [t for t, o in enumerate(outputs) if o.inferred] == [0, 2, 4, 6, 8, 10, 12, 14]
    assert steps == [12, 14]  # no PID wind-up while the brake is sent
    assert all(o.control.brake == 1.0 for o in outputs[:12]) and outputs[12].control.brake == 0.0
