"""The leaderboard test double follows the documented interface: downsampling, plans, __call__ path."""
from __future__ import annotations

import sys
from pathlib import Path

import carla
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "leaderboard_double"))
from leaderboard.autoagents import autonomous_agent  # noqa: E402
from leaderboard.utils.route_manipulation import RoadOption, downsample_route  # noqa: E402


def route(options):
    return [(carla.Transform(carla.Location(x=float(i))), option) for i, option in enumerate(options)]


def test_downsampling_keeps_start_end_option_and_lane_changes_and_every_50m():
    options = [RoadOption.LANEFOLLOW] * 120 + [RoadOption.LEFT] * 10 + [RoadOption.CHANGELANELEFT] * 2 + [RoadOption.LANEFOLLOW] * 20
    kept = downsample_route(route(options), 50)
    assert kept[0] == 0 and kept[-1] == len(options) - 1
    assert 120 in kept  # entering the junction (option change)
    assert 130 in kept and 131 in kept  # every lane-change point
    assert 132 not in kept  # leaving a lane change is not an option change
    straight = [k for k in kept if k < 120]
    assert straight == [0, 52, 104]  # more than 50 m accumulated since the last kept point


def test_agent_base_class_interface():
    autonomous_agent.HERO_ACTOR = None
    agent = autonomous_agent.AutonomousAgent("localhost", 2000, debug=False)
    assert agent.track == autonomous_agent.Track.SENSORS and agent._global_plan is None
    world = route([RoadOption.LANEFOLLOW] * 200)
    gps = [({"lat": 0.0, "lon": float(i), "z": 0.0}, option) for i, (_, option) in enumerate(world)]
    agent.set_global_plan(gps, world)
    assert len(agent._plan_gps_HACK) == 200 and len(agent._global_plan) == len(agent._global_plan_world_coord) < 10
    agent.sensor_interface.put({})
    control = agent()
    assert isinstance(control, carla.VehicleControl) and control.manual_gear_shift is False
    with pytest.raises(RuntimeError, match="no sensor data"):
        agent()
