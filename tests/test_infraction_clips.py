"""Infraction clips on a synthetic run whose results and traces agree (positions and frames)."""
from __future__ import annotations

import json

from model.cli import main as drivemoe_main
from test_debug_video import write_synthetic_trace
from test_routing_report import ACCIDENT, _result_file


def test_one_clip_per_located_infraction_with_its_routing(tmp_path, capsys):
    run = tmp_path / "run"
    records = write_synthetic_trace(run / ACCIDENT, lines=14, save_name=ACCIDENT, with_images=False)
    # the synthetic ego drives along x at 10 m per line (0.1 s): the collision at x=80 is line 8 (frame 16, t 0.8 s)
    _result_file(run / "results.json", ACCIDENT, "Agent collided against object with type=vehicle.tesla and id=42 at (x=80.3, y=0.4, z=0.1)")
    assert drivemoe_main(["infraction-clips", str(run), "--out", str(tmp_path / "clips"), "--before", "0.5", "--after", "0.2"]) == 0
    assert "1 clip(s) over 1 route(s), 0 not located" in capsys.readouterr().out
    route = tmp_path / "clips" / ACCIDENT
    videos = sorted(route.glob("*.mp4")) or sorted(route.glob("*_frames"))
    assert len(videos) == 1 and "collisions_vehicle_frame16" in videos[0].name
    assert (route / "00_collisions_vehicle_frame16_routing.png").stat().st_size > 5000
    page = (route / "index.html").read_text()
    assert "collisions_vehicle" in page and "16" in page
    assert ACCIDENT in (tmp_path / "clips" / "index.html").read_text()
    import cv2

    capture = cv2.VideoCapture(str(videos[0]))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = [r["frame"] for r in records if 0.3 - 1e-9 <= r["sim_time"] <= 1.0 + 1e-9]
    assert count == len(wanted) == 8


def test_routing_report_links_videos_and_clips(tmp_path):
    from agent.debugger.routing_report import build_report

    run = tmp_path / "run"
    write_synthetic_trace(run / ACCIDENT, lines=10, save_name=ACCIDENT, with_images=False)
    _result_file(run / "results.json", ACCIDENT, "Agent collided against object with type=vehicle.tesla and id=42 at (x=50.0, y=0.0, z=0.1)")
    assert drivemoe_main(["infraction-clips", str(run), "--out", str(tmp_path / "clips")]) == 0
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / f"{ACCIDENT}.mp4").write_bytes(b"\x00")
    result = build_report([run], tmp_path / "report", progress=False, videos=[videos], clips_dir=tmp_path / "clips")
    links = result.numbers["routes"][ACCIDENT]["links"]
    assert links == {"video": f"../videos/{ACCIDENT}.mp4", "infraction clips": f"../clips/{ACCIDENT}/index.html"}
    assert f'href="../clips/{ACCIDENT}/index.html"' in (tmp_path / "report" / "report.html").read_text()
    assert f"[video](../videos/{ACCIDENT}.mp4)" in (tmp_path / "report" / "report.md").read_text()


def test_each_kind_of_infraction_gets_its_clip_and_unlocated_ones_are_listed(tmp_path, capsys):
    run = tmp_path / "run"
    write_synthetic_trace(run / ACCIDENT, lines=14, save_name=ACCIDENT, with_images=False)
    record = {
        "index": 0, "route_id": "RouteScenario_101_rep0", "scenario_name": "Accident_1", "weather_id": 23,
        "save_name": ACCIDENT, "town_name": "Town03", "status": "Failed - Agent got blocked", "num_infractions": 4,
        "infractions": {"red_light": ["Agent ran a red light 4431 at (x=20.1, y=0.0, z=0.0)"],
                        "route_dev": ["Agent deviated from the route at (x=60.2, y=0.5, z=0.0)"],
                        "vehicle_blocked": ["Agent got blocked at (x=129.7, y=0.0, z=0.0)"],
                        "stop_infraction": ["Agent ran a stop sign"]},
        "scores": {"score_route": 40.0, "score_penalty": 0.6, "score_composed": 24.0},
        "meta": {"route_length": 300.0, "duration_game": 60.0, "duration_system": 80.0},
    }
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"_checkpoint": {"records": [record], "progress": [1, 1], "global_record": {}}}))
    assert drivemoe_main(["infraction-clips", str(run), "--results", str(results), "--out", str(tmp_path / "clips"),
                          "--before", "0.2", "--after", "0"]) == 0
    assert "3 clip(s) over 1 route(s), 1 not located" in capsys.readouterr().out
    names = sorted(p.stem for p in (tmp_path / "clips" / ACCIDENT).glob("*.mp4"))
    assert [n.split("_", 1)[1] for n in names] == ["red_light_frame4", "route_dev_frame12", "vehicle_blocked_frame26"]
    assert "Agent ran a stop sign" in (tmp_path / "clips" / "index.html").read_text()
