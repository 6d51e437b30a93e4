"""Test double of leaderboard.utils.route_manipulation: RoadOption and the documented downsampling.

`downsample_route(route, sample_factor)` keeps, as upstream documents it: the first point, every
lane-change point, the points where the road option changes (unless the previous one was a lane
change), a point whenever more than `sample_factor` metres have accumulated since the last kept
point, and the last point. Written from that description, not from the upstream code.
`location_to_gps` is the leaderboard's Mercator world -> GPS conversion (for building plans).
"""
from __future__ import annotations

import math
from enum import IntEnum

EARTH_RADIUS_EQUA = 6378137.0


class RoadOption(IntEnum):
    """agents.navigation.local_planner.RoadOption values."""

    VOID = -1
    LEFT = 1
    RIGHT = 2
    STRAIGHT = 3
    LANEFOLLOW = 4
    CHANGELANELEFT = 5
    CHANGELANERIGHT = 6


LANE_CHANGES = (RoadOption.CHANGELANELEFT, RoadOption.CHANGELANERIGHT)


def downsample_route(route: list, sample_factor: float) -> list[int]:
    """Indices of the route points kept; route = [(carla.Transform, RoadOption)]."""
    kept: list[int] = []
    previous_option = None
    travelled = 0.0
    last = len(route) - 1
    for index, (transform, option) in enumerate(route):
        keep = (
            previous_option is None
            or option in LANE_CHANGES
            or (option != previous_option and previous_option not in LANE_CHANGES)
            or travelled > sample_factor
            or index == last
        )
        if keep:
            kept.append(index)
            travelled = 0.0
        else:
            travelled += transform.location.distance(route[index - 1][0].location)
        previous_option = option
    return kept


def location_to_gps(lat_ref: float, lon_ref: float, x: float, y: float, z: float = 0.0) -> dict:
    """World location -> {'lat', 'lon', 'z'} with the leaderboard's Mercator convention."""
    scale = math.cos(lat_ref * math.pi / 180.0)
    mx = scale * lon_ref * math.pi * EARTH_RADIUS_EQUA / 180.0 + x
    my = scale * EARTH_RADIUS_EQUA * math.log(math.tan((90.0 + lat_ref) * math.pi / 360.0)) - y
    lon = mx * 180.0 / (math.pi * EARTH_RADIUS_EQUA * scale)
    lat = 360.0 * math.atan(math.exp(my / (EARTH_RADIUS_EQUA * scale))) / math.pi - 90.0
    return {"lat": lat, "lon": lon, "z": z}
