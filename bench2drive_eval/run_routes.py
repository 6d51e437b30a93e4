"""The route set of a `bench2drive-eval run` folder: what `metrics`/`compare` score against without --routes.

Its own module because it reads run_state.json, and run_state imports splitting, which imports routes.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Sequence

from bench2drive_eval.routes import Route, RouteFileError, load_routes
from bench2drive_eval.run_state import RunLayout, load_run_state


def run_folder_routes(run_dir: str | os.PathLike) -> tuple[dict[str, Route], str] | None:
    """The routes a `bench2drive-eval run` folder ran, with where they were read; None for any other path.

    run_state.json lists the route ids of every job; their definitions come from the job route files the
    evaluator ran (splits/, also looked for there when the folder was moved), else from the run's route file.
    """
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
