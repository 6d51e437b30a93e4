"""Trace writer (format v1) and metric_info recorder: content, flushing, atomic checkpoints."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from agent.runtime.metric_info import MetricInfoRecorder
from agent.runtime.routing_trace import TraceWriter, trace_record
from model.cameras import ROUTER_CANDIDATES
from model.image_preprocessing import PreparedImage


def prediction(moe: bool = True):
    steps, experts = 3, 7
    return SimpleNamespace(
        waypoints=np.arange(20, dtype=np.float32).reshape(10, 2),
        camera_logits=np.array([0.0, 1.0, 2.0, 3.0, 4.0]) if moe else None,
        camera_probs=np.array([0.1, 0.1, 0.2, 0.2, 0.4]) if moe else None,
        selected_cameras=("CAM_BACK_RIGHT",) if moe else (),
        action_router_logits=np.zeros((steps, experts)) if moe else None,
        action_router_weights=np.full((steps, 3), 1 / 3) if moe else None,
        action_router_experts=np.tile([4, 0, 2], (steps, 1)) if moe else None,
    )


def test_trace_line_has_every_key_of_format_v1():
    record = trace_record(12, 0.6, 3.2, (10.0, -5.0), 1.5, (20.0, 1.0), prediction(), {"steer": -0.1, "throttle": 0.3, "brake": 0.0}, {"model": 50.0})
    assert record["version"] == 2 and record["frame"] == 12
    assert record["camera_router"]["candidates"] == list(ROUTER_CANDIDATES)
    assert record["camera_router"]["selected"] == ["CAM_BACK_RIGHT"]
    assert record["action_router"]["num_experts"] == 7 and len(record["action_router"]["steps"]) == 3
    assert record["action_router"]["steps"][0]["experts"] == [4, 0, 2]
    assert record["waypoints"][1] == [2.0, 3.0] and record["control"]["steer"] == -0.1
    json.dumps(record)  # JSON-serialisable (no numpy types)
    pi0 = trace_record(0, 0.0, 0.0, (0, 0), 0.0, (1, 0), prediction(moe=False), {"steer": 0, "throttle": 0, "brake": 1}, {})
    assert pi0["camera_router"] is None and pi0["action_router"] is None


def test_writer_flushes_each_line_and_saves_images(tmp_path):
    writer = TraceWriter(tmp_path)
    writer.write_header({"name": "tiny"}, {"preset": "default"}, "RouteScenario_1")
    for frame in (0, 2):
        writer.append(trace_record(frame, frame / 20, 0.0, (0, 0), 0.0, (1, 0), prediction(), {"steer": 0, "throttle": 0, "brake": 1}, {}))
        lines = (tmp_path / "trace.jsonl").read_text().splitlines()  # readable before close
        assert json.loads(lines[-1])["frame"] == frame
    saved = writer.save_images(2, {"CAM_FRONT": PreparedImage(np.zeros((3, 8, 8), dtype=np.uint8), "CAM_FRONT")})
    assert saved == {"CAM_FRONT": "images/000002_CAM_FRONT.jpg"} and (tmp_path / saved["CAM_FRONT"]).is_file()
    writer.close()
    header = json.loads((tmp_path / "trace_header.json").read_text())
    assert header["save_name"] == "RouteScenario_1" and header["version"] == 2 and len(header["cameras"]) == 6


def test_a_second_run_into_the_same_folder_starts_a_new_trace_and_keeps_the_old(tmp_path):
    def run(frames, name):
        writer = TraceWriter(tmp_path)
        writer.write_header({"name": name}, {}, "RouteScenario_1")
        for frame in frames:
            writer.append(trace_record(frame, frame / 20, 0.0, (0, 0), 0.0, (1, 0), prediction(), {"steer": 0, "throttle": 0, "brake": 1}, {}))
        writer.close()
        return writer

    assert run([0, 2, 4], "first").previous is None
    second = run([0, 2], "second")
    assert second.previous == tmp_path / "trace.previous-1.jsonl"
    frames = [json.loads(line)["frame"] for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert frames == [0, 2]  # not appended to the first run's lines
    assert json.loads((tmp_path / "trace_header.json").read_text())["model"]["name"] == "second"
    assert [json.loads(l)["frame"] for l in second.previous.read_text().splitlines()] == [0, 2, 4]
    assert json.loads((tmp_path / "trace_header.previous-1.json").read_text())["model"]["name"] == "first"
    assert run([0], "third").previous == tmp_path / "trace.previous-2.jsonl"


def test_metric_info_is_written_at_checkpoints_and_close_in_bench2drive_format(tmp_path):
    path = tmp_path / "metric_info.json"
    recorder = MetricInfoRecorder(path, every=3)
    info = {"acceleration": [1, 0, 0], "angular_velocity": [0, 0, 0], "forward_vector": [1, 0, 0],
            "right_vector": [0, 1, 0], "location": [0, 0, 0], "rotation": [0, 0, 0]}
    recorder.record(0, info)
    recorder.record(1, info)
    assert not path.exists()  # nothing rewritten every tick
    recorder.record(2, info)
    assert list(json.loads(path.read_text())) == ["0", "1", "2"]
    recorder.record(3, dict(info, location=[3, 0, 0]))
    assert len(json.loads(path.read_text())) == 3  # the file always holds complete JSON
    recorder.close()
    data = json.loads(path.read_text())
    assert list(data) == ["0", "1", "2", "3"] and data["3"]["location"] == [3, 0, 0]
    assert not list(tmp_path.glob(".*.tmp"))


def test_header_records_the_preset_and_every_switch_value(tmp_path):
    from agent.runtime.config import PRESET_VALUES, agent_config_from_dict

    config = agent_config_from_dict({"checkpoint": "m", "preset": "default", "theta_wrap": False})
    writer = TraceWriter(tmp_path)
    writer.write_header({"name": "tiny"}, config.to_dict(), "r")
    writer.close()
    header = json.loads((tmp_path / "trace_header.json").read_text())
    assert header["preset"]["preset"] == "default"
    assert set(header["preset"]["switches"]) == set(PRESET_VALUES["default"])
    assert header["preset"]["switches"]["theta_wrap"] is False  # the value used, not the preset's


def test_non_finite_values_are_written_as_strict_json_null_and_named(tmp_path):
    from agent.debugger.debug_video import load_trace
    from agent.debugger.routing_report import RouteRouting

    writer = TraceWriter(tmp_path)
    writer.write_header({"name": "tiny"}, {"preset": "default"}, "RouteScenario_1")
    nan, inf = float("nan"), float("inf")
    writer.append(trace_record(0, nan, inf, (0, 0), -inf, (1, 0), prediction(), {"steer": nan, "throttle": 0, "brake": 1}, {"model": inf}))
    writer.append(trace_record(2, 0.1, 1.0, (0, 0), 0.0, (1, 0), prediction(), {"steer": 0, "throttle": 0, "brake": 1}, {}))
    writer.close()
    first = (tmp_path / "trace.jsonl").read_text().splitlines()[0]
    assert "NaN" not in first and "Infinity" not in first
    record = json.loads(first, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))  # strict parse
    assert record["sim_time"] is None and record["speed"] is None and record["compass"] is None
    assert record["control"]["steer"] is None and record["latency_ms"]["model"] is None
    assert record["non_finite"] == ["sim_time", "speed", "compass", "control.steer", "latency_ms.model"]
    trace = load_trace(tmp_path)  # the readers accept what the writer wrote
    assert [r["frame"] for r in trace.records] == [0, 2]
    times = RouteRouting.from_trace(trace).times
    assert np.isnan(times[0]) and times[1] == 0.1
    from agent.debugger.debug_video import VideoLayout, render_frame

    boxes = []
    render_frame(trace.records[0], {}, "RouteScenario_1", VideoLayout(), header=trace.header, boxes=boxes)
    texts = [b.text for b in boxes]
    assert "steer -" in texts and "speed -" in texts and "steer +0.00" not in texts  # unknown, not 0


def test_header_names_experts_by_skill_only_with_one_expert_per_skill(tmp_path):
    from agent.debugger.debug_video import expert_names_of
    from agent.runtime.routing_trace import model_expert_names
    from model.config import ModelConfig
    from model.skills import SKILL_NAMES

    moe = ModelConfig.preset("tiny-drivemoe")
    assert model_expert_names(moe) == list(SKILL_NAMES)
    five = SimpleNamespace(use_action_moe=True, action_moe=SimpleNamespace(num_experts=5))
    assert model_expert_names(five) == [f"expert {e}" for e in range(5)]
    assert model_expert_names(ModelConfig.preset("tiny-drivepi0")) is None
    writer = TraceWriter(tmp_path)
    writer.write_header({"name": "five"}, {"preset": "default"}, "r", expert_names=model_expert_names(five))
    header = json.loads((tmp_path / "trace_header.json").read_text())
    assert header["expert_names"] == ["expert 0", "expert 1", "expert 2", "expert 3", "expert 4"]
    assert expert_names_of(header, 5) == header["expert_names"]
    writer.write_header({"name": "pi0"}, {"preset": "default"}, "r")
    assert "expert_names" not in json.loads((tmp_path / "trace_header.json").read_text())
