"""Parse Bench2Drive route XMLs: route id, town, scenario types, keypoints and keypoint-polyline length."""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from bench2drive_eval.cli import EvalError


@dataclass(frozen=True)
class Route:
    route_id: str
    town: str
    scenario_types: tuple[str, ...]
    keypoints: tuple[tuple[float, float, float], ...]
    # the <route> element as read, for tools that write route files (the runner's job splits)
    element: ET.Element | None = field(default=None, compare=False, repr=False)

    @property
    def scenario_type(self) -> str:
        """The first scenario's type: what Bench2Drive's ability tool classifies the route by."""
        return self.scenario_types[0] if self.scenario_types else ""

    @property
    def length_m(self) -> float:
        """Length of the straight-line polyline through the keypoints (a lower bound of the driven route)."""
        return sum(math.dist(a[:2], b[:2]) for a, b in zip(self.keypoints, self.keypoints[1:]))


class RouteFileError(EvalError):
    """A route XML is missing or malformed; the message names the file and the route."""


def _float(element: ET.Element, name: str, where: str) -> float:
    value = element.get(name)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RouteFileError(f"{where}: position attribute {name}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise RouteFileError(f"{where}: position attribute {name}={value!r} is not a finite number")
    return number


def load_routes(path: str | os.PathLike) -> dict[str, Route]:
    """Routes of a leaderboard route XML, keyed by id, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: route file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise RouteFileError(f"{path}: not valid XML ({error})") from None
    except OSError as error:
        raise RouteFileError(f"{path}: cannot read ({error.strerror or error})") from None
    routes: dict[str, Route] = {}
    for element in root.iter("route"):
        route_id = element.get("id")
        if not route_id:
            raise RouteFileError(f"{path}: a <route> has no id")
        where = f"{path}: route {route_id}"
        if route_id in routes:
            raise RouteFileError(f"{where}: duplicate route id")
        town = element.get("town") or ""
        waypoints = element.find("waypoints")
        positions = waypoints.findall("position") if waypoints is not None else []
        keypoints = tuple(
            (_float(p, "x", where), _float(p, "y", where), _float(p, "z", where)) for p in positions
        )
        scenarios = element.find("scenarios")
        types = tuple(
            s.get("type") or "" for s in (scenarios.findall("scenario") if scenarios is not None else [])
        )
        routes[route_id] = Route(route_id=route_id, town=town, scenario_types=types, keypoints=keypoints, element=element)
    if not routes:
        raise RouteFileError(f"{path}: no <route> elements")
    return routes
