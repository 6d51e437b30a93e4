"""Parse Bench2Drive route XMLs: route id, town, scenario types, keypoints and keypoint-polyline length."""
from __future__ import annotations

import functools
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

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


def run_folder_routes(run_dir: str | os.PathLike) -> tuple[dict[str, Route], str] | None:
    """The routes a `bench2drive-eval run` folder ran, with where they were read; None for any other path.

    run_state.json lists the route ids of every job; their definitions come from the job route files the
    evaluator ran (splits/, also looked for there when the folder was moved), else from the run's route file.
    """
    from bench2drive_eval.run_state import RunLayout, load_run_state  # run_state -> splitting -> routes

    layout = RunLayout(Path(run_dir))
    if not layout.state_file.is_file():
        return None
    run = load_run_state(layout)
    wanted = [rid for job in run.jobs for rid in job.route_ids]
    if not wanted:
        raise RouteFileError(f"{layout.state_file}: the run lists no route")
    found: dict[str, Route] = {}
    sources: list[str] = []
    for job in run.jobs:
        for candidate in (job.routes_xml, layout.splits / job.routes_xml.name):
            if candidate.is_file():
                found.update({rid: r for rid, r in load_routes(candidate).items() if rid in job.route_ids})
                sources.append(str(candidate))
                break
    missing = [rid for rid in wanted if rid not in found]
    if missing and run.config.routes_file.is_file():
        found.update({rid: r for rid, r in load_routes(run.config.routes_file).items() if rid in missing})
        sources.append(str(run.config.routes_file))
        missing = [rid for rid in wanted if rid not in found]
    if missing:
        raise RouteFileError(
            f"{layout.state_file}: {len(missing)} of the run's {len(wanted)} routes ({', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}) are in none of its route files "
            f"({layout.splits}, {run.config.routes_file}): give --routes"
        )
    where = sources[0] if len(sources) == 1 else f"{len(sources)} route files of the run"
    return {rid: found[rid] for rid in wanted}, f"the {len(wanted)} routes of run {layout.root} (from {where})"


def routes_of_run_folders(paths: Sequence[str | os.PathLike]) -> tuple[dict[str, Route], str] | None:
    """The union of the route sets of the run folders among `paths` and where they came from; None if none is one.

    What to score against when the user gives no route file: a run's own routes, not all 220.
    """
    folders = tuple(str(p) for p in paths if Path(p).is_dir())
    # Keyed on run_state.json's mtime: resampling callers (bootstrap) score the same run many times.
    stamps = tuple(_mtime_ns(Path(p) / "run_state.json") for p in folders)
    found = _run_folder_routes_cached(folders, stamps)
    return None if found is None else (dict(found[0]), found[1])


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


@functools.lru_cache(maxsize=16)
def _run_folder_routes_cached(folders: tuple[str, ...], _stamps: tuple[int, ...]) -> tuple[dict[str, Route], str] | None:
    found = [routes for routes in (run_folder_routes(p) for p in folders) if routes is not None]
    if not found:
        return None
    union: dict[str, Route] = {}
    for routes, _ in found:
        union.update(routes)
    return union, "; ".join(where for _, where in found)
