"""The leaderboard agent end to end: evaluator calling sequence (test double), real six-camera frame,
a tiny randomly initialised checkpoint on disk, NaN compass, a dropped GNSS reading, trace and
metric_info written, lazy camera preparation, both presets, and clear setup errors."""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import carla
import cv2
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "leaderboard_double"))
from leaderboard.autoagents import autonomous_agent  # noqa: E402
from leaderboard.utils.route_manipulation import RoadOption, location_to_gps  # noqa: E402

from agent import drivemoe_agent  # noqa: E402
from agent.runtime.config import AgentConfigError  # noqa: E402
from agent.runtime.sensor_frames import GNSS_ID, IMU_GNSS_POSE, IMU_ID, SPEED_ID  # noqa: E402
from model.cameras import BENCH2DRIVE_CAMERAS, FRONT, FRONT_PREVIOUS, ROUTER_CANDIDATES  # noqa: E402
from model.skills import SKILL_NAMES  # noqa: E402

SAMPLE_FILES = {
    "CAM_FRONT": "example_f.jpg",
    "CAM_FRONT_LEFT": "example_fl.jpg",
    "CAM_FRONT_RIGHT": "example_fr.jpg",
    "CAM_BACK": "example_b.jpg",
    "CAM_BACK_LEFT": "example_bl.jpg",
    "CAM_BACK_RIGHT": "example_br.jpg",
}
PROMPT = (2, 17, 33, 108)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from model.checkpoints import save_pretrained
    from model.config import ModelConfig
    from model.drivemoe import DriveMoE

    config = ModelConfig.preset("tiny-drivemoe")
    config = dataclasses.replace(config, sequence=dataclasses.replace(config.sequence, prompt_token_ids=PROMPT))
    torch.manual_seed(0)
    model = DriveMoE(config)
    return save_pretrained(model, config, tmp_path_factory.mktemp("tiny") / "tiny_drivemoe")


@pytest.fixture(scope="module")
def frames(drivemoe_reference) -> dict[str, np.ndarray]:
    out = {}
    for camera, name in SAMPLE_FILES.items():
        bgr = cv2.imread(str(drivemoe_reference / "sample_frame" / name))
        assert bgr.shape == (900, 1600, 3)
        out[camera] = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)  # CARLA delivers BGRA
    return out


class FakeHero:
    """What get_metric_info() reads from the hero actor, moving along +x."""

    def __init__(self) -> None:
        self.x = 0.0

    def get_acceleration(self):
        return carla.Vector3D(0.5, 0.0, 0.0)

    def get_angular_velocity(self):
        return carla.Vector3D(0.0, 0.0, 1.0)

    def get_transform(self):
        return carla.Transform(carla.Location(x=self.x, y=0.0, z=0.0), carla.Rotation(yaw=0.0))


def route_plans(length: int = 300):
    world = [(carla.Transform(carla.Location(x=float(i), y=0.0)), RoadOption.LANEFOLLOW) for i in range(length)]
    gps = [(location_to_gps(42.0, 2.0, float(i), 0.0), RoadOption.LANEFOLLOW) for i in range(length)]
    return gps, world


def tick_data(frames, tick: int, x: float, compass: float, drop_gnss: bool = False) -> dict:
    gnss = location_to_gps(42.0, 2.0, x + IMU_GNSS_POSE["x"], 0.0)  # the antenna, 1.4 m behind the car facing east
    data = {name: (tick, frame) for name, frame in frames.items()}
    data[IMU_ID] = (tick, np.array([0.1, 0.0, 9.81, 0.0, 0.0, 0.0, compass]))
    data[SPEED_ID] = (tick, {"speed": 2.0})
    if not drop_gnss:
        data[GNSS_ID] = (tick, np.array([gnss["lat"], gnss["lon"], 0.0]))
    return data


def make_agent(tmp_path, checkpoint: Path, extra: str = "", save: bool = True, monkeypatch=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "agent.yaml"
    config.write_text(f"checkpoint: {checkpoint}\ndevice: cpu\n{extra}")
    autonomous_agent.HERO_ACTOR = FakeHero()
    if save:
        monkeypatch.setenv("SAVE_PATH", str(tmp_path / "save"))
    else:
        monkeypatch.delenv("SAVE_PATH", raising=False)
    module_class = getattr(drivemoe_agent, drivemoe_agent.get_entry_point())
    agent = module_class("localhost", 2000, False)
    gps, world = route_plans()
    agent.set_global_plan(gps, world)
    agent.setup(f"{config}+RouteScenario_1_rep0_Town12_A_1_11_29+RouteScenario_2_rep0_Town12_B_2_11_29")
    return agent


def run_ticks(agent, frames, n: int, nan_compass_ticks: int = 2, drop_gnss_tick: int = 3):
    controls = []
    autonomous_agent.GameTime.reset()
    for tick in range(n):
        compass = float("nan") if tick < nan_compass_ticks else math.pi / 2  # facing east along the route
        agent.sensor_interface.put(tick_data(frames, tick, 0.1 * tick, compass, drop_gnss=tick == drop_gnss_tick))
        control = agent()  # the leaderboard's __call__ path
        controls.append(control)
        autonomous_agent.GameTime.tick()
    return controls


def test_agent_under_the_evaluator_calling_sequence(tmp_path, tiny_checkpoint, frames, monkeypatch):
    agent = make_agent(tmp_path, tiny_checkpoint, monkeypatch=monkeypatch)
    seen = []
    original_predict = agent.policy.predict

    def spy(observation):
        prediction = original_predict(observation)
        seen.append((list(observation.images.accessed), prediction))
        return prediction

    agent.policy.predict = spy

    # sensors: exactly the Bench2Drive rig, and the leaderboard's validation rules
    sensors = agent.sensors()
    cameras = [s for s in sensors if s["type"] == "sensor.camera.rgb"]
    assert [c["id"] for c in cameras] == [c.name for c in BENCH2DRIVE_CAMERAS]
    for spec, camera in zip(BENCH2DRIVE_CAMERAS, cameras):
        assert (camera["x"], camera["y"], camera["z"], camera["yaw"], camera["fov"]) == (spec.x, spec.y, spec.z, spec.yaw, spec.fov)
        assert (camera["width"], camera["height"]) == (1600, 900)
    assert len({s["id"] for s in sensors}) == len(sensors) and len(cameras) <= 8
    assert sum(s["type"] == "sensor.other.gnss" for s in sensors) == 1
    assert sum(s["type"] == "sensor.other.imu" for s in sensors) == 1
    assert sum(s["type"] == "sensor.speedometer" for s in sensors) == 1
    for s in sensors:
        if "x" in s:
            assert math.sqrt(s["x"] ** 2 + s["y"] ** 2 + s["z"] ** 2) <= 3.0

    n = 14
    controls = run_ticks(agent, frames, n)
    assert all(isinstance(c, carla.VehicleControl) and c.manual_gear_shift is False for c in controls)
    assert all(c.brake == 1.0 and c.throttle == 0.0 for c in controls[:11])  # initial brake period
    assert all(-1.0 <= c.steer <= 1.0 and 0.0 <= c.throttle <= 1.0 for c in controls)
    assert agent.stack.localizer.invalid_compass == 2 and agent.stack.localizer.invalid_gnss == 1

    # lazy images: the front first, then only the camera the router selected
    assert len(seen) == n // 2
    for k, (accessed, prediction) in enumerate(seen):
        assert len(prediction.selected_cameras) == 1 and prediction.selected_cameras[0] in ROUTER_CANDIDATES
        assert accessed == [FRONT, prediction.selected_cameras[0]]
        assert np.all(np.isfinite(prediction.waypoints)) and prediction.waypoints.shape == (10, 2)
        if k > 0:  # this inference's previous front is the last inference's front (two ticks back)
            previous = seen[k - 1][1].prepared_images[FRONT].chw
            assert np.array_equal(prediction.prepared_images[FRONT_PREVIOUS].chw, previous)
    save_dir = tmp_path / "save" / "RouteScenario_2_rep0_Town12_B_2_11_29"  # the last save name
    lines_before_destroy = (save_dir / "trace.jsonl").read_text().splitlines()
    assert len(lines_before_destroy) == n // 2  # flushed as it happens

    preparer = agent.stack._preparer
    assert preparer._pool is not None  # prepare_threads 2: one helper thread per route
    agent.destroy()
    assert agent.policy is None and agent.stack is None
    assert preparer._pool is None  # released with the route, not left to the garbage collector

    header = json.loads((save_dir / "trace_header.json").read_text())
    assert header["format"] == "drivemoe-trace" and header["version"] == 2
    assert header["agent_config"]["device"] == "cpu" and len(header["cameras"]) == 6
    assert header["expert_names"] == list(SKILL_NAMES)  # 7 experts: named by skill, model/skills.py order
    records = [json.loads(line) for line in lines_before_destroy]
    for k, record in enumerate(records):
        assert record["frame"] == 2 * k and record["sim_time"] == pytest.approx(0.1 * k)
        assert record["camera_router"]["candidates"] == list(ROUTER_CANDIDATES)
        assert sum(record["camera_router"]["probs"]) == pytest.approx(1.0, abs=1e-5)
        assert record["camera_router"]["selected"] == list(seen[k][1].selected_cameras)
        steps = record["action_router"]["steps"]
        assert len(steps) == seen[k][1].action_router_logits.shape[0]
        assert all(len(s["experts"]) == len(s["weights"]) for s in steps)
        assert np.allclose(record["waypoints"], seen[k][1].waypoints, atol=1e-6)
        assert set(record["control"]) == {"steer", "throttle", "brake"} and "model" in record["latency_ms"]
    # position from GNSS: the car is at x = 0.1 * tick facing east; the route target lies ahead
    assert records[3]["position"][0] == pytest.approx(0.6, abs=1e-3)
    assert records[3]["target_point"][0] > 0 and abs(records[3]["target_point"][1]) < 1e-3
    metric = json.loads((save_dir / "metric_info.json").read_text())
    assert sorted(metric, key=int) == [str(i) for i in range(n)]
    assert metric["0"]["acceleration"] == [0.5, 0.0, 0.0] and metric["0"]["rotation"] == [0.0, 0.0, 0.0]


def test_official_preset_runs_with_augmentation_and_default_is_deterministic(tmp_path, tiny_checkpoint, frames, monkeypatch):
    official = make_agent(tmp_path / "o", tiny_checkpoint, "preset: official\n", save=False, monkeypatch=monkeypatch)
    assert official.stack._augment is not None
    controls = run_ticks(official, frames, 15)
    # the authors' schedule: brake without a model call on ticks 0-10, then the model on ticks 11 and 13
    assert len(controls) == 15 and official.stack.inferences == 2
    assert all(c.brake == 1.0 for c in controls[:11])
    images = official.stack.last_images
    assert not np.array_equal(images[FRONT].chw, images.prepared(FRONT).chw)  # augmented when served
    official.destroy()

    waypoints = []
    for run in range(2):
        agent = make_agent(tmp_path / f"d{run}", tiny_checkpoint, "controller:\n  initial_brake_ticks: 0\n", save=False, monkeypatch=monkeypatch)
        outputs = []
        original = agent.policy.predict
        agent.policy.predict = lambda obs, original=original, outputs=outputs: outputs.append(original(obs)) or outputs[-1]
        run_ticks(agent, frames, 4)
        waypoints.append(np.stack([o.waypoints for o in outputs]))
        agent.destroy()
    assert np.array_equal(waypoints[0], waypoints[1])  # seeded noise, no augmentation


def test_setup_errors_name_the_file_and_field(tmp_path, tiny_checkpoint, monkeypatch):
    with pytest.raises(AgentConfigError, match=r"agent\.yaml.*'checkpoint'.*does not exist"):
        make_agent(tmp_path, tmp_path / "no_such_model", monkeypatch=monkeypatch)
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    with pytest.raises(AgentConfigError, match=r"'checkpoint'.*model\.safetensors not found"):
        make_agent(tmp_path, broken, monkeypatch=monkeypatch)


def test_cpu_device_limits_torch_threads_like_the_drivemoe_command(tmp_path, tiny_checkpoint, monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("DRIVEMOE_THREADS", raising=False)
        monkeypatch.setattr("os.cpu_count", lambda: 6)
        torch.set_num_threads(5)
        agent = make_agent(tmp_path / "cores", tiny_checkpoint, save=False, monkeypatch=monkeypatch)
        assert agent.cpu_threads == 3 and torch.get_num_threads() == 3  # half of 6 cores (model/cli.py)
        monkeypatch.setenv("DRIVEMOE_THREADS", "2")
        agent = make_agent(tmp_path / "variable", tiny_checkpoint, save=False, monkeypatch=monkeypatch)
        assert agent.cpu_threads == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("DRIVEMOE_THREADS", "many")
        with pytest.raises(AgentConfigError, match=r"agent\.yaml \(device cpu\): environment variable DRIVEMOE_THREADS='many'"):
            make_agent(tmp_path / "bad", tiny_checkpoint, save=False, monkeypatch=monkeypatch)
        config = drivemoe_agent.AgentConfig(checkpoint=str(tiny_checkpoint), device="cuda")
        torch.set_num_threads(5)
        assert drivemoe_agent.limit_cpu_threads(config, "x.yaml") is None and torch.get_num_threads() == 5
    finally:
        torch.set_num_threads(before)
