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
Bad readings never raise and are never used: missing / non-finite GNSS, a latitude or longitude out of
range, a position farther than MAX_WORLD_EXTENT from the map origin, a jump farther than the speed and
the elapsed time allow, and a non-finite or out-of-range compass (NaN in the first frames is normal).
The last valid value is held (zero before any) and the reading is reported as a Fault (logged once
per kind by agent/runtime/sensor_guard.py). A jump that the following JUMP_CONFIRM_READINGS readings
all agree with is real (the car was moved): it is accepted and the pose is marked `relocalised`, as is
the first valid position after a gap, so that the route planner can find its place again.
The GNSS reads the position of its antenna. Given the antenna's `mount_offset` (forward, right metres
from the vehicle origin, rigid on the car) the localiser reports the vehicle origin instead: the fix
minus the offset turned by the compass heading. Before the first valid compass the heading is unknown
and the fix is reported unshifted (at most |offset| off, during the initial brake).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from agent.runtime.sensor_guard import Fault

EARTH_RADIUS_EQUA = 6378137.0
LOGGER = logging.getLogger(__name__)
TICK_SECONDS = 0.05  # elapsed time per reading when the timestamps are unusable
MAX_WORLD_EXTENT = 1.0e5  # metres from the map origin; CARLA's largest towns span ~ 10 km
MAX_UNKNOWN_SPEED = 50.0  # m/s assumed for the jump bound while the speed is unknown
JUMP_SPEED_MARGIN = 5.0  # m/s added to the measured speed for the jump bound (acceleration, speed lag)
GNSS_NOISE_SLACK = 5.0  # metres always allowed: the leaderboard's GNSS noise is ~0.5 m (1 sigma) per axis
JUMP_CONFIRM_READINGS = 20  # consistent readings (1 s) after a rejected jump that make it the new position
COMPASS_LIMIT = 2.0 * math.pi + 1e-6  # IMU compass is in [0, 2 pi); beyond +-2 pi it is not a reading


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


def ego_offset_to_world(forward: float, right: float, compass: float) -> tuple[float, float]:
    """A vector given in the ego frame (x forward, y right; metres) in CARLA world axes (x east, y south)."""
    yaw = compass - math.pi / 2.0
    c, s = math.cos(yaw), math.sin(yaw)
    return forward * c - right * s, forward * s + right * c


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
    relocalised: bool = False  # the position was re-acquired after a gap or a confirmed jump
    moved: float = 0.0  # metres the GNSS fix moved since the previous tick (the planner's search after relocalising)
    faults: tuple[Fault, ...] = ()  # rejected readings of this tick

    @property
    def xy(self) -> np.ndarray:
        return np.array([self.x, self.y], dtype=np.float64)

    @property
    def yaw(self) -> float:
        return compass_to_yaw(self.compass)


class Localizer:
    """Turns raw GNSS / compass readings into a Pose, rejecting impossible ones and holding the last valid."""

    def __init__(self, reference: GeoReference, mount_offset: tuple[float, float] = (0.0, 0.0)) -> None:
        self.reference = reference
        self.mount_offset = (float(mount_offset[0]), float(mount_offset[1]))
        self._last_xy = (0.0, 0.0)
        self._last_compass = 0.0
        self._last_time: float | None = None  # timestamp of the last accepted position
        self._ticks_since_fix = 0
        self._have_fix = False
        self._have_compass = False
        self._gap = False  # the last reading(s) were not accepted
        self._candidate: tuple[tuple[float, float], float, int] | None = None  # (xy, time, agreeing readings)
        self.invalid_gnss = 0
        self.invalid_compass = 0
        self.rejected_jumps = 0

    def update(self, gnss: np.ndarray | None, compass: float | None, speed: float | None = None,
               timestamp: float | None = None) -> Pose:
        """The pose of this tick; `speed` (m/s, None: unknown) and `timestamp` (s) bound the plausible jump."""
        faults: list[Fault] = []
        self._ticks_since_fix += 1
        previous = self._last_xy
        relocalised = False
        problem = self._gnss_problem(gnss)
        xy = None
        if problem is None:
            xy = gps_point_to_world(float(gnss[0]), float(gnss[1]), self.reference)
            problem = self._position_problem(xy, speed, timestamp)
        if problem is None:
            relocalised = self._gap and self._have_fix
            self._accept(xy, timestamp)
        else:
            kind, detail = problem
            if kind == "jump" and self._confirms_jump(xy, speed, timestamp):
                relocalised = True
                self._accept(xy, timestamp)
                faults.append(Fault("GPS", "jump_confirmed", detail, "relocalised"))
            else:
                self.invalid_gnss += 1
                self.rejected_jumps += kind == "jump"
                self._gap = True
                faults.append(Fault("GPS", kind, detail, "held"))
        gnss_ok = not faults or faults[-1].action == "relocalised"

        compass_problem = _compass_problem(compass)
        if compass_problem is None:
            self._last_compass = float(compass)
            self._have_compass = True
        else:
            if not self._have_compass and compass_problem[0] in ("missing", "not_finite"):
                compass_problem = ("not_yet_valid", compass_problem[1])  # CARLA's IMU starts with NaN
            self.invalid_compass += 1
            faults.append(Fault("IMU", compass_problem[0], compass_problem[1], "held"))
        x, y = self._vehicle_origin()
        return Pose(
            x=x,
            y=y,
            compass=self._last_compass,
            gnss_valid=gnss_ok,
            compass_valid=compass_problem is None,
            relocalised=relocalised,
            moved=math.hypot(self._last_xy[0] - previous[0], self._last_xy[1] - previous[1]),
            faults=tuple(faults),
        )

    def _vehicle_origin(self) -> tuple[float, float]:
        """The last fix moved from the antenna to the vehicle origin (unshifted until a compass was seen)."""
        x, y = self._last_xy
        if self.mount_offset == (0.0, 0.0) or not self._have_compass:
            return x, y
        dx, dy = ego_offset_to_world(*self.mount_offset, self._last_compass)
        return x - dx, y - dy

    def _accept(self, xy: tuple[float, float], timestamp: float | None) -> None:
        self._last_xy = xy
        self._last_time = _finite_time(timestamp)
        self._ticks_since_fix = 0
        self._have_fix = True
        self._gap = False
        self._candidate = None

    @staticmethod
    def _gnss_problem(gnss: np.ndarray | None) -> tuple[str, str] | None:
        if gnss is None or len(gnss) < 2:
            return "missing", "no (lat, lon) reading"
        lat, lon = float(gnss[0]), float(gnss[1])
        if not (math.isfinite(lat) and math.isfinite(lon)):
            return "not_finite", f"lat {lat!r}, lon {lon!r}"
        if not (-90.0 < lat < 90.0 and -180.0 <= lon <= 180.0):
            return "out_of_range", f"lat {lat:.9g}, lon {lon:.9g} outside (-90, 90) x [-180, 180] degrees"
        return None

    def _allowed_distance(self, speed: float | None, timestamp: float | None, since_time: float | None, ticks: int) -> float:
        now = _finite_time(timestamp)
        elapsed = now - since_time if now is not None and since_time is not None and now > since_time else ticks * TICK_SECONDS
        bound_speed = MAX_UNKNOWN_SPEED if speed is None or not math.isfinite(speed) else abs(speed) + JUMP_SPEED_MARGIN
        return bound_speed * elapsed + GNSS_NOISE_SLACK

    def _position_problem(self, xy: tuple[float, float], speed: float | None, timestamp: float | None) -> tuple[str, str] | None:
        if not (math.isfinite(xy[0]) and math.isfinite(xy[1])) or max(abs(xy[0]), abs(xy[1])) > MAX_WORLD_EXTENT:
            return "out_of_range", f"position ({xy[0]:.6g}, {xy[1]:.6g}) m is beyond {MAX_WORLD_EXTENT:g} m of the map origin"
        if not self._have_fix:
            return None
        jump = math.hypot(xy[0] - self._last_xy[0], xy[1] - self._last_xy[1])
        allowed = self._allowed_distance(speed, timestamp, self._last_time, self._ticks_since_fix)
        if jump > allowed:
            return "jump", f"moved {jump:.1f} m since the last valid position, at most {allowed:.1f} m possible"
        return None

    def _confirms_jump(self, xy: tuple[float, float], speed: float | None, timestamp: float | None) -> bool:
        """Track rejected positions; True once JUMP_CONFIRM_READINGS consecutive ones agree with each other."""
        now = _finite_time(timestamp)
        if self._candidate is not None:
            (cx, cy), ctime, count = self._candidate
            allowed = self._allowed_distance(speed, timestamp, ctime, 1)
            if math.hypot(xy[0] - cx, xy[1] - cy) <= allowed:
                self._candidate = (xy, now, count + 1)
                return count + 1 >= JUMP_CONFIRM_READINGS
        self._candidate = (xy, now, 1)
        return JUMP_CONFIRM_READINGS <= 1


def _finite_time(timestamp: float | None) -> float | None:
    try:
        value = float(timestamp)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _compass_problem(compass: float | None) -> tuple[str, str] | None:
    if compass is None:
        return "missing", "no compass reading"
    try:
        value = float(compass)
    except (TypeError, ValueError):
        return "not_a_number", f"compass is {type(compass).__name__}"
    if not math.isfinite(value):
        return "not_finite", f"compass {value!r}"
    if abs(value) > COMPASS_LIMIT:
        return "out_of_range", f"compass {value:.6g} rad outside [-2 pi, 2 pi]"
    return None
