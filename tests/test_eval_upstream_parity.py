"""Every figure the scorer shares with Bench2Drive's tools equals theirs, on each published result file.

The functions here restate what upstream computes, straight from the raw JSON (no project code):
tools/merge_route_json.py (DS, SR over 220), the leaderboard's StatisticsManager.compute_global_statistics
(means over the total route count, infractions per km), tools/ability_benchmark.py (first record of the
merged file per route, ability lists) and tools/efficiency_smoothness_benchmark.py (efficiency).
"""
from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench2drive_eval.abilities import ABILITIES
from bench2drive_eval.metrics import compute_metrics
from bench2drive_eval.results import load_run

FILES = [
    "bench2drive/fixtures/zoo_v003_UniAD-Base.json",
    "bench2drive/fixtures/zoo_v003_UniAD-Tiny.json",
    "bench2drive/fixtures/zoo_v003_VAD.json",
    "bench2drive/fixtures/zoo_v003_TCP-only-traj.json",
    "drivemoe_reference/official_results/drivemoe_base_bf16_seed1.json",
    "drivemoe_reference/official_results/drivepi_base_bf16.json",
    "drivemoe_reference/official_results/drivepi_base_fp32.json",
]
TOTAL = 220
TIGHT = 1e-9


def success(record: dict) -> bool:
    return record["status"] in ("Completed", "Perfect") and not any(
        events for name, events in record["infractions"].items() if name != "min_speed_infractions")


def merged_order(records: list[dict]) -> list[dict]:
    """merge_route_json writes the records sorted by the route_id string, descending."""
    return sorted(records, key=lambda r: r["route_id"], reverse=True)


def upstream_global_record(records: list[dict]) -> dict[str, float]:
    """The leaderboard's global record: each mean divided by the total route count; events per km driven."""
    out = {key: sum(r["scores"][key] for r in records) / TOTAL
           for key in ("score_route", "score_penalty", "score_composed")}
    km = max(sum(r["meta"]["route_length"] / 1000 * r["scores"]["score_route"] / 100 for r in records), 0.001)
    for key in ("collisions_vehicle", "red_light", "route_dev", "vehicle_blocked", "min_speed_infractions"):
        out[key] = sum(len(r["infractions"][key]) for r in records) / km
    out["outside_route_lanes"] = sum(float(r["infractions"]["outside_route_lanes"][0].split(" ")[8]) / 1000
                                     for r in records if r["infractions"]["outside_route_lanes"])
    return out


def upstream_abilities(records: list[dict], routes_xml: Path) -> dict[str, tuple[int, int]]:
    """ability_benchmark.py without Traffic_Signs' junction part: (successes, routes) per ability."""
    ordered = merged_order(records)
    counts = {name: [0, 0] for name in ABILITIES}
    for route in ET.parse(routes_xml).getroot().findall("route"):
        scenario = route.find("scenarios").find("scenario").get("type")
        record = next((r for r in ordered if r["route_id"].split("_")[1] == route.get("id")), None)
        if record is None:
            continue
        for name, members in ABILITIES.items():
            if scenario in members:
                counts[name][1] += 1
                counts[name][0] += int(success(record))
    return {name: (s, n) for name, (s, n) in counts.items()}


def upstream_efficiency(records: list[dict]) -> float:
    per_route = []
    for record in records:
        messages = record["infractions"]["min_speed_infractions"]
        if messages:
            values = [float(re.search(r"\b\d+\.?\d*%", m).group().rstrip("%")) for m in messages]
            values = [v for v in values if v <= 1000]
            per_route.append(sum(values) / len(values))
    return sum(per_route) / len(per_route)


@pytest.fixture(scope="module")
def shared(bench2drive_shared: Path) -> Path:
    return bench2drive_shared.parent


@pytest.fixture(scope="module")
def routes_xml(bench2drive_shared: Path) -> Path:
    return bench2drive_shared / "routes" / "bench2drive220.xml"


def _records(path: Path) -> list[dict]:
    return json.loads(path.read_text())["_checkpoint"]["records"]


@pytest.mark.parametrize("name", FILES, ids=[Path(f).stem for f in FILES])
def test_every_shared_figure_equals_upstream(shared, routes_xml, name):
    path = shared / name
    raw = _records(path)
    metrics = compute_metrics(load_run(path), routes=routes_xml)
    glob = upstream_global_record(raw)
    assert metrics.driving_score == pytest.approx(sum(r["scores"]["score_composed"] for r in raw) / TOTAL, abs=TIGHT)
    assert metrics.success_rate == pytest.approx(100 * sum(map(success, raw)) / TOTAL, abs=TIGHT)
    assert metrics.driving_score == pytest.approx(glob["score_composed"], abs=TIGHT)
    assert metrics.route_completion == pytest.approx(glob["score_route"], abs=TIGHT)
    # The infraction penalty as the leaderboard: a route without a record adds 0.
    assert metrics.infraction_penalty == pytest.approx(glob["score_penalty"], abs=TIGHT)
    assert metrics.infraction_penalty_evaluated == pytest.approx(
        sum(r["scores"]["score_penalty"] for r in raw) / len(raw), abs=TIGHT)
    for key in ("collisions_vehicle", "red_light", "route_dev", "vehicle_blocked", "min_speed_infractions",
                "outside_route_lanes"):
        assert metrics.infractions_per_km[key] == pytest.approx(glob[key], abs=TIGHT), key
    assert metrics.efficiency == pytest.approx(upstream_efficiency(raw), abs=TIGHT)
    expected = upstream_abilities(raw, routes_xml)
    for ability in ("Overtaking", "Merging", "Emergency_Brake", "Give_Way"):
        successes, n = expected[ability]
        assert metrics.ability_counts[ability] == (successes, n), ability
        assert metrics.abilities[ability] == pytest.approx(100 * successes / n, abs=TIGHT), ability
    print(f"{Path(name).stem}: penalty {metrics.infraction_penalty:.4f} (evaluated only "
          f"{metrics.infraction_penalty_evaluated:.4f}), {len(raw)} records")


@pytest.mark.parametrize("name,upstream,evaluated_only", [
    ("bench2drive/fixtures/zoo_v003_UniAD-Tiny.json", 0.6986, 0.7149),
    ("bench2drive/fixtures/zoo_v003_VAD.json", 0.7054, 0.7286),
    ("bench2drive/fixtures/zoo_v003_TCP-only-traj.json", 0.6892, 0.7220),
])
def test_infraction_penalty_numbers_of_the_issue(shared, routes_xml, name, upstream, evaluated_only):
    metrics = compute_metrics(load_run(shared / name), routes=routes_xml)
    assert round(metrics.infraction_penalty, 4) == upstream
    assert round(metrics.infraction_penalty_evaluated, 4) == evaluated_only


def test_abilities_use_the_repetition_upstreams_merged_file_lists_first(tmp_path, shared, routes_xml):
    """A file with a rep1 attempt for 4 Overtaking routes: upstream's ability tool reads rep1 (the merged file
    is sorted by route_id descending), while DS/SR sum every record over 220 as its merge tool does."""
    raw = json.loads((shared / FILES[0]).read_text())
    records = raw["_checkpoint"]["records"]
    overtaking = [r for r in records if r["scenario_name"].rsplit("_", 1)[0] in ABILITIES["Overtaking"]]
    failed = [r for r in overtaking if not success(r)][:4]
    assert len(failed) == 4
    for record in failed:  # the second repetition of a failed route succeeds
        again = copy.deepcopy(record)
        again["route_id"] = record["route_id"].replace("_rep0", "_rep1")
        again["status"] = "Completed"
        again["infractions"] = {k: [] for k in record["infractions"]}
        again["scores"] = {"score_route": 100.0, "score_penalty": 1.0, "score_composed": 100.0}
        records.append(again)
    path = tmp_path / "with_rep1.json"
    path.write_text(json.dumps(raw))
    metrics = compute_metrics(load_run(path), routes=routes_xml)
    expected = upstream_abilities(records, routes_xml)
    before = upstream_abilities(_records(shared / FILES[0]), routes_xml)
    assert expected["Overtaking"] == (before["Overtaking"][0] + 4, before["Overtaking"][1])
    assert metrics.ability_counts["Overtaking"] == expected["Overtaking"]
    assert metrics.driving_score == pytest.approx(sum(r["scores"]["score_composed"] for r in records) / TOTAL, abs=TIGHT)
    assert any("highest repetition" in note for note in metrics.notes)
    assert not any("repetition 0" in note for note in metrics.notes)
