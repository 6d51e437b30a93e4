"""First junction waypoint on a route's dense 1 m trace, from OpenDRIVE maps read offline with carla.Map(name, xodr).

Bench2Drive's ability tool interpolates the route keypoints with CARLA's GlobalRoutePlanner (1 m) and counts
waypoints up to the first one inside a junction. When `$CARLA_ROOT/PythonAPI/carla/agents` is present we
call that very planner. Otherwise we trace the route ourselves over the map's lane topology: every lane
segment is sampled every metre (`next_until_lane_end`), the keypoints are projected onto their lanes and
consecutive keypoints are joined by the shortest lane path (Dijkstra on segment lengths). This follows the
same lanes as the planner but may differ from it by a few waypoints around lane changes and keypoints.
"""
from __future__ import annotations

import heapq
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench2drive_eval.abilities import JunctionUnavailable
from bench2drive_eval.routes import Route

MAPS_SUBDIR = Path("CarlaUE4") / "Content" / "Carla" / "Maps"
RESOLUTION_M = 1.0


def _import_carla() -> Any:
    try:
        return importlib.import_module("carla")
    except ImportError:
        raise JunctionUnavailable(
            "the carla Python client is not installed (pip install carla-0-9-15 for CARLA 0.9.15)"
        ) from None


def find_xodr(carla_root: str | os.PathLike, town: str) -> Path:
    """The town's OpenDRIVE file under CARLA_ROOT, where CARLA 0.9.15 packages keep it."""
    maps = Path(carla_root) / MAPS_SUBDIR
    for candidate in (maps / "OpenDrive" / f"{town}.xodr", maps / town / "OpenDrive" / f"{town}.xodr"):
        if candidate.is_file():
            return candidate
    raise JunctionUnavailable(
        f"no OpenDRIVE map for {town} under {maps} (looked in OpenDrive/{town}.xodr and {town}/OpenDrive/{town}.xodr)"
    )


def load_map(name: str, xodr_text: str) -> Any:
    """A carla.Map built from OpenDRIVE text, without a simulator."""
    carla = _import_carla()
    return carla.Map(name, xodr_text)


@dataclass
class _Segment:
    points: np.ndarray  # (N, 3) every metre along one lane
    junction: np.ndarray  # (N,) bool
    start: tuple[float, float, float]
    end_key: tuple[float, float, float]


def _node(location: Any) -> tuple[float, float, float]:
    return (round(location.x, 1), round(location.y, 1), round(location.z, 1))


def _lane_key(waypoint: Any) -> tuple[int, int, int]:
    return (waypoint.road_id, waypoint.section_id, waypoint.lane_id)


def _along_lane(start: Any, step: float, forward: bool, max_points: int = 200_000) -> list[Any]:
    """Waypoints every `step` metres from `start` to the end (or start) of its lane section, start included.

    CARLA's next_until_lane_end/previous_until_lane_start run on across road boundaries, so we step ourselves.
    """
    lane = _lane_key(start)
    waypoints = [start]
    current = start
    for _ in range(max_points):
        candidates = current.next(step) if forward else current.previous(step)
        same_lane = [w for w in candidates if _lane_key(w) == lane]
        if not same_lane:
            break
        current = same_lane[0]
        waypoints.append(current)
    return waypoints


@dataclass
class LaneGraphTracer:
    """Densify a route over a map's lane topology (our own tracer; see the module docstring)."""

    carla_map: Any
    resolution: float = RESOLUTION_M
    _segments: list[_Segment] = field(default_factory=list, init=False)
    _by_lane: dict[tuple[int, int, int], list[int]] = field(default_factory=dict, init=False)
    _out_edges: dict[tuple[float, float, float], list[int]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for entry, exit_ in self.carla_map.get_topology():
            self._add_segment(entry, _node(exit_.transform.location))

    def _add_segment(self, entry: Any, end_key: tuple[float, float, float] | None = None) -> int:
        waypoints = _along_lane(entry, self.resolution, forward=True)
        locations = [w.transform.location for w in waypoints]
        index = len(self._segments)
        self._segments.append(_Segment(
            points=np.array([[p.x, p.y, p.z] for p in locations], dtype=np.float64),
            junction=np.array([w.is_junction for w in waypoints], dtype=bool),
            start=_node(entry.transform.location),
            end_key=end_key if end_key is not None else _node(locations[-1]),
        ))
        self._by_lane.setdefault((entry.road_id, entry.section_id, entry.lane_id), []).append(index)
        self._out_edges.setdefault(_node(entry.transform.location), []).append(index)
        return index

    def _localize(self, location: Any) -> tuple[int, int]:
        waypoint = self.carla_map.get_waypoint(location)
        lane = (waypoint.road_id, waypoint.section_id, waypoint.lane_id) if waypoint else None
        if lane is not None and lane not in self._by_lane:
            # CARLA's topology leaves out lanes without a successor (dead ends): add the lane from its start.
            self._add_segment(_along_lane(waypoint, self.resolution, forward=False)[-1])
        candidates = self._by_lane.get(lane) if lane is not None else None
        target = np.array([location.x, location.y, location.z])
        best: tuple[float, int, int] | None = None
        for index in candidates or range(len(self._segments)):
            distances = np.linalg.norm(self._segments[index].points[:, :2] - target[:2], axis=1)
            k = int(np.argmin(distances))
            if best is None or distances[k] < best[0]:
                best = (float(distances[k]), index, k)
        assert best is not None
        return best[1], best[2]

    def _shortest_path(self, source: int, target: int) -> list[int] | None:
        """Segments strictly between `source` and `target`, by total sampled length (Dijkstra)."""
        start_node = self._segments[source].end_key
        goal = self._segments[target].start
        queue: list[tuple[float, tuple[float, float, float], tuple[int, ...]]] = [(0.0, start_node, ())]
        done: set[tuple[float, float, float]] = set()
        while queue:
            cost, node, path = heapq.heappop(queue)
            if node == goal:
                return list(path)
            if node in done:
                continue
            done.add(node)
            for index in self._out_edges.get(node, []):
                segment = self._segments[index]
                if segment.end_key not in done:
                    heapq.heappush(queue, (cost + len(segment.points), segment.end_key, path + (index,)))
        return None

    def trace(self, a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
        """Dense points and junction flags from location a to location b."""
        sa, ka = self._localize(a)
        sb, kb = self._localize(b)
        if sa == sb and ka <= kb:
            segment = self._segments[sa]
            return segment.points[ka:kb + 1], segment.junction[ka:kb + 1]
        middle = self._shortest_path(sa, sb)
        if middle is None:
            raise ValueError(f"no lane path from {a} to {b}")
        pieces = [(self._segments[sa].points[ka:], self._segments[sa].junction[ka:])]
        pieces += [(self._segments[i].points, self._segments[i].junction) for i in middle]
        pieces.append((self._segments[sb].points[:kb + 1], self._segments[sb].junction[:kb + 1]))
        # A segment ends where the next one starts: keep that shared point once, with the next one's flag.
        trimmed = []
        for (points, flags), (following, _) in zip(pieces, pieces[1:] + [(None, None)]):
            if following is not None and len(points) and len(following) and np.linalg.norm(points[-1] - following[0]) < 0.1:
                points, flags = points[:-1], flags[:-1]
            trimmed.append((points, flags))
        return np.concatenate([p for p, _ in trimmed]), np.concatenate([j for _, j in trimmed])

    def junction_flags(self, keypoints: Sequence[tuple[float, float, float]]) -> np.ndarray:
        """Is-junction flag of every waypoint of the dense route, keypoint pair after keypoint pair (as upstream)."""
        carla = _import_carla()
        locations = [carla.Location(float(x), float(y), float(z)) for x, y, z in keypoints]
        flags = [self.trace(a, b)[1] for a, b in zip(locations, locations[1:])]
        return np.concatenate(flags) if flags else np.zeros(0, dtype=bool)


@dataclass
class UpstreamPlannerTracer:
    """CARLA's own GlobalRoutePlanner (from $CARLA_ROOT/PythonAPI/carla), as Bench2Drive's tool uses it."""

    carla_map: Any
    planner_class: Any
    resolution: float = RESOLUTION_M

    def junction_flags(self, keypoints: Sequence[tuple[float, float, float]]) -> np.ndarray:
        carla = _import_carla()
        planner = self.planner_class(self.carla_map, self.resolution)
        locations = [carla.Location(float(x), float(y), float(z)) for x, y, z in keypoints]
        flags = [bool(wp.is_junction) for a, b in zip(locations, locations[1:]) for wp, _ in planner.trace_route(a, b)]
        return np.array(flags, dtype=bool)


def first_junction_count(flags: np.ndarray) -> int | None:
    """1-based position of the first junction waypoint (upstream's `count`), None when there is none."""
    hits = np.flatnonzero(flags)
    return int(hits[0]) + 1 if hits.size else None


def upstream_planner_class(carla_root: str | os.PathLike | None) -> Any | None:
    """CARLA's GlobalRoutePlanner class when $CARLA_ROOT/PythonAPI/carla/agents is there, else None."""
    if carla_root is None:
        return None
    api = Path(carla_root) / "PythonAPI" / "carla"
    if not (api / "agents" / "navigation" / "global_route_planner.py").is_file():
        return None
    if str(api) not in sys.path:
        sys.path.append(str(api))
    try:
        module = importlib.import_module("agents.navigation.global_route_planner")
    except ImportError:  # e.g. networkx missing: fall back to our own tracer
        return None
    return getattr(module, "GlobalRoutePlanner", None)


class JunctionChecker:
    """Callable for compute_abilities: route -> (first junction count, dense route length) or None.

    Maps are loaded once per town from CARLA_ROOT. Raises JunctionUnavailable (Traffic_Signs is then reported
    as not computable) when the carla client or a map is missing.
    """

    def __init__(self, carla_root: str | os.PathLike, use_upstream_planner: bool = True) -> None:
        self.carla_root = Path(carla_root)
        self._planner_class = upstream_planner_class(carla_root) if use_upstream_planner else None
        self._tracers: dict[str, Any] = {}
        self.planner_note = (
            "Traffic_Signs junction check: CARLA's GlobalRoutePlanner from CARLA_ROOT/PythonAPI"
            if self._planner_class is not None
            else "Traffic_Signs junction check: own lane-graph tracer (CARLA's agents package not found under "
                 "CARLA_ROOT/PythonAPI/carla); counts may differ from upstream by a few waypoints"
        )

    def _tracer(self, town: str) -> Any:
        if town not in self._tracers:
            xodr = find_xodr(self.carla_root, town)
            carla_map = load_map(town, xodr.read_text(encoding="utf-8"))
            self._tracers[town] = (UpstreamPlannerTracer(carla_map, self._planner_class)
                                   if self._planner_class is not None else LaneGraphTracer(carla_map))
        return self._tracers[town]

    def __call__(self, route: Route) -> tuple[int, int] | None:
        if len(route.keypoints) < 2:
            return None
        try:
            flags = self._tracer(route.town).junction_flags(route.keypoints)
        except ValueError:
            return None
        count = first_junction_count(flags)
        return None if count is None else (count, len(flags))
