"""Localisation: GNSS (lat, lon) -> CARLA world x, y (metres) and IMU compass -> heading.

The leaderboard turns world locations into GPS with a Mercator projection around the map's
geoReference (lat_ref, lon_ref; default 42.0, 2.0):
    s  = cos(lat_ref)
    mx = s * R * lon * pi / 180                    (R = 6378137 m)
    my = s * R * ln(tan((90 + lat) * pi / 360))
    x  = mx - mx(lon_ref),   y = -(my - my(lat_ref))    (CARLA y points south)
We invert exactly that. The agent does not read the map, so the reference is solved from the first
(world transform, GPS) pair of the global plan, which the leaderboard computed with the same formula.
Heading: CARLA yaw (rad, 0 = east, clockwise positive) = compass - pi/2; compass 0 = north.
NaN compass (first frames) or missing / non-finite GNSS never raise: the last valid value is held
(zero before any), and the event is counted and logged once.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

EARTH_RADIUS_EQUA = 6378137.0
LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeoReference:
    """The map's geoReference (degrees); CARLA's default when a map declares none."""

    lat_ref: float = 42.0
    lon_ref: float = 2.0

    @property
    def scale(self) -> float:
        return math.cos(math.radians(self.lat_ref))


def _mercator_y(lat_deg: np.ndarray | float) -> np.ndarray:
    return np.log(np.tan((90.0 + np.asarray(lat_deg, dtype=np.float64)) * np.pi / 360.0))


def world_to_gps(xy: np.ndarray, ref: GeoReference) -> np.ndarray:
    """[..., 2] CARLA world x, y (metres) -> [..., 2] (lat, lon) degrees, as the leaderboard does it."""
    xy = np.asarray(xy, dtype=np.float64)
    s = ref.scale
    mx = s * ref.lon_ref * np.pi * EARTH_RADIUS_EQUA / 180.0 + xy[..., 0]
    my = s * EARTH_RADIUS_EQUA * _mercator_y(ref.lat_ref) - xy[..., 1]
    lon = mx * 180.0 / (np.pi * EARTH_RADIUS_EQUA * s)
    lat = 360.0 * np.arctan(np.exp(my / (EARTH_RADIUS_EQUA * s))) / np.pi - 90.0
    return np.stack([lat, lon], axis=-1)


def gps_to_world(latlon: np.ndarray, ref: GeoReference) -> np.ndarray:
    """[..., 2] (lat, lon) degrees -> [..., 2] CARLA world x, y (metres); inverse of world_to_gps."""
    latlon = np.asarray(latlon, dtype=np.float64)
    s = ref.scale
    k = s * EARTH_RADIUS_EQUA
    x = k * np.pi / 180.0 * (latlon[..., 1] - ref.lon_ref)
    y = k * (_mercator_y(ref.lat_ref) - _mercator_y(latlon[..., 0]))
    return np.stack([x, y], axis=-1)


def gps_point_to_world(lat: float, lon: float, ref: GeoReference) -> tuple[float, float]:
    """One (lat, lon) -> world (x, y); the scalar twin of gps_to_world (per-tick hot path)."""
    k = ref.scale * EARTH_RADIUS_EQUA
    x = k * math.pi / 180.0 * (lon - ref.lon_ref)
    y = k * (math.log(math.tan((90.0 + ref.lat_ref) * math.pi / 360.0)) - math.log(math.tan((90.0 + lat) * math.pi / 360.0)))
    return x, y


def solve_reference(lat: float, lon: float, x: float, y: float, iterations: int = 8) -> GeoReference:
    """The geoReference under which world point (x, y) projects to GPS (lat, lon).

    lon_ref and lat_ref follow from the two projection equations; the scale cos(lat_ref) depends on
    the unknown lat_ref, so a few fixed-point steps are taken (it converges to machine precision
    in 3-4 steps because |y| / R is tiny).
    """
    lat_ref = float(lat)
    for _ in range(iterations):
        k = math.cos(math.radians(lat_ref)) * EARTH_RADIUS_EQUA
        merc_ref = float(_mercator_y(lat)) + y / k
        lat_ref = 360.0 * math.atan(math.exp(merc_ref)) / math.pi - 90.0
    k = math.cos(math.radians(lat_ref)) * EARTH_RADIUS_EQUA
    lon_ref = lon - x * 180.0 / (math.pi * k)
    return GeoReference(lat_ref=lat_ref, lon_ref=lon_ref)


def compass_to_yaw(compass: float) -> float:
    """IMU compass (rad, 0 = north, clockwise) -> CARLA yaw (rad, 0 = east, clockwise), wrapped."""
    return (compass - math.pi / 2.0 + math.pi) % (2.0 * math.pi) - math.pi


def yaw_to_compass(yaw: float) -> float:
    """CARLA yaw (rad) -> IMU compass (rad, in [0, 2 pi))."""
    return (yaw + math.pi / 2.0) % (2.0 * math.pi)


@dataclass(frozen=True)
class Pose:
    """The localised ego pose of one tick (CARLA world frame)."""

    x: float
    y: float
    compass: float  # rad, 0 = north, clockwise
    gnss_valid: bool  # False: position held from an earlier tick
    compass_valid: bool  # False: compass held from an earlier tick (or zero)

    @property
    def xy(self) -> np.ndarray:
        return np.array([self.x, self.y], dtype=np.float64)

    @property
    def yaw(self) -> float:
        return compass_to_yaw(self.compass)


class Localizer:
    """Turns raw GNSS / compass readings into a Pose, holding the last valid values over gaps."""

    def __init__(self, reference: GeoReference) -> None:
        self.reference = reference
        self._last_xy = (0.0, 0.0)
        self._last_compass = 0.0
        self.invalid_gnss = 0
        self.invalid_compass = 0

    def update(self, gnss: np.ndarray | None, compass: float | None) -> Pose:
        gnss_ok = gnss is not None and len(gnss) >= 2 and math.isfinite(gnss[0]) and math.isfinite(gnss[1])
        if gnss_ok:
            self._last_xy = gps_point_to_world(float(gnss[0]), float(gnss[1]), self.reference)
        else:
            self.invalid_gnss += 1
            if self.invalid_gnss == 1:
                LOGGER.warning("GNSS reading missing or not finite (%r); holding the last position", gnss)
        compass_ok = compass is not None and math.isfinite(float(compass))
        if compass_ok:
            self._last_compass = float(compass)
        else:
            self.invalid_compass += 1
            if self.invalid_compass == 1:
                LOGGER.info("compass is %r (normal in the first frames); holding %.3f", compass, self._last_compass)
        return Pose(
            x=self._last_xy[0],
            y=self._last_xy[1],
            compass=self._last_compass,
            gnss_valid=gnss_ok,
            compass_valid=compass_ok,
        )
