"""Split a route XML into length-balanced job route files inside the run folder (done once per run)."""
from __future__ import annotations

import copy
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from bench2drive_eval.routes import RouteFileError, load_routes


class RouteSelectionError(ValueError):
    """The route file or the --routes-subset selection is unusable."""


@dataclass(frozen=True)
class RouteEntry:
    route_id: str
    town: str
    length_m: float
    element: ET.Element


@dataclass(frozen=True)
class JobSplit:
    index: int
    routes_xml: Path
    route_ids: tuple[str, ...]
    route_lengths: tuple[float, ...]

    @property
    def length_m(self) -> float:
        return sum(self.route_lengths)


def read_route_file(path: str | os.PathLike) -> list[RouteEntry]:
    """All <route> elements of a leaderboard route XML, in file order (parsed by routes.load_routes)."""
    try:
        routes = load_routes(path)
    except RouteFileError as error:
        raise RouteSelectionError(str(error)) from None
    return [RouteEntry(r.route_id, r.town, r.length_m, r.element) for r in routes.values()]


def select_subset(entries: list[RouteEntry], subset: str) -> list[RouteEntry]:
    """Upstream's --routes-subset: ids and 'first-last' groups (inclusive, in file order), comma separated."""
    if not subset.strip():
        return list(entries)
    order = [e.route_id for e in entries]
    chosen: set[str] = set()
    for group in subset.replace(" ", "").split(","):
        if not group:
            continue
        if "-" in group:
            start, _, end = group.partition("-")
            if start not in order or end not in order:
                missing = start if start not in order else end
                raise RouteSelectionError(f"--routes-subset: route id {missing!r} is not in the routes file")
            i, j = order.index(start), order.index(end)
            if j < i:
                raise RouteSelectionError(f"--routes-subset: in {group!r} the end id comes before the start id")
            chosen.update(order[i : j + 1])
        else:
            if group not in order:
                raise RouteSelectionError(f"--routes-subset: route id {group!r} is not in the routes file")
            chosen.add(group)
    return [e for e in entries if e.route_id in chosen]


def balance(lengths: list[float], n_jobs: int) -> list[list[int]]:
    """Longest-first greedy assignment of routes to the least-loaded job; each job keeps file order."""
    if n_jobs < 1:
        raise ValueError("need at least one job")
    loads = [0.0] * n_jobs
    members: list[list[int]] = [[] for _ in range(n_jobs)]
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        job = min(range(n_jobs), key=lambda j: (loads[j], len(members[j]), j))
        loads[job] += lengths[i]
        members[job].append(i)
    return [sorted(m) for m in members if m]


def write_splits(entries: list[RouteEntry], n_jobs: int, split_dir: Path) -> list[JobSplit]:
    """Write split_dir/job_XX.xml files (route elements copied verbatim) and describe them."""
    split_dir.mkdir(parents=True, exist_ok=True)
    groups = balance([e.length_m for e in entries], min(n_jobs, len(entries)))
    splits: list[JobSplit] = []
    for index, members in enumerate(groups):
        root = ET.Element("routes")
        for i in members:
            root.append(copy.deepcopy(entries[i].element))
        path = split_dir / f"job_{index:03d}.xml"
        tmp = path.with_suffix(".xml.tmp")
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
        os.replace(tmp, path)
        splits.append(
            JobSplit(index, path, tuple(entries[i].route_id for i in members), tuple(entries[i].length_m for i in members))
        )
    return splits
