"""The agent never raises on bad sensor input: what it sends (hold / brake), what it logs (once per
kind) and what it records (faults.jsonl, the trace line's "faults"), for every case of issue 11.

Most cases drive AgentStack with a policy double that reads cameras exactly as DrivePolicy does
(model.policy._read_image: front, previous front, then one router pick); the last tests run the real
leaderboard agent (test double of the leaderboard, tiny random checkpoint) through all of them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from agent.runtime.config import agent_config_from_dict
from agent.runtime.localization import GeoReference, Localizer, world_to_gps
from agent.runtime.routing_trace import TraceWriter
from agent.runtime.sensor_frames import GNSS_ID, IMU_GNSS_POSE, IMU_ID, SPEED_ID, prepare_sensor_frame
from agent.runtime.sensor_guard import FAULTS_FILE, MAX_HELD_TICKS
from agent.runtime.stack import AgentStack
from model.cameras import BENCH2DRIVE_CAMERAS, FRONT, FRONT_PREVIOUS
from model.errors import ObservationError
from model.policy import _read_image

CAMERAS = [c.name for c in BENCH2DRIVE_CAMERAS]
REF = GeoReference()
SPEED = 4.0  # m/s, the car drives east along y = 0


def good_frame(tick: int, height: int = 9, width: int = 16) -> np.ndarray:
    frame = np.full((height, width, 4), 255, dtype=np.uint8)
    frame[..., 0] = (tick * 10) % 256
    return frame


def tick_data(tick: int, x: float | None = None, speed=SPEED, compass=math.pi / 2, lat_lon=None) -> dict:
    x = SPEED * 0.05 * tick if x is None else x
    antenna = x + IMU_GNSS_POSE["x"]  # the GNSS sits 1.4 m behind the car, which faces east
    gnss = world_to_gps(np.array([antenna, 0.0]), REF) if lat_lon is None else np.array(lat_lon)
    data = {name: (tick, good_frame(tick)) for name in CAMERAS}
    data[GNSS_ID] = (tick, np.array([gnss[0], gnss[1], 0.0]))
    data[IMU_ID] = (tick, np.array([0, 0, 9.8, 0, 0, 0, compass]))
    data[SPEED_ID] = (tick, {"speed": speed})
    return data


class RouterLikePolicy:
    """Reads the images like DrivePolicy (front, previous front, then `pick`); waypoints at 5 m/s ahead."""

    def __init__(self, pick: str = "CAM_BACK") -> None:
        self.pick, self.calls, self.fronts, self.errors = pick, 0, [], []

    def predict(self, observation):
        images = observation["images"]
        try:
            front = _read_image(images, FRONT)
            _read_image(images, FRONT_PREVIOUS)
            _read_image(images, self.pick)
        except ObservationError as error:
            self.errors.append(str(error))
            raise
        self.calls += 1
        self.fronts.append(front.chw.copy())
        waypoints = np.stack([np.arange(10) * 0.5, np.zeros(10)], axis=1)
        return SimpleNamespace(waypoints=waypoints, camera_probs=None, action_router_logits=None, timings_ms={})


def make_stack(tmp_path=None, pick="CAM_BACK", **config):
    route = np.stack([np.arange(0.0, 400.0, 2.0), np.zeros(200)], axis=1)
    config = agent_config_from_dict({"checkpoint": "x", "controller": {"initial_brake_ticks": 0}, **config})
    policy = RouterLikePolicy(pick)
    trace = TraceWriter(tmp_path) if tmp_path is not None else None
    return AgentStack(config, policy, route, REF, image_size=8, trace=trace, observation_factory=dict), policy


def run(stack, datas, start=0):
    return [stack.tick(data, (start + i) * 0.05) for i, data in enumerate(datas)]


def fault_lines(folder: Path) -> list[dict]:
    path = folder / FAULTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


BAD_FRAMES = {
    "missing": None,  # the key is removed
    "none": (0, None),
    "shape": (0, np.zeros((9, 16), dtype=np.uint8)),
    "dtype": (0, np.zeros((9, 16, 4), dtype=np.float32)),
    "channels": (0, np.zeros((9, 16, 5), dtype=np.uint8)),
    "empty": (0, np.zeros((0, 0, 4), dtype=np.uint8)),
    "not_an_array": (0, [[1, 2, 3]]),
    "malformed": "not a (frame, data) pair",
}


def with_bad(data: dict, camera: str, kind: str) -> dict:
    data = dict(data)
    if kind == "missing":
        del data[camera]
    else:
        data[camera] = BAD_FRAMES[kind]
    return data


@pytest.mark.parametrize("kind", sorted(BAD_FRAMES))
def test_a_bad_front_frame_is_held_over_from_the_last_good_one(tmp_path, kind, caplog):
    stack, policy = make_stack(tmp_path)
    run(stack, [tick_data(0), tick_data(1)])
    with caplog.at_level(logging.WARNING):
        outputs = run(stack, [with_bad(tick_data(t), FRONT, kind) for t in (2, 3, 4)], start=2)
    assert outputs[0].inferred and outputs[2].inferred  # the policy still runs on the held frame
    assert outputs[0].control.brake == 0.0 and outputs[0].control.throttle > 0
    # cameras are checked when the policy reads them: tick 0's front (tick 1 has no inference) is held
    last_good = prepare_sensor_frame(good_frame(0), 8, 20, FRONT).chw
    assert np.array_equal(policy.fronts[-1], last_good) and np.array_equal(policy.fronts[-2], last_good)
    assert outputs[0].record["faults"] == [{"sensor": FRONT, "kind": kind, "detail": outputs[0].record["faults"][0]["detail"],
                                            "action": "held"}]
    warnings = [r for r in caplog.records if FRONT in r.getMessage()]
    assert len(warnings) == 1 and kind in warnings[0].getMessage()  # once per kind, not per tick
    lines = fault_lines(tmp_path)
    assert [line["frame"] for line in lines] == [2, 4] and all(line["faults"][0]["action"] == "held" for line in lines)
    assert stack.guard.counts[(FRONT, kind)] == 2


@pytest.mark.parametrize("kind", sorted(BAD_FRAMES))
def test_a_bad_front_frame_without_a_recent_good_one_brakes_without_inference(tmp_path, kind):
    stack, policy = make_stack(tmp_path)
    outputs = run(stack, [with_bad(tick_data(t), FRONT, kind) for t in range(4)])
    assert all(o.control.brake == 1.0 and o.control.throttle == 0.0 and not o.inferred for o in outputs)
    assert policy.calls == 0 and len(policy.errors) == 2  # it asked for the front, which had no usable frame
    lines = fault_lines(tmp_path)
    assert [line["frame"] for line in lines] == [0, 2]
    assert [(f["sensor"], f["kind"], f["action"]) for f in lines[0]["faults"]] == [
        (FRONT, kind, "brake"), ("policy", "ObservationError", "brake")]
    assert "'CAM_FRONT' missing" in lines[0]["faults"][1]["detail"]
    assert lines[0]["control"] == {"steer": 0.0, "throttle": 0.0, "brake": 1.0}
    # a good frame again: driving resumes at the next inference tick
    resumed = run(stack, [tick_data(4), tick_data(5)], start=4)
    assert resumed[0].inferred and resumed[0].control.brake == 0.0


def test_a_held_frame_expires_after_half_a_second_and_the_agent_brakes(tmp_path):
    stack, policy = make_stack(tmp_path)
    run(stack, [tick_data(0)])
    outputs = run(stack, [with_bad(tick_data(t), FRONT, "none") for t in range(1, 1 + MAX_HELD_TICKS + 2)], start=1)
    actions = [(line["frame"], line["faults"][0]["action"]) for line in fault_lines(tmp_path)]
    assert actions == [(t, "held") for t in range(2, MAX_HELD_TICKS + 1, 2)] + [(MAX_HELD_TICKS + 2, "brake")]
    assert outputs[-1].control.brake == 1.0 and not outputs[-1].inferred


@pytest.mark.parametrize("kind", sorted(BAD_FRAMES))
def test_a_bad_side_camera_picked_by_the_router_brakes_and_is_not_listed_as_available(tmp_path, kind):
    stack, policy = make_stack(tmp_path, pick="CAM_BACK")
    outputs = run(stack, [with_bad(tick_data(t), "CAM_BACK", kind) for t in range(2)])
    assert outputs[0].control.brake == 1.0 and not outputs[0].inferred
    assert policy.errors and "'CAM_BACK' missing" in policy.errors[0]
    available = policy.errors[0].split("available: ")[1]
    assert "CAM_BACK'" not in available and "CAM_FRONT_LEFT" in available
    kinds = [(f["sensor"], f["kind"], f["action"]) for f in fault_lines(tmp_path)[0]["faults"]]
    assert kinds == [("CAM_BACK", kind, "brake"), ("policy", "ObservationError", "brake")]
    assert outputs[1].control.brake == 1.0  # the brake is held until the next inference


def test_a_bad_side_camera_the_router_does_not_pick_changes_nothing(tmp_path):
    stack, policy = make_stack(tmp_path, pick="CAM_FRONT_LEFT")
    outputs = run(stack, [with_bad(tick_data(t), "CAM_BACK", "dtype") for t in range(2)])
    assert outputs[0].inferred and outputs[0].control.brake == 0.0 and policy.calls == 1
    assert "faults" not in outputs[0].record  # cameras are checked when read: CAM_BACK never was


@pytest.mark.parametrize("input_data", [{}, None, [("CAM_FRONT", 0)], {"GPS": "garbage", "IMU": None, "SPEED": 3}])
def test_empty_or_broken_input_data_brakes_and_never_raises(tmp_path, input_data):
    stack, policy = make_stack(tmp_path)
    outputs = run(stack, [input_data, input_data])
    assert all(o.control.brake == 1.0 and not o.inferred for o in outputs) and policy.calls == 0
    faults = {(f["sensor"], f["action"]) for f in fault_lines(tmp_path)[0]["faults"]}
    assert ("SPEED", "brake") in faults  # no speed either: the tick brakes before reading a camera
    if not isinstance(input_data, dict) or not input_data:
        assert ("input_data", "brake") in faults


@pytest.mark.parametrize("bad_speed, kind", [
    (None, "none"), (float("nan"), "not_finite"), (float("inf"), "not_finite"), ("fast", "not_a_number"),
    (True, "not_a_number"), (1e9, "out_of_range"), ("missing", "missing"), ({}, "missing"),
])
def test_an_unusable_speed_is_held_then_brakes_and_never_reads_as_zero(tmp_path, bad_speed, kind):
    def data(t):
        d = tick_data(t)
        if bad_speed == "missing":
            del d[SPEED_ID]
        elif isinstance(bad_speed, dict):
            d[SPEED_ID] = (t, bad_speed)
        else:
            d[SPEED_ID] = (t, {"speed": bad_speed})
        return d

    reference, _ = make_stack()
    good = run(reference, [tick_data(t) for t in range(4)])
    stack, policy = make_stack(tmp_path)
    run(stack, [tick_data(0), tick_data(1)])
    held = run(stack, [data(2), data(3)], start=2)
    assert held[0].control == good[2].control  # the held 4 m/s, not 0 m/s
    assert stack.history.history().speed[-1] == SPEED
    late = run(stack, [data(t) for t in range(4, 4 + MAX_HELD_TICKS)], start=4)
    assert late[-1].control.brake == 1.0 and late[-1].control.throttle == 0.0
    actions = [line["faults"][0]["action"] for line in fault_lines(tmp_path)]
    assert actions[:MAX_HELD_TICKS] == ["held"] * MAX_HELD_TICKS and actions[-1] == "brake"
    assert fault_lines(tmp_path)[0]["faults"][0]["kind"] == kind


def test_no_valid_speed_from_the_start_brakes_instead_of_full_throttle(tmp_path):
    stack, policy = make_stack(tmp_path)
    outputs = run(stack, [tick_data(t, speed=float("nan")) for t in range(4)])
    assert all(o.control.brake == 1.0 and o.control.throttle == 0.0 for o in outputs) and policy.calls == 0


def test_a_one_km_gnss_jump_is_rejected_and_the_planner_keeps_its_place(tmp_path):
    stack, policy = make_stack(tmp_path)
    run(stack, [tick_data(t) for t in range(6)])
    head_before = stack.planner.head
    target_before = stack.planner.target()
    outputs = run(stack, [tick_data(6, x=1000.0 + 1.2)], start=6)
    assert stack.planner.head == head_before and np.array_equal(stack.planner.target(), target_before)
    assert outputs[0].record["position"][0] == pytest.approx(SPEED * 0.05 * 5, abs=1e-3)  # held
    fault = outputs[0].record["faults"][0]
    assert fault["sensor"] == "GPS" and fault["kind"] == "jump" and fault["action"] == "held"
    after = run(stack, [tick_data(t) for t in range(7, 13)], start=7)
    assert after[-1].record["position"][0] == pytest.approx(SPEED * 0.05 * 12, abs=1e-3)
    assert abs(after[-1].control.steer) < 0.05  # straight on: the target is still ahead
    assert after[-1].record["target_point"][0] > 0
    assert stack.localizer.rejected_jumps == 1


def test_a_jump_that_persists_is_confirmed_and_the_planner_is_relocated(tmp_path):
    stack, policy = make_stack(tmp_path)
    run(stack, [tick_data(t) for t in range(4)])
    moved = [tick_data(t, x=200.0 + SPEED * 0.05 * t) for t in range(4, 31)]
    outputs = run(stack, moved, start=4)
    kinds = [f["kind"] for line in fault_lines(tmp_path) for f in line["faults"]]
    assert kinds.count("jump") == 19 and kinds.count("jump_confirmed") == 1
    assert stack.localizer.invalid_gnss == 19
    head_xy = stack.planner.points[stack.planner.head]
    car_x = 200.0 + SPEED * 0.05 * 30
    assert car_x - 2.0 <= head_xy[0] <= car_x + 7.5  # found its place again (the head may lead by min_distance)
    assert outputs[-1].record["target_point"][0] > 0 and abs(outputs[-1].control.steer) < 0.05


@pytest.mark.parametrize("lat_lon, kind", [
    ((90.0, 2.0), "out_of_range"), ((-91.0, 2.0), "out_of_range"), ((42.0, 200.0), "out_of_range"),
    ((89.0, 2.0), "out_of_range"), ((float("nan"), 2.0), "not_finite"), ((1.0, float("inf")), "not_finite"),
])
def test_impossible_latitude_or_longitude_is_rejected(tmp_path, lat_lon, kind):
    stack, policy = make_stack(tmp_path)
    run(stack, [tick_data(0), tick_data(1)])
    outputs = run(stack, [tick_data(2, lat_lon=lat_lon)], start=2)
    assert outputs[0].record["position"][0] == pytest.approx(SPEED * 0.05, abs=1e-3)
    assert max(abs(v) for v in outputs[0].record["position"]) < 1e3
    faults = [(f["sensor"], f["kind"]) for f in outputs[0].record["faults"]]
    assert ("GPS", kind) in faults


@pytest.mark.parametrize("compass", [1e300, -1e300, 7.0, float("inf"), float("nan")])
def test_an_absurd_compass_is_held(tmp_path, compass):
    stack, policy = make_stack(tmp_path)
    run(stack, [tick_data(0), tick_data(1)])
    outputs = run(stack, [tick_data(2, compass=compass)], start=2)
    assert outputs[0].record["compass"] == pytest.approx(math.pi / 2)
    assert outputs[0].record["faults"][0]["sensor"] == "IMU"
    assert abs(outputs[0].control.steer) < 0.05


def test_the_localizer_bound_follows_speed_and_elapsed_time():
    localizer = Localizer(REF)
    at = lambda x: world_to_gps(np.array([x, 0.0]), REF)  # noqa: E731
    assert localizer.update(at(0.0), 0.0, speed=10.0, timestamp=0.0).gnss_valid
    # 10 m/s for 1 s plus margins allows 20 m; 40 m is a jump
    assert not localizer.update(at(40.0), 0.0, speed=10.0, timestamp=1.0).gnss_valid
    assert localizer.update(at(12.0), 0.0, speed=10.0, timestamp=1.0).gnss_valid
    # a gap: the bound grows with the time since the last accepted reading
    assert localizer.update(None, 0.0, speed=10.0, timestamp=2.0).faults[0].kind == "missing"
    pose = localizer.update(at(40.0), 0.0, speed=10.0, timestamp=3.0)
    assert pose.gnss_valid and pose.relocalised and pose.moved == pytest.approx(28.0, abs=1e-6)


def test_a_gnss_gap_while_driving_relocates_the_planner(tmp_path):
    stack, policy = make_stack(tmp_path)
    run(stack, [tick_data(t) for t in range(4)])
    head_before = stack.planner.head
    gap = []
    for t in range(4, 200):
        d = tick_data(t)
        del d[GNSS_ID]
        gap.append(d)
    run(stack, gap, start=4)
    assert stack.planner.head == head_before  # the held position did not move
    outputs = run(stack, [tick_data(t) for t in range(200, 202)], start=200)
    assert 38.0 <= stack.planner.points[stack.planner.head][0] <= 40.0 + 7.5  # the car is at x = 40 m now
    assert outputs[0].record["target_point"][0] > 0


def test_run_step_never_raises_even_when_the_stack_does(caplog):
    sys.path.insert(0, str(Path(__file__).resolve().parent / "leaderboard_double"))
    from agent import drivemoe_agent

    agent = drivemoe_agent.DriveMoEAgent.__new__(drivemoe_agent.DriveMoEAgent)
    agent.metric_info = None

    def broken_tick(input_data, timestamp):
        raise RuntimeError("CUDA error: an illegal memory access")

    agent.stack = SimpleNamespace(tick=broken_tick, frame=0)
    with caplog.at_level(logging.ERROR):
        controls = [agent.run_step({}, 0.05 * t) for t in range(3)]
    assert all((c.steer, c.throttle, c.brake) == (0.0, 0.0, 1.0) for c in controls)
    assert len([r for r in caplog.records if "RuntimeError" in r.getMessage()]) == 1 and caplog.records[0].exc_info
    nan_control = SimpleNamespace(control=SimpleNamespace(steer=float("nan"), throttle=0.5, brake=0.0))
    agent.stack = SimpleNamespace(tick=lambda data, t: nan_control, frame=0)
    control = agent.run_step({}, 0.0)
    assert (control.steer, control.throttle, control.brake) == (0.0, 0.0, 1.0)


# ---- the real agent, end to end ------------------------------------------------------------------------

PROMPT = (2, 17, 33, 108)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    from model.checkpoints import save_pretrained
    from model.config import ModelConfig
    from model.drivemoe import DriveMoE

    config = ModelConfig.preset("tiny-drivemoe")
    config = dataclasses.replace(config, sequence=dataclasses.replace(config.sequence, prompt_token_ids=PROMPT))
    torch.manual_seed(0)
    return save_pretrained(DriveMoE(config), config, tmp_path_factory.mktemp("tiny") / "tiny_drivemoe")


def test_the_leaderboard_agent_survives_every_bad_input_in_one_route(tmp_path, tiny_checkpoint, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parent / "leaderboard_double"))
    import carla
    from leaderboard.autoagents import autonomous_agent
    from leaderboard.utils.route_manipulation import RoadOption, location_to_gps

    from agent import drivemoe_agent

    config = tmp_path / "agent.yaml"
    config.write_text(f"checkpoint: {tiny_checkpoint}\ndevice: cpu\ncontroller:\n  initial_brake_ticks: 0\n")
    monkeypatch.setenv("SAVE_PATH", str(tmp_path / "save"))
    autonomous_agent.HERO_ACTOR = None
    agent = drivemoe_agent.DriveMoEAgent("localhost", 2000, False)
    world = [(carla.Transform(carla.Location(x=float(i), y=0.0)), RoadOption.LANEFOLLOW) for i in range(300)]
    gps = [(location_to_gps(42.0, 2.0, float(i), 0.0), RoadOption.LANEFOLLOW) for i in range(300)]
    agent.set_global_plan(gps, world)
    agent.setup(f"{config}+route_0")

    def data(t, **kwargs):
        d = tick_data(t, **kwargs)
        for name in CAMERAS:
            d[name] = (t, good_frame(t, 18, 32))
        return d

    bad_inputs = [with_bad(data(t), camera, kind) for t, (camera, kind) in enumerate(
        (camera, kind) for kind in sorted(BAD_FRAMES) for camera in (FRONT, "CAM_BACK_LEFT"))]
    bad_inputs += [{}, None, data(0, speed=None), data(0, speed=float("nan")), data(0, x=1000.0),
                   data(0, lat_lon=(90.0, 2.0)), data(0, compass=1e300)]
    autonomous_agent.GameTime.reset()
    controls = []
    for t, d in enumerate([data(0), data(1)] + bad_inputs + [data(40), data(41)]):
        controls.append(agent.run_step(d, 0.05 * t))  # raises nothing
    assert all(isinstance(c, carla.VehicleControl) for c in controls)
    assert all(math.isfinite(v) for c in controls for v in (c.steer, c.throttle, c.brake))
    assert getattr(agent, "step_failures", {}) == {}  # every case handled by the guard, not the safety net
    folder = tmp_path / "save" / "route_0"
    agent.destroy()
    lines = fault_lines(folder)
    seen = {(f["sensor"], f["kind"]) for line in lines for f in line["faults"]}
    for kind in BAD_FRAMES:
        assert (FRONT, kind) in seen
    assert {("SPEED", "none"), ("SPEED", "not_finite"), ("GPS", "jump"), ("GPS", "out_of_range"), ("IMU", "out_of_range"),
            ("input_data", "empty"), ("input_data", "not_a_mapping")} <= seen
    trace = [json.loads(line) for line in (folder / "trace.jsonl").read_text().splitlines()]
    assert any("faults" in record for record in trace)


@pytest.mark.parametrize("speed", [0.0, 12.0])
def test_the_leaderboards_gnss_noise_never_trips_the_jump_check(speed):
    """Bench2Drive's agent_wrapper sets noise_lat/lon_stddev = 5e-6 degrees on the GNSS sensor."""
    rng = np.random.default_rng(0)
    localizer = Localizer(REF)
    rejected = 0
    for tick in range(20000):
        lat, lon = world_to_gps(np.array([speed * 0.05 * tick, 0.0]), REF) + rng.normal(0.0, 5e-6, 2)
        pose = localizer.update(np.array([lat, lon]), 0.0, speed=speed, timestamp=0.05 * tick)
        rejected += not pose.gnss_valid
    assert rejected == 0


def test_a_full_disk_never_changes_the_control(tmp_path, caplog):
    stack, policy = make_stack(tmp_path)
    reference, _ = make_stack()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    stack.trace.append = full
    stack.fault_log.path = tmp_path / "missing_folder" / FAULTS_FILE  # cannot be created
    datas = [tick_data(0), tick_data(1), tick_data(2, speed=None), tick_data(3)]
    with caplog.at_level(logging.WARNING):
        outputs = run(stack, datas)
    assert [o.control for o in outputs] == [o.control for o in run(reference, datas)]
    assert stack.guard.counts[("trace", "OSError")] == 2 and stack.fault_log.failed
    assert sum("No space left" in r.getMessage() for r in caplog.records) == 1


def test_fault_lines_are_strict_json_with_non_finite_numbers_named(tmp_path):
    from agent.runtime.sensor_guard import Fault, FaultLog

    log = FaultLog(tmp_path)
    fault = Fault("SPEED", "not_finite", "speed nan", "brake")
    log.append(3, float("nan"), [fault], {"steer": float("inf"), "throttle": 0.0, "brake": 1.0})
    log.append(4, 0.2, [fault], {"steer": 0.0, "throttle": 0.0, "brake": 1.0})
    log.close()

    def strict(text):
        raise ValueError(f"not strict JSON: {text}")

    lines = [json.loads(line, parse_constant=strict) for line in (tmp_path / FAULTS_FILE).read_text().splitlines()]
    assert lines[0]["sim_time"] is None and lines[0]["control"] == {"steer": None, "throttle": 0.0, "brake": 1.0}
    assert lines[0]["non_finite"] == ["sim_time", "control.steer"]
    assert lines[1] == {"frame": 4, "sim_time": 0.2, "faults": [fault.as_dict()], "control": {"steer": 0.0, "throttle": 0.0, "brake": 1.0}}
