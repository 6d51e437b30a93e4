"""Abilities (v0.0.3 / v0.0.4 rules) and the Traffic_Signs junction check on an OpenDRIVE map written here."""
from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from bench2drive_eval.abilities import ABILITIES, JunctionUnavailable, compute_abilities, junction_passes
from bench2drive_eval.metrics import compute_metrics
from bench2drive_eval.results import RouteRecord, load_run
from bench2drive_eval.routes import Route, load_routes

STRAIGHT_INTO_JUNCTION = textwrap.dedent("""\
    <?xml version="1.0" standalone="yes"?>
    <OpenDRIVE>
    <header revMajor="1" revMinor="4" name="TestTown" version="1.00" north="0" south="0" east="0" west="0"/>
    {roads}
    <junction id="100" name="j">
     <connection id="0" incomingRoad="1" connectingRoad="2" contactPoint="start"><laneLink from="-1" to="-1"/></connection>
    </junction>
    </OpenDRIVE>
""")
# Road 1: x 0..100 (lane -1 drives +x at CARLA y=+1.75); road 2: junction connector x 100..120; road 3: x 120..220.
ROAD = """<road name="{name}" length="{length}" id="{id}" junction="{junction}">
 <link>{link}</link>
 <planView><geometry s="0.0" x="{x}" y="0.0" hdg="0.0" length="{length}"><line/></geometry></planView>
 <elevationProfile><elevation s="0" a="0" b="0" c="0" d="0"/></elevationProfile><lateralProfile/>
 <lanes><laneSection s="0.0">{left}
  <center><lane id="0" type="none" level="false"/></center>
  <right><lane id="-1" type="driving" level="false"><link>{lane_link}</link><width sOffset="0" a="3.5" b="0" c="0" d="0"/></lane></right>
 </laneSection></lanes>
</road>"""
LEFT = '<left><lane id="1" type="driving" level="false"><width sOffset="0" a="3.5" b="0" c="0" d="0"/></lane></left>'


def write_test_map(carla_root: Path, town: str = "TestTown") -> Path:
    roads = "\n".join([
        ROAD.format(name="in", length=100.0, id=1, junction=-1, x=0.0, left=LEFT,
                    link='<successor elementType="junction" elementId="100"/>', lane_link='<successor id="-1"/>'),
        ROAD.format(name="connector", length=20.0, id=2, junction=100, x=100.0, left="",
                    link='<predecessor elementType="road" elementId="1" contactPoint="end"/>'
                         '<successor elementType="road" elementId="3" contactPoint="start"/>',
                    lane_link='<predecessor id="-1"/><successor id="-1"/>'),
        ROAD.format(name="out", length=100.0, id=3, junction=-1, x=120.0, left=LEFT,
                    link='<predecessor elementType="junction" elementId="100"/>', lane_link='<predecessor id="-1"/>'),
    ])
    path = carla_root / "CarlaUE4" / "Content" / "Carla" / "Maps" / "OpenDrive" / f"{town}.xodr"
    path.parent.mkdir(parents=True)
    path.write_text(STRAIGHT_INTO_JUNCTION.format(roads=roads))
    return path


def make_record(route_id: str, status: str = "Completed", score_route: float = 100.0, **infractions) -> RouteRecord:
    names = ["collisions_layout", "collisions_pedestrian", "collisions_vehicle", "red_light", "stop_infraction",
             "outside_route_lanes", "min_speed_infractions", "yield_emergency_vehicle_infractions",
             "scenario_timeouts", "route_dev", "vehicle_blocked", "route_timeout"]
    return RouteRecord(
        route_key=f"RouteScenario_{route_id}_rep0", route_id=route_id, repetition=0, scenario_name="x_1",
        town="TestTown", status=status,
        infractions={n: tuple(infractions.get(n, ())) for n in names},
        score_route=score_route, score_penalty=1.0, score_composed=score_route, route_length=200.0,
        duration_game=10.0, duration_system=10.0, save_name="", source="mem", position=0,
    )


def test_uniad_base_abilities_without_maps(bench2drive_shared):
    metrics = compute_metrics(load_run(bench2drive_shared / "fixtures" / "zoo_v003_UniAD-Base.json"),
                              routes=bench2drive_shared / "routes" / "bench2drive220.xml")
    published = {"Merging": 14.10, "Overtaking": 17.78, "Emergency_Brake": 21.67, "Give_Way": 10.00}
    for name, value in published.items():
        assert metrics.abilities[name] == pytest.approx(value, abs=0.005), name
    # Traffic_Signs (published 14.21) needs maps: not computable, never a made-up number.
    assert metrics.abilities["Traffic_Signs"] is None
    assert metrics.ability_mean is None
    assert metrics.ability_mean_of_computable == pytest.approx(sum(metrics.abilities[n] for n in published) / 4)
    assert any("Traffic_Signs" in note and "not computable" in note for note in metrics.notes)
    # The two routes missing from the file leave the denominators (Merging: 78 instead of 80).
    assert metrics.ability_counts["Merging"] == (11, 78)


def test_v004_denominators(bench2drive_shared):
    routes = load_routes(bench2drive_shared / "routes" / "bench2drive_0.0.4_val.xml")
    records = {rid: make_record(rid) for rid in routes}
    result = compute_abilities(list(routes.values()), records, "v0.0.4", junction_lookup=lambda route: (10, 200))
    totals = {s.name: s.total for s in result.scores}
    assert totals == {"Overtaking": 69, "Merging": 64, "Emergency_Brake": 57, "Give_Way": 6, "Traffic_Signs": 86}
    assert result.mean == pytest.approx(1.0)


def test_traffic_sign_rules_v003_and_v004():
    scenario = "SignalizedJunctionLeftTurn"  # in Merging and Traffic_Signs
    assert scenario in ABILITIES["Traffic_Signs"] and scenario in ABILITIES["Merging"]
    routes = [Route(str(i), "TestTown", (scenario,), ((0, 0, 0), (1, 0, 0))) for i in range(4)]
    records = {
        "0": make_record("0"),  # full success
        "1": make_record("1", "Failed - TickRuntime", 60.0),  # failed, past the junction: (50+8)/200 = 0.29
        "2": make_record("2", "Failed - TickRuntime", 20.0),  # failed before the junction
        "3": make_record("3", "Failed - TickRuntime", 60.0, red_light=["ran a red light"]),
    }
    lookup = lambda route: (50, 200)  # noqa: E731  (first junction waypoint is the 50th of 200)
    v3 = compute_abilities(routes, records, "v0.0.3", lookup)
    # v0.0.3: 4 routes x 2 in the denominator; successes: route 0 twice, route 1 once (junction check).
    assert (v3.scores[-1].successes, v3.scores[-1].total) == (3, 8)
    assert v3.rate("Merging") == pytest.approx(1 / 4)
    v4 = compute_abilities(routes, records, "v0.0.4", lookup)
    # v0.0.4: counted once; route 0 by success, route 1 by partial credit.
    assert (v4.scores[-1].successes, v4.scores[-1].total) == (2, 4)


def test_junction_threshold_is_strict():
    count, length = 42, 100  # (42 + 8) / 100 = 0.5
    assert not junction_passes(make_record("1", "Failed", 50.0), count, length)
    assert junction_passes(make_record("1", "Failed", 50.01), count, length)
    assert not junction_passes(make_record("1", "Failed", 90.0, stop_infraction=["x"]), count, length)


# A stand-in for CARLA's planner with its interface, trace_route(origin, destination) -> [(waypoint, option)]:
# a straight walk along the lane every `resolution` metres (enough on the one-lane test map), and an error
# for a destination behind the origin, as the real one raises networkx's NetworkXNoPath.
STAND_IN_PLANNER = textwrap.dedent("""\
    class NetworkXNoPath(Exception):
        pass

    class GlobalRoutePlanner:
        built = 0

        def __init__(self, wmap, sampling_resolution):
            self._map, self._res = wmap, sampling_resolution
            GlobalRoutePlanner.built += 1

        def trace_route(self, origin, destination):
            if destination.x < origin.x:
                raise NetworkXNoPath("no path")
            wp = self._map.get_waypoint(origin)
            route = [(wp, 4)]
            while wp.transform.location.distance(destination) > self._res:
                wp = wp.next(self._res)[0]
                route.append((wp, 4))
            return route
""")


@pytest.fixture
def carla_root_with_planner(tmp_path, monkeypatch):
    """A CARLA_ROOT with the test map and PythonAPI/carla/agents/navigation/global_route_planner.py."""
    pytest.importorskip("carla")
    write_test_map(tmp_path)
    package = tmp_path / "PythonAPI" / "carla" / "agents" / "navigation"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "global_route_planner.py").write_text(STAND_IN_PLANNER)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m == "agents" or m.startswith("agents.")]:
        monkeypatch.delitem(sys.modules, name)
    yield tmp_path
    for name in [m for m in sys.modules if m == "agents" or m.startswith("agents.")]:
        del sys.modules[name]


def test_without_carlas_planner_traffic_signs_is_refused(tmp_path, bench2drive_shared, capsys):
    """Maps alone are not enough: only CARLA's own planner gives upstream's junction count."""
    pytest.importorskip("carla")
    from bench2drive_eval.junctions import JunctionChecker

    write_test_map(tmp_path)
    routes = [Route("1", "TestTown", ("T_Junction",), ((5.0, 1.75, 0.0), (180.0, 1.75, 0.0)))]
    result = compute_abilities(routes, {"1": make_record("1", "Failed", 80.0)}, "v0.0.3", JunctionChecker(tmp_path))
    ts = result.scores[-1]
    assert ts.rate is None and "GlobalRoutePlanner" in ts.note and "global_route_planner.py not found" in ts.note
    assert "\n" not in ts.note
    # Through the CLI: the number is n/a, the reason is printed once, exit status 0.
    from bench2drive_eval.cli import main

    rc = main(["metrics", str(bench2drive_shared / "fixtures" / "zoo_v003_VAD.json"),
               "--routes", str(bench2drive_shared / "routes" / "bench2drive220.xml"), "--carla-root", str(tmp_path),
               "--json"])
    captured = capsys.readouterr()
    assert rc == 0 and json.loads(captured.out)["abilities"]["Traffic_Signs"] is None
    reason = [line for line in captured.err.splitlines() if "Traffic_Signs" in line]
    assert len(reason) == 1 and "GlobalRoutePlanner" in reason[0] and "no approximation" in reason[0]


def test_junction_count_uses_carlas_planner_as_upstream(carla_root_with_planner):
    """Upstream's get_waypoint_route concatenates trace_route(k_i, k_i+1) and counts up to the first junction
    waypoint, 1-based. On the test map lane -1 runs along y=1.75; x=100..119 is the junction connector."""
    from bench2drive_eval.junctions import JunctionChecker

    checker = JunctionChecker(carla_root_with_planner)
    # x=5..100 on road 1 (96 waypoints; x=100 is its end, s=100), x=101 the first on the connector: the 97th.
    # The walk stops within 1 m of x=180: x=5..179, 175 waypoints.
    assert checker(Route("1", "TestTown", ("T_Junction",), ((5.0, 1.75, 0.0), (180.0, 1.75, 0.0)))) == (97, 175)
    assert "GlobalRoutePlanner" in checker.planner_note
    # A keypoint at x=60: the first trace is x=5..59 (55), the second x=60..179 (120). CARLA places the second
    # origin at s=60.0000038, so its 41st step (s=100.0000038) is past road 1's end, on the connector: 55 + 41.
    route = Route("2", "TestTown", ("T_Junction",), ((5.0, 1.75, 0.0), (60.0, 1.75, 0.0), (180.0, 1.75, 0.0)))
    assert checker(route) == (96, 175)
    # Never reaching the junction: no count (upstream raises; we give no credit, with a note).
    assert checker(Route("3", "TestTown", ("T_Junction",), ((5.0, 1.75, 0.0), (50.0, 1.75, 0.0)))) is None
    from agents.navigation.global_route_planner import GlobalRoutePlanner

    assert GlobalRoutePlanner.built == 1  # one planner per town, as upstream's v0.0.4 tool


def test_planner_failure_and_no_junction_are_noted_not_raised(carla_root_with_planner):
    from bench2drive_eval.junctions import JunctionChecker

    routes = [
        Route("1", "TestTown", ("T_Junction",), ((5.0, 1.75, 0.0), (180.0, 1.75, 0.0))),
        Route("2", "TestTown", ("T_Junction",), ((150.0, 1.75, 0.0), (5.0, 1.75, 0.0))),  # planner raises
        Route("3", "TestTown", ("T_Junction",), ((5.0, 1.75, 0.0), (50.0, 1.75, 0.0))),  # no junction
    ]
    records = {r.route_id: make_record(r.route_id, "Failed", 80.0) for r in routes}
    result = compute_abilities(routes, records, "v0.0.4", JunctionChecker(carla_root_with_planner))
    ts = result.scores[-1]
    # Route 1: 0.80 > (97 + 8) / 175 = 0.6: credit. Routes 2 and 3: none, each with a note.
    assert (ts.successes, ts.total) == (1, 3)
    assert any("route 2" in n and "NetworkXNoPath" in n for n in result.notes)
    assert any("route 3" in n and "no junction" in n for n in result.notes)


def test_missing_map_makes_traffic_signs_not_computable(carla_root_with_planner):
    from bench2drive_eval.junctions import JunctionChecker

    routes = [Route("1", "Town99", ("T_Junction",), ((0, 0, 0), (1, 0, 0)))]
    result = compute_abilities(routes, {"1": make_record("1")}, "v0.0.3", JunctionChecker(carla_root_with_planner))
    ts = result.scores[-1]
    assert ts.rate is None and "Town99" in ts.note and "OpenDrive" in ts.note
    with pytest.raises(JunctionUnavailable):
        JunctionChecker(carla_root_with_planner)(routes[0])


def test_metrics_cli_rejects_carla_root_without_maps(tmp_path, bench2drive_shared, capsys):
    from bench2drive_eval.cli import main

    rc = main(["metrics", str(bench2drive_shared / "fixtures" / "zoo_v003_VAD.json"), "--carla-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "Maps" in err and str(tmp_path) in err
