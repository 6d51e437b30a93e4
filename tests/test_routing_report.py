"""`drivemoe routing-report`: the numbers in report.json / report.md are those of the traces."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from model.skills import SKILL_NAMES

from agent.debugger.routing_report import build_report, scenario_type_of
from agent.debugger.debug_video import load_trace
from model.cameras import ROUTER_CANDIDATES, router_class_of_label
from model.cli import main as drivemoe_main
from test_debug_video import write_synthetic_trace

ACCIDENT = "RouteScenario_101_rep0_Town03_Accident_1_23_11_29_10_00_00"
CUTIN = "RouteScenario_202_rep0_Town12_HighwayCutIn_1_5_11_29_10_05_00"


def _lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "trace.jsonl").read_text().splitlines()]


def _result_file(path: Path, save_name: str, message: str) -> None:
    record = {
        "index": 0, "route_id": "RouteScenario_101_rep0", "scenario_name": "Accident_1", "weather_id": 23,
        "save_name": save_name, "town_name": "Town03", "status": "Failed - Agent got blocked",
        "num_infractions": 1,
        "infractions": {"collisions_vehicle": [message], "min_speed_infractions": ["ignored 80 %"]},
        "scores": {"score_route": 40.0, "score_penalty": 0.6, "score_composed": 24.0},
        "meta": {"route_length": 300.0, "duration_game": 60.0, "duration_system": 80.0},
    }
    path.write_text(json.dumps({"_checkpoint": {"records": [record], "progress": [1, 1], "global_record": {}}}))


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    write_synthetic_trace(run / ACCIDENT, lines=14, save_name=ACCIDENT, with_images=False)
    write_synthetic_trace(run / CUTIN, lines=9, save_name=CUTIN, with_images=False)
    # ground-truth labels for the first route: CAM_BACK ("NULL") everywhere except two frames
    labels = {str(2 * i): "NULL" for i in range(14)}
    labels["0"] = "CAM_FRONT_LEFT"
    labels["2"] = "CAM_FRONT_RIGHT"
    (run / ACCIDENT / "camera_labels.json").write_text(json.dumps(labels))
    # a collision at x = 81 m: the nearest trace line is line 8 (position 80 m, frame 16, t = 0.8 s)
    _result_file(run / "results.json", ACCIDENT,
                 "Agent collided against object with type=vehicle.audi.tt and id=7 at (x=81.0, y=0.5, z=0.1)")
    return run


def test_scenario_type_from_save_names(run):
    assert scenario_type_of(load_trace(run / ACCIDENT)) == "Accident"
    assert scenario_type_of(load_trace(run / CUTIN)) == "HighwayCutIn"


def test_report_numbers_match_the_traces(run, tmp_path):
    out = tmp_path / "report"
    result = build_report([run], out, flip_window_s=0.5, progress=False)
    numbers = json.loads((out / "report.json").read_text())
    assert numbers == json.loads(json.dumps(result.numbers))
    all_selected = []
    for name in (ACCIDENT, CUTIN):
        lines = _lines(run / name)
        selected = [line["camera_router"]["selected"][0] for line in lines]
        all_selected += selected
        entry = numbers["routes"][name]
        assert entry["inferences"] == len(lines)
        assert entry["camera_counts"] == {c: selected.count(c) for c in ROUTER_CANDIDATES}
        assert entry["flips"] == sum(a != b for a, b in zip(selected, selected[1:]))
        final = [l["action_router"]["steps"][-1] for l in lines]
        top = [s["experts"][int(np.argmax(s["weights"]))] for s in final]
        assert entry["expert_counts"] == {SKILL_NAMES[e]: top.count(e) for e in range(7)}
    assert numbers["camera_counts"] == {c: all_selected.count(c) for c in ROUTER_CANDIDATES}
    assert numbers["inferences"] == len(all_selected)
    # per scenario type and per ability (Accident -> Overtaking; HighwayCutIn -> Merging)
    assert numbers["camera_by_scenario"]["Accident"] == numbers["routes"][ACCIDENT]["camera_counts"]
    assert numbers["camera_by_ability"]["Overtaking"] == numbers["routes"][ACCIDENT]["camera_counts"]
    assert numbers["camera_by_ability"]["Merging"] == numbers["routes"][CUTIN]["camera_counts"]
    # camera confusion against the label file
    lines = _lines(run / ACCIDENT)
    labels = json.loads((run / ACCIDENT / "camera_labels.json").read_text())
    expected = np.zeros((5, 5), int)
    for line in lines:
        expected[router_class_of_label(labels[str(line["frame"])]), ROUTER_CANDIDATES.index(line["camera_router"]["selected"][0])] += 1
    assert numbers["camera_confusion"] == expected.tolist()
    assert numbers["camera_accuracy"] == pytest.approx(np.trace(expected) / expected.sum())
    # the markdown states the same numbers
    text = (out / "report.md").read_text()
    counts = Counter(all_selected)
    for camera in ROUTER_CANDIDATES:
        assert f"| {camera} | {counts[camera]} |" in text
    assert f"{numbers['camera_accuracy']:.3f}" in text
    for png in result.pngs:
        assert png.is_file() and png.stat().st_size > 1000
        assert f"({png.name})" in text


def test_flips_before_a_located_infraction(run, tmp_path):
    result = build_report([run], tmp_path / "report", flip_window_s=0.5, progress=False)
    infractions = result.numbers["infractions"]
    assert len(infractions) == 1  # min-speed messages are not infractions here
    item = infractions[0]
    lines = _lines(run / ACCIDENT)
    assert item["frame"] == lines[8]["frame"] == 16
    selected = [line["camera_router"]["selected"][0] for line in lines]
    expected = [
        {"frame": lines[i]["frame"], "from": selected[i - 1], "to": selected[i]}
        for i in range(1, 9)
        if selected[i] != selected[i - 1] and 0.8 - 0.5 <= lines[i]["sim_time"] <= 0.8
    ]
    assert expected and item["flips_before"] == expected
    assert "| collisions_vehicle | 16 |" in (tmp_path / "report" / "report.md").read_text()


def test_cli_and_clear_errors(run, tmp_path, capsys):
    assert drivemoe_main(["routing-report", str(run / CUTIN), "--out", str(tmp_path / "one")]) == 0
    assert "routing report:" in capsys.readouterr().out
    assert drivemoe_main(["routing-report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "no such trace or run folder" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert drivemoe_main(["routing-report", str(empty), "--out", str(tmp_path / "x")]) == 2
    assert "no trace.jsonl" in capsys.readouterr().err


def test_dense_model_trace_reports_no_choices(tmp_path):
    from agent.runtime.routing_trace import TraceWriter, trace_record
    from test_debug_video import FakePrediction

    folder = tmp_path / CUTIN
    writer = TraceWriter(folder)
    writer.write_header({"name": "tiny-drivepi0"}, {}, CUTIN)
    prediction = FakePrediction(np.zeros((10, 2)), None, None, (), None, None, None)
    for i in range(3):
        writer.append(trace_record(i, 0.1 * i, 1.0, (0.0, 0.0), 0.0, (10.0, 0.0), prediction, {"steer": 0.0}, {}))
    writer.close()
    result = build_report([folder], tmp_path / "report", progress=False)
    assert result.numbers["inferences"] == 3
    assert set(result.numbers["camera_counts"].values()) == {0}
    assert "top_expert_accuracy" not in result.numbers and "skill_router_accuracy" not in result.numbers and "camera_accuracy" not in result.numbers
    assert result.numbers["routes"][CUTIN]["flips"] == 0


def test_a_scenario_type_without_ability_says_why_instead_of_an_empty_cell(tmp_path):
    # The demo's lane change: LaneChange is a Bench2Drive dataset clip type, but not one of the route
    # scenario types of bench2drive220.xml that tools/ability_benchmark.py maps to abilities.
    lane = "LaneChange_Town00_Route1000001_Weather0"
    write_synthetic_trace(tmp_path / "run" / lane, lines=4, save_name=lane, with_images=False)
    header_path = tmp_path / "run" / lane / "trace_header.json"
    header = json.loads(header_path.read_text()) if header_path.is_file() else {"format": "drivemoe-trace", "version": 2}
    header["scenario_type"] = "LaneChange"
    header_path.write_text(json.dumps(header))
    result = build_report([tmp_path / "run" / lane], tmp_path / "report", progress=False)
    entry = result.numbers["routes"][lane]
    assert entry["scenario_type"] == "LaneChange" and entry["abilities"] == []
    why = "none (LaneChange is not a Bench2Drive route scenario type of tools/ability_benchmark.py)"
    row = next(line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if line.startswith(f"| {lane} |"))
    assert row.split(" | ")[2] == why
    assert why in (tmp_path / "report" / "report.html").read_text()
