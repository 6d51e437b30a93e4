"""First junction waypoint on a route's dense 1 m trace, with CARLA's own GlobalRoutePlanner on offline maps.

Bench2Drive's ability tool densifies the route keypoints with CARLA's GlobalRoutePlanner (1 m) and counts
waypoints up to the first one inside a junction; that count sets the Traffic_Signs partial-credit
threshold. Only that planner gives that count: a lookalike tracer moves the threshold (an earlier one here
was off by 0.086 on average over 32 routes, up to 0.80, as measured in issue 11). So the check runs only when
`$CARLA_ROOT/PythonAPI/carla/agents` (shipped with CARLA) is there; otherwise Traffic_Signs is reported as
not computable, with the reason. The map is built offline from the town's OpenDRIVE file, as upstream's
v0.0.4 tool does (`carla.Map(town, xodr_text)`), so no simulator is needed.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench2drive_eval.abilities import JunctionUnavailable, RouteTraceError
from bench2drive_eval.routes import Route

MAPS_SUBDIR = Path("CarlaUE4") / "Content" / "Carla" / "Maps"
PLANNER_SUBDIR = Path("PythonAPI") / "carla"
PLANNER_FILE = Path("agents") / "navigation" / "global_route_planner.py"
RESOLUTION_M = 1.0  # upstream: GlobalRoutePlanner(carla_map, 1.0)


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


def upstream_planner_class(carla_root: str | os.PathLike) -> Any:
    """CARLA's GlobalRoutePlanner class from $CARLA_ROOT/PythonAPI/carla; JunctionUnavailable saying why not."""
    api = Path(carla_root) / PLANNER_SUBDIR
    if not (api / PLANNER_FILE).is_file():
        raise JunctionUnavailable(
            f"needs CARLA's GlobalRoutePlanner ({api / PLANNER_FILE} not found): only CARLA's own planner "
            "gives upstream's junction count, so no approximation is used"
        )
    if str(api) not in sys.path:
        sys.path.append(str(api))
    try:
        module = importlib.import_module("agents.navigation.global_route_planner")
    except ImportError as error:  # e.g. networkx, which CARLA's planner needs, is not installed
        raise JunctionUnavailable(f"CARLA's GlobalRoutePlanner in {api} cannot be imported ({error})") from None
    planner = getattr(module, "GlobalRoutePlanner", None)
    if planner is None:
        raise JunctionUnavailable(f"{api / PLANNER_FILE} defines no GlobalRoutePlanner")
    return planner


@dataclass
class PlannerTracer:
    """CARLA's GlobalRoutePlanner on one town's map, used as Bench2Drive's get_waypoint_route uses it."""

    carla_map: Any
    planner_class: Any
    resolution: float = RESOLUTION_M
    _planner: Any = field(default=None, init=False, repr=False)

    def junction_flags(self, keypoints: Sequence[tuple[float, float, float]]) -> np.ndarray:
        """is_junction of every waypoint of trace_route(k_i, k_i+1), concatenated over keypoint pairs."""
        carla = _import_carla()
        if self._planner is None:
            self._planner = self.planner_class(self.carla_map, self.resolution)
        locations = [carla.Location(float(x), float(y), float(z)) for x, y, z in keypoints]
        flags = [bool(wp.is_junction) for a, b in zip(locations, locations[1:])
                 for wp, _ in self._planner.trace_route(a, b)]
        return np.array(flags, dtype=bool)


def first_junction_count(flags: np.ndarray) -> int | None:
    """1-based position of the first junction waypoint (upstream's `count`), None when there is none."""
    hits = np.flatnonzero(flags)
    return int(hits[0]) + 1 if hits.size else None


class JunctionChecker:
    """Callable for compute_abilities: route -> (first junction count, dense route length) or None.

    Maps are loaded once per town from CARLA_ROOT. Raises JunctionUnavailable (Traffic_Signs is then reported
    as not computable) when the carla client, CARLA's planner or a map is missing, and RouteTraceError when
    the planner fails on one route.
    """

    def __init__(self, carla_root: str | os.PathLike) -> None:
        self.carla_root = Path(carla_root)
        self._planner_class: Any = None
        self._tracers: dict[str, PlannerTracer] = {}
        self.planner_note = ""

    def _tracer(self, town: str) -> PlannerTracer:
        if self._planner_class is None:
            self._planner_class = upstream_planner_class(self.carla_root)
            self.planner_note = (f"Traffic_Signs junction check: CARLA's GlobalRoutePlanner from "
                                 f"{self.carla_root / PLANNER_SUBDIR}")
        if town not in self._tracers:
            xodr = find_xodr(self.carla_root, town)
            self._tracers[town] = PlannerTracer(load_map(town, xodr.read_text(encoding="utf-8")), self._planner_class)
        return self._tracers[town]

    def __call__(self, route: Route) -> tuple[int, int] | None:
        tracer = self._tracer(route.town)
        try:
            flags = tracer.junction_flags(route.keypoints)
        except Exception as error:  # CARLA's planner (networkx) raises its own types, e.g. NetworkXNoPath
            raise RouteTraceError(f"CARLA's GlobalRoutePlanner failed: {type(error).__name__}: {error}") from None
        count = first_junction_count(flags)
        return None if count is None else (count, len(flags))
