"""Bad scores, unwritable outputs and run folders as a user produces them: one line, a clear exit status,
never "nan", never a traceback, nothing half-written."""
from __future__ import annotations

import errno
import json
import math
import os
import shutil
from pathlib import Path

import pytest

from bench2drive_eval.cli import main as cli_main
from bench2drive_eval.jsonio import FileWriteError, write_json_atomic
from bench2drive_eval.run_config import RunConfig
from bench2drive_eval.run_state import RunLayout, new_run_state, save_run_state
from bench2drive_eval.splitting import read_route_file, write_splits

SOURCE = "drivemoe_reference/official_results/drivemoe_base_bf16_seed1.json"


@pytest.fixture(scope="module")
def shared(bench2drive_shared: Path) -> Path:
    return bench2drive_shared.parent


@pytest.fixture(scope="module")
def routes_xml(bench2drive_shared: Path) -> Path:
    return bench2drive_shared / "routes" / "bench2drive220.xml"


def strict_loads(text: str):
    """json.loads that fails on NaN/Infinity, as every other JSON reader does."""
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def _raw(shared: Path) -> dict:
    return json.loads((shared / SOURCE).read_text())


@pytest.mark.parametrize("field,value,shown", [
    ("score_composed", math.nan, "nan"),
    ("score_composed", math.inf, "inf"),
    ("score_route", 1e300, "1e+300"),
    ("score_composed", -50.0, "-50.0"),
    ("score_route", 250.0, "250.0"),
    ("score_penalty", 1.5, "1.5"),
    ("score_route", 10 ** 400, "inf"),  # an integer too large for a float
])
def test_bad_scores_are_named_and_skipped(tmp_path, shared, routes_xml, capsys, field, value, shown):
    raw = _raw(shared)
    record = raw["_checkpoint"]["records"][4]
    record["scores"][field] = value
    path = tmp_path / "results.json"
    path.write_text(json.dumps(raw))  # Python's json writes NaN / Infinity as bare words, as the leaderboard would
    rc = cli_main(["metrics", str(path), "--routes", str(routes_xml), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert rc == 1
    problem = [line for line in captured.err.splitlines() if "input problem" in line]
    assert len(problem) == 1
    assert str(path) in problem[0] and "record 4" in problem[0] and record["route_id"] in problem[0]
    assert f"scores.{field}" in problem[0] and shown in problem[0] and "record skipped" in problem[0]
    figures = captured.out.split("Input problems:")[0]  # that section quotes the bad value, as stderr does
    assert "Driving Score" in figures and "nan" not in figures.lower() and "inf " not in figures.lower()
    assert "Traceback" not in captured.err
    # The record counts as missing (0), the rest is scored; every output is valid JSON.
    metrics = strict_loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["evaluated_routes"] == 219 and record["route_id"].split("_")[1] in metrics["missing_routes"]
    strict_loads((tmp_path / "out" / "merged.json").read_text())


def test_inconsistent_composed_score_is_named(tmp_path, shared):
    from bench2drive_eval.results import load_run

    raw = _raw(shared)
    raw["_checkpoint"]["records"][0]["scores"].update(score_route=40.0, score_penalty=0.5, score_composed=90.0)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(raw))
    merged = load_run(path)
    assert len(merged.records) == 219
    assert any("record 0" in e and "score_composed is 90.0" in e and "20" in e for e in merged.errors)


def test_json_writer_refuses_non_finite_numbers(tmp_path):
    target = tmp_path / "m.json"
    target.write_text('{"old": 1}')
    with pytest.raises(FileWriteError, match=r"m\.json: refusing to write a non-finite number at per_route\[1\]\.ds"):
        write_json_atomic(target, {"per_route": [{"ds": 1.0}, {"ds": math.nan}]})
    assert target.read_text() == '{"old": 1}' and os.listdir(tmp_path) == ["m.json"]


def _score_into(out: Path, source: Path, capsys) -> tuple[int, str]:
    rc = cli_main(["metrics", str(source), "--out", str(out)])
    return rc, capsys.readouterr().err.strip()


def test_out_under_a_file_is_one_line(tmp_path, shared, capsys):
    blocker = tmp_path / "score"
    blocker.write_text("not a folder")
    rc, err = _score_into(blocker / "out", shared / SOURCE, capsys)
    assert rc == 2 and err.count("\n") == 0 and str(blocker / "out") in err and "not a folder" in err


def test_full_disk_changes_nothing_in_out(tmp_path, shared, capsys, monkeypatch):
    out = tmp_path / "out"
    assert _score_into(out, shared / SOURCE, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def fsync_full_on_third(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync_full_on_third)
    raw = _raw(shared)
    raw["_checkpoint"]["records"] = raw["_checkpoint"]["records"][:50]
    (tmp_path / "fewer.json").write_text(json.dumps(raw))
    rc, err = _score_into(out, tmp_path / "fewer.json", capsys)
    assert rc == 2 and err.count("\n") == 0 and "No space left on device" in err and str(out) in err
    # All or nothing: the earlier complete outputs are untouched and no temporary file is left.
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_read_only_out_is_one_line(tmp_path, shared, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        probe_writable = os.access(out, os.W_OK)  # root writes anyway: fall back to the file system's answer
        if probe_writable:
            def read_only(*args, **kwargs):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            monkeypatch.setattr("tempfile.mkstemp", read_only)
        rc, err = _score_into(out, shared / SOURCE, capsys)
    finally:
        out.chmod(0o755)
    assert rc == 2 and err.count("\n") == 0 and str(out) in err
    assert ("Read-only file system" if probe_writable else "Permission denied") in err
    assert os.listdir(out) == []


def make_run_folder(root: Path, routes_xml: Path, route_ids: list[str], records: list[dict]) -> Path:
    """A `bench2drive-eval run` folder as the runner lays it out: run_state.json, splits/, results/."""
    layout = RunLayout(root)
    entries = [e for e in read_route_file(routes_xml) if e.route_id in route_ids]
    splits = write_splits(entries, 2, layout.splits)
    config = RunConfig(bench2drive_root=root / "b2d", carla_root=root / "carla", routes_file=routes_xml,
                       agent=root / "agent.py", agent_config="", out_dir=root)
    save_run_state(layout, new_run_state(config, splits))
    for split in splits:
        mine = [r for r in records if r["route_id"].split("_")[1] in split.route_ids]
        write_json_atomic(layout.checkpoint(split.index), {"_checkpoint": {"records": mine}})
    return root


def test_run_folder_is_scored_on_its_own_routes(tmp_path, shared, routes_xml, capsys):
    raw = _raw(shared)
    records = raw["_checkpoint"]["records"][:12]
    ids = [r["route_id"].split("_")[1] for r in records]
    run = make_run_folder(tmp_path / "run", routes_xml, ids[:10], records[:9])  # 10 routes run, 9 finished
    rc = cli_main(["metrics", str(run), "--json"])
    data = strict_loads(capsys.readouterr().out)
    assert rc == 0 and data["total_routes"] == 10 and data["evaluated_routes"] == 9
    expected = sum(r["scores"]["score_composed"] for r in records[:9]) / 10
    assert data["driving_score"] == pytest.approx(expected, abs=1e-9)
    assert data["missing_routes"] == [ids[9]]
    assert any(n.startswith("route set: the 10 routes of run") for n in data["notes"])
    # The library call behind compare/report does the same (load_run records the run folders it read).
    from bench2drive_eval.metrics import compute_metrics
    from bench2drive_eval.results import load_run

    assert compute_metrics(load_run(run)).driving_score == pytest.approx(expected, abs=1e-9)
    assert compute_metrics(load_run(run), routes=routes_xml).total_routes == 220  # --routes still wins
    # Moved elsewhere, the job route files are found in its splits/ folder.
    moved = shutil.move(str(run), str(tmp_path / "moved"))
    rc = cli_main(["metrics", moved, "--json"])
    assert rc == 0 and strict_loads(capsys.readouterr().out)["driving_score"] == pytest.approx(expected, abs=1e-9)
    # With no route file left at all: one line asking for --routes.
    shutil.rmtree(Path(moved) / "splits")
    state = json.loads((Path(moved) / "run_state.json").read_text())
    state["config"]["routes_file"] = str(tmp_path / "gone.xml")
    (Path(moved) / "run_state.json").write_text(json.dumps(state))
    rc = cli_main(["metrics", moved])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "give --routes" in err and "run_state.json" in err


@pytest.mark.parametrize("messages,note", [
    (["Average speed is 45.0 of the surrounding traffic"], "without a percentage"),
    (["Average speed is 1500.0% of the surrounding traffic", "Average speed is 2000% of it"], "no usable"),
])
def test_efficiency_edge_cases_upstream_crashes_on_are_noted(tmp_path, shared, routes_xml, messages, note):
    """Upstream's efficiency tool stops here (no match / division by zero); we leave the route out, noted."""
    from bench2drive_eval.metrics import compute_metrics
    from bench2drive_eval.results import load_run

    raw = _raw(shared)
    records = raw["_checkpoint"]["records"]
    with_checks = [r for r in records if r["infractions"]["min_speed_infractions"]]
    with_checks[0]["infractions"]["min_speed_infractions"] = messages
    path = tmp_path / "r.json"
    path.write_text(json.dumps(raw))
    metrics = compute_metrics(load_run(path), routes=routes_xml)
    assert metrics.efficiency_routes == len(with_checks) - 1
    assert any(with_checks[0]["route_id"].split("_")[1] in n and note in n for n in metrics.notes)


def test_nan_keypoint_in_route_file_is_one_line(tmp_path, shared, routes_xml, capsys):
    text = routes_xml.read_text()
    bad = tmp_path / "routes.xml"
    first = text.index('x="', text.index("<position"))
    bad.write_text(text[:first] + 'x="nan" data-was="' + text[first + 3:])
    rc = cli_main(["metrics", str(shared / SOURCE), "--routes", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and str(bad) in err and "x='nan'" in err and "finite" in err


def test_unreadable_offroad_distance_is_noted_not_nan(tmp_path, shared, routes_xml):
    from bench2drive_eval.metrics import compute_metrics
    from bench2drive_eval.results import load_run

    raw = _raw(shared)
    record = raw["_checkpoint"]["records"][2]
    record["infractions"]["outside_route_lanes"] = ["Agent went outside its route lanes for about nan meters"]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(raw))
    metrics = compute_metrics(load_run(path), routes=routes_xml)
    assert math.isfinite(metrics.infractions_per_km["outside_route_lanes"])
    assert any("off-road distance unreadable" in n and record["route_id"] in n for n in metrics.notes)


def test_comfort_logs_upstream_stops_on_are_left_out_with_a_note(tmp_path, shared, routes_xml):
    """Upstream's comfort tool stops at a missing metric_info.json and at a 2-step log; we score the rest."""
    from bench2drive_eval.metrics import compute_metrics
    from bench2drive_eval.results import load_run

    raw = _raw(shared)
    records = raw["_checkpoint"]["records"][:3]
    raw["_checkpoint"]["records"] = records
    path = tmp_path / "r.json"
    path.write_text(json.dumps(raw))
    step = {"acceleration": [0.0, 0.0, 0.0], "angular_velocity": [0.0, 0.0, 0.0], "forward_vector": [1.0, 0.0, 0.0],
            "right_vector": [0.0, 1.0, 0.0], "location": [0.0, 0.0, 0.0], "rotation": [0.0, 0.0, 0.0]}
    save = tmp_path / "save"
    for record, steps in zip(records, (40, 2)):  # the third route has no metric_info.json at all
        (save / record["save_name"]).mkdir(parents=True)
        (save / record["save_name"] / "metric_info.json").write_text(json.dumps({str(i): step for i in range(steps)}))
    metrics = compute_metrics(load_run(path), routes=routes_xml, save_path=save)
    assert metrics.smoothness == 100.0 and metrics.smoothness_routes == 1
    note = next(n for n in metrics.notes if n.startswith("comfort:"))
    assert "2 route(s)" in note and records[1]["save_name"] in note and records[2]["save_name"] in note


def test_non_utf8_result_file_is_named(tmp_path, shared, capsys):
    good = tmp_path / "good.json"
    good.write_bytes((shared / SOURCE).read_bytes())
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"_checkpoint": {"records": [{"route_id": "RouteScenario_1_rep0", "status": "Compl\xe9ted"}]}}')
    rc = cli_main(["metrics", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "latin1.json: not UTF-8 text" in err and "Traceback" not in err
