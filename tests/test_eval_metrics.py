"""Scoring: published Bench2Drive numbers reproduced from ../shared, merging, validation and the metrics CLI."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench2drive_eval.cli import main as cli_main
from bench2drive_eval.jsonio import read_json, write_json_atomic
from bench2drive_eval.metrics import compute_metrics, format_metrics, infractions_per_km
from bench2drive_eval.results import load_run
from bench2drive_eval.routes import load_routes

# file, driving score, success rate, efficiency (None: checked against the definition below)
PUBLISHED = [
    ("bench2drive/fixtures/zoo_v003_UniAD-Base.json", 45.81, 16.36, 129.21),
    ("bench2drive/fixtures/zoo_v003_UniAD-Tiny.json", 40.73, 13.18, 123.92),
    ("bench2drive/fixtures/zoo_v003_VAD.json", 42.35, 15.00, 157.95),
    ("bench2drive/fixtures/zoo_v003_TCP-only-traj.json", 59.90, 30.00, 76.54),
    ("drivemoe_reference/official_results/drivemoe_base_bf16_seed1.json", 74.22, 48.64, None),
    ("drivemoe_reference/official_results/drivepi_base_bf16.json", 55.85, 30.00, None),
    ("drivemoe_reference/official_results/drivepi_base_fp32.json", 65.85, 42.27, None),
]


@pytest.fixture(scope="module")
def shared(bench2drive_shared: Path) -> Path:
    return bench2drive_shared.parent


@pytest.fixture(scope="module")
def routes220(bench2drive_shared: Path):
    return load_routes(bench2drive_shared / "routes" / "bench2drive220.xml")


def efficiency_by_definition(path: Path) -> float:
    """Bench2Drive's efficiency written out plainly: per route the mean 'X%' of its min-speed messages
    (X > 1000 skipped), then the mean over routes that have such messages."""
    per_route = []
    for record in json.loads(path.read_text())["_checkpoint"]["records"]:
        values = [float(re.search(r"(\d+\.?\d*)%", m).group(1)) for m in record["infractions"]["min_speed_infractions"]]
        values = [v for v in values if v <= 1000]
        if values:
            per_route.append(sum(values) / len(values))
    return sum(per_route) / len(per_route)


@pytest.mark.parametrize("name,ds,sr,eff", PUBLISHED, ids=[Path(p[0]).stem for p in PUBLISHED])
def test_published_results_are_reproduced(shared, routes220, name, ds, sr, eff):
    path = shared / name
    metrics = compute_metrics(load_run(path), routes=routes220)
    assert metrics.driving_score == pytest.approx(ds, abs=0.005)
    assert metrics.success_rate == pytest.approx(sr, abs=0.005)
    expected_eff = eff if eff is not None else efficiency_by_definition(path)
    print(f"{Path(name).stem}: DS {metrics.driving_score:.2f} SR {metrics.success_rate:.2f} "
          f"efficiency {metrics.efficiency:.2f} (definition: {efficiency_by_definition(path):.2f})")
    assert metrics.efficiency == pytest.approx(expected_eff, abs=0.005)
    # The file's own upstream-computed headline agrees with ours as well.
    raw = json.loads(path.read_text())
    assert metrics.driving_score == pytest.approx(raw["driving score"], abs=1e-6)
    assert metrics.success_rate == pytest.approx(100 * raw["success rate"], abs=1e-6)


def test_route_file_is_parsed(routes220):
    assert len(routes220) == 220
    types = {}
    for route in routes220.values():
        types[route.scenario_type] = types.get(route.scenario_type, 0) + 1
        assert route.town.startswith("Town") and len(route.keypoints) >= 2 and route.length_m > 0
    assert len(types) == 44 and set(types.values()) == {5}
    assert routes220["1711"].scenario_type == "ParkingCutIn" and routes220["1711"].town == "Town12"


def test_missing_routes_count_zero_and_are_listed(shared, routes220):
    metrics = compute_metrics(load_run(shared / PUBLISHED[0][0]), routes=routes220)
    assert metrics.evaluated_routes == 218 and metrics.total_routes == 220
    assert set(metrics.missing_routes) == {"3800", "23670"}
    assert any("count 0" in note for note in metrics.notes)
    text = format_metrics(metrics)
    assert "Missing routes (2): 3800, 23670" in text and "45.81" in text


def _split(raw: dict, records: list[dict]) -> dict:
    out = copy.deepcopy(raw)
    out["_checkpoint"] = {"records": copy.deepcopy(records), "progress": [len(records), len(records)]}
    return out


def _set_mtime(path: Path, seconds: int) -> None:
    os.utime(path, (seconds, seconds))


def test_merge_keeps_last_complete_attempt(tmp_path, shared, routes220):
    raw = json.loads((shared / PUBLISHED[4][0]).read_text())
    records = raw["_checkpoint"]["records"]
    first, second = records[:110], records[110:]
    crashed = copy.deepcopy(second[0])
    crashed.update(status="Failed - Simulation crashed",
                   scores={"score_route": 3.0, "score_penalty": 1.0, "score_composed": 3.0})
    # Split 1 holds its routes plus a crashed first attempt of a split-2 route; split 2 (written later)
    # holds the finished attempt. A third, even later file has a crashed re-attempt of a route already
    # finished: the finished one must still win.
    late_crash = copy.deepcopy(first[5])
    late_crash.update(status="Failed - Agent crashed",
                      scores={"score_route": 0.0, "score_penalty": 1.0, "score_composed": 0.0})
    write_json_atomic(tmp_path / "split_0.json", _split(raw, first + [crashed]))
    write_json_atomic(tmp_path / "split_1.json", _split(raw, second))
    write_json_atomic(tmp_path / "split_2.json", _split(raw, [late_crash]))
    for i, name in enumerate(("split_0.json", "split_1.json", "split_2.json")):
        _set_mtime(tmp_path / name, 1_700_000_000 + i)
    merged = load_run(tmp_path)
    assert len(merged.records) == 220 and len(merged.sources) == 3
    assert merged.by_key[crashed["route_id"]].status == second[0]["status"]
    assert merged.by_key[late_crash["route_id"]].status == first[5]["status"]
    assert sum("2 attempts" in note for note in merged.notes) == 2
    metrics = compute_metrics(merged, routes=routes220)
    assert metrics.driving_score == pytest.approx(74.22, abs=0.005)
    assert metrics.success_rate == pytest.approx(48.64, abs=0.005)


def test_later_complete_attempt_replaces_earlier_one(tmp_path, shared):
    raw = json.loads((shared / PUBLISHED[4][0]).read_text())
    record = raw["_checkpoint"]["records"][0]
    retry = copy.deepcopy(record)
    retry.update(status="Failed - TickRuntime", scores={"score_route": 50.0, "score_penalty": 1.0, "score_composed": 50.0})
    write_json_atomic(tmp_path / "a.json", _split(raw, [record]))
    write_json_atomic(tmp_path / "b.json", _split(raw, [retry]))
    _set_mtime(tmp_path / "a.json", 1_700_000_000)
    _set_mtime(tmp_path / "b.json", 1_700_000_100)
    merged = load_run(tmp_path)
    assert merged.records[0].score_composed == 50.0 and merged.records[0].status == "Failed - TickRuntime"


def test_corrupt_file_is_named_and_the_rest_still_scores(tmp_path, shared, routes220):
    good = shared / PUBLISHED[4][0]
    (tmp_path / "good.json").write_bytes(good.read_bytes())
    (tmp_path / "truncated.json").write_bytes(good.read_bytes()[:5000])
    (tmp_path / "empty.json").write_text("")
    merged = load_run(tmp_path)
    assert len(merged.records) == 220
    assert any("truncated.json" in e and "truncated or corrupt" in e for e in merged.errors)
    assert any("empty.json" in e and "empty" in e for e in merged.errors)
    metrics = compute_metrics(merged, routes=routes220)
    assert metrics.driving_score == pytest.approx(74.22, abs=0.005)


def test_invalid_record_is_reported_with_file_and_field(tmp_path, shared):
    raw = json.loads((shared / PUBLISHED[4][0]).read_text())
    raw["_checkpoint"]["records"][3]["scores"]["score_composed"] = "high"
    del raw["_checkpoint"]["records"][7]["infractions"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(raw))
    merged = load_run(path)
    assert len(merged.records) == 218
    assert any("r.json: record 3" in e and "scores.score_composed" in e and "'high'" in e for e in merged.errors)
    assert any("r.json: record 7" in e and "infractions" in e for e in merged.errors)


def test_infractions_per_km_follow_the_leaderboard(tmp_path, shared):
    raw = json.loads((shared / PUBLISHED[4][0]).read_text())
    a, b = copy.deepcopy(raw["_checkpoint"]["records"][:2])
    for record in (a, b):
        record["infractions"] = {k: [] for k in record["infractions"]}
    a["meta"]["route_length"], a["scores"]["score_route"] = 2000.0, 50.0  # 1 km driven
    b["meta"]["route_length"], b["scores"]["score_route"] = 1000.0, 100.0  # 1 km driven
    for record in (a, b):
        record["scores"].update(score_penalty=1.0, score_composed=record["scores"]["score_route"])
    a["infractions"]["collisions_vehicle"] = ["c1", "c2"]
    b["infractions"]["collisions_vehicle"] = ["c3"]
    b["infractions"]["outside_route_lanes"] = [
        "Agent went outside its route lanes for about 250.0 meters (25.0% of the completed route)"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_split(raw, [a, b])))
    per_km, km = infractions_per_km(load_run(path).records)
    assert km == pytest.approx(2.0)
    assert per_km["collisions_vehicle"] == pytest.approx(1.5)
    assert per_km["outside_route_lanes"] == pytest.approx(0.25)  # km, not divided (leaderboard quirk)
    assert per_km["red_light"] == 0.0


def test_metrics_cli_json_and_out(tmp_path, shared, capsys):
    source = shared / PUBLISHED[5][0]
    routes = shared / "bench2drive" / "routes" / "bench2drive220.xml"
    rc = cli_main(["metrics", str(source), "--routes", str(routes), "--json", "--out", str(tmp_path / "out")])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["driving_score"] == pytest.approx(55.85, abs=0.005)
    assert data["success_rate"] == pytest.approx(30.00, abs=0.005)
    assert set(data["abilities"]) == {"Overtaking", "Merging", "Emergency_Brake", "Give_Way", "Traffic_Signs"}
    assert data["abilities"]["Traffic_Signs"] is None
    # merged.json written by --out is itself a valid input that scores the same.
    merged_file = tmp_path / "out" / "merged.json"
    assert read_json(tmp_path / "out" / "metrics.json")["driving_score"] == data["driving_score"]
    again = compute_metrics(load_run(merged_file), routes=routes)
    assert again.driving_score == pytest.approx(data["driving_score"], abs=1e-9)
    assert again.success_rate == pytest.approx(data["success_rate"], abs=1e-9)


def test_metrics_cli_partial_input_and_bad_arguments(tmp_path, shared, capsys):
    (tmp_path / "good.json").write_bytes((shared / PUBLISHED[4][0]).read_bytes())
    (tmp_path / "bad.json").write_text('{"_checkpoint": {"records": [')
    rc = cli_main(["metrics", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "Driving Score        74.22" in captured.out
    assert "bad.json" in captured.err and "truncated or corrupt" in captured.err
    rc = cli_main(["metrics", str(tmp_path / "good.json"), "--routes", str(tmp_path / "nope.xml")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "nope.xml" in err and "not found" in err
    rc = cli_main(["metrics", str(tmp_path / "missing.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "missing.json" in err


def test_package_does_not_import_torch():
    code = ("import sys, bench2drive_eval.metrics_cli, bench2drive_eval.compare, bench2drive_eval.report, "
            "bench2drive_eval.junctions, bench2drive_eval.comfort; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'model', 'agent')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_run_folder_reads_only_result_files(tmp_path, shared):
    raw = json.loads((shared / PUBLISHED[4][0]).read_text())
    records = raw["_checkpoint"]["records"]
    run = tmp_path / "run"
    write_json_atomic(run / "run_state.json", {"jobs": 2})
    write_json_atomic(run / "results" / "job_000.json", _split(raw, records[:100]))
    write_json_atomic(run / "results" / "job_001.json", _split(raw, records[100:]))
    write_json_atomic(run / "jobs" / "000" / "checkpoint.last_good.json", _split(raw, records[:3]))
    write_json_atomic(run / "score" / "metrics.json", {"driving_score": 1.0})
    merged = load_run(run)
    assert len(merged.records) == 220 and len(merged.sources) == 2 and not merged.errors
    assert all("/results/" in s for s in merged.sources)
    # In a plain folder, other JSON files are skipped with a note; named explicitly, they are an error.
    write_json_atomic(tmp_path / "plain" / "r.json", _split(raw, records))
    write_json_atomic(tmp_path / "plain" / "state.json", {"jobs": 2})
    merged = load_run(tmp_path / "plain")
    assert len(merged.records) == 220 and not merged.errors
    assert any("state.json" in n and "not a result file" in n for n in merged.notes)
    merged = load_run([tmp_path / "plain" / "r.json", tmp_path / "plain" / "state.json"])
    assert any("state.json" in e and "not a Bench2Drive result file" in e for e in merged.errors)
