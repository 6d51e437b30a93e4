"""Localisation: the leaderboard's Mercator GNSS convention, the solved reference, heading signs, gaps."""
from __future__ import annotations

import math

import numpy as np
import pytest

from agent.runtime.localization import (
    GeoReference,
    Localizer,
    compass_to_yaw,
    gps_to_world,
    solve_reference,
    world_to_gps,
    yaw_to_compass,
)


def leaderboard_location_to_gps(lat_ref, lon_ref, x, y):
    """The formula as BENCH2DRIVE.md / the leaderboard state it, written out independently."""
    r = 6378137.0
    scale = math.cos(lat_ref * math.pi / 180.0)
    mx = scale * lon_ref * math.pi * r / 180.0 + x
    my = scale * r * math.log(math.tan((90.0 + lat_ref) * math.pi / 360.0)) - y
    return (360.0 * math.atan(math.exp(my / (r * scale))) / math.pi - 90.0, mx * 180.0 / (math.pi * r * scale))


@pytest.mark.parametrize("ref", [GeoReference(), GeoReference(0.0, 0.0), GeoReference(49.0, 8.0)])
def test_round_trip_matches_the_leaderboard_formula(ref):
    points = np.array([[0.0, 0.0], [1234.5, -987.25], [-5000.0, 4200.0]])
    gps = world_to_gps(points, ref)
    for (x, y), (lat, lon) in zip(points, gps):
        assert np.allclose((lat, lon), leaderboard_location_to_gps(ref.lat_ref, ref.lon_ref, x, y), atol=1e-12)
    assert np.allclose(gps_to_world(gps, ref), points, atol=1e-6)


def test_north_is_minus_y_and_east_is_plus_x():
    ref = GeoReference()
    north = gps_to_world(np.array([ref.lat_ref + 1e-4, ref.lon_ref]), ref)
    east = gps_to_world(np.array([ref.lat_ref, ref.lon_ref + 1e-4]), ref)
    assert north[1] < -5 and abs(north[0]) < 1e-9
    assert east[0] > 5 and abs(east[1]) < 1e-9


def test_reference_is_solved_from_one_plan_pair():
    true = GeoReference(42.0, 2.0)
    x, y = 812.3, -230.7
    lat, lon = world_to_gps(np.array([x, y]), true)
    solved = solve_reference(lat, lon, x, y)
    assert abs(solved.lat_ref - 42.0) < 1e-9 and abs(solved.lon_ref - 2.0) < 1e-9
    far = np.array([-3000.0, 2500.0])
    assert np.allclose(gps_to_world(world_to_gps(far, true), solved), far, atol=1e-4)


def test_compass_to_carla_yaw():
    assert compass_to_yaw(0.0) == pytest.approx(-math.pi / 2)  # north = -y = yaw -90 deg
    assert compass_to_yaw(math.pi / 2) == pytest.approx(0.0)  # east = +x = yaw 0
    assert compass_to_yaw(math.pi) == pytest.approx(math.pi / 2)  # south = +y = yaw +90 deg
    for yaw in (-3.0, -1.0, 0.3, 2.9):
        assert compass_to_yaw(yaw_to_compass(yaw)) == pytest.approx(yaw)


def test_nan_compass_and_dropped_gnss_are_held_never_raised():
    ref = GeoReference()
    localizer = Localizer(ref)
    first = localizer.update(None, float("nan"))  # nothing valid yet: zeros
    assert (first.x, first.y, first.compass) == (0.0, 0.0, 0.0)
    assert not first.gnss_valid and not first.compass_valid
    gps = world_to_gps(np.array([10.0, 20.0]), ref)
    pose = localizer.update(gps, 1.0)
    assert pose.gnss_valid and pose.x == pytest.approx(10.0, abs=1e-6) and pose.y == pytest.approx(20.0, abs=1e-6)
    held = localizer.update(np.array([np.nan, np.nan]), float("nan"))
    assert (held.x, held.y, held.compass) == (pose.x, pose.y, 1.0)
    assert localizer.invalid_gnss == 2 and localizer.invalid_compass == 2
