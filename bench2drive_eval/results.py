"""Load Bench2Drive result JSONs (split checkpoints or merged files), validate them and merge by route id."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from bench2drive_eval.cli import EvalError
from bench2drive_eval.jsonio import JSONFileError, read_json

ROUTE_ID_PATTERN = re.compile(r"^RouteScenario_(?P<id>[^_]+)_rep(?P<rep>\d+)$")
SCENARIO_SUFFIX = re.compile(r"_\d+$")

# The leaderboard's resume re-runs a route whose record has exactly one of these statuses, so such a
# record is an unfinished attempt: a later finished attempt of the same route replaces it.
INCOMPLETE_STATUSES = frozenset({"Failed", "Failed - Simulation crashed", "Failed - Agent crashed", "Started"})
SUCCESS_STATUSES = frozenset({"Completed", "Perfect"})
# Infraction lists that do not make a route fail the success criterion.
NON_FAILING_INFRACTIONS = frozenset({"min_speed_infractions"})
# Files in a run folder that are never result files.
SKIPPED_FILE_NAMES = frozenset({"metric_info.json"})
SKIPPED_FILE_SUFFIXES = ("_ability.json", ".metrics.json")
# Layout of a `bench2drive-eval run` folder (see bench2drive_eval/run_state.py).
RUN_STATE_FILE = "run_state.json"
RUN_RESULTS_DIR = "results"


@dataclass(frozen=True)
class RouteRecord:
    """One route's result as written by the leaderboard's statistics manager."""

    route_key: str  # "RouteScenario_<id>_rep<r>", the de-duplication key
    route_id: str  # the <id> part, as in the route XML
    repetition: int
    scenario_name: str
    town: str
    status: str
    infractions: Mapping[str, tuple[str, ...]]
    score_route: float
    score_penalty: float
    score_composed: float
    route_length: float
    duration_game: float
    duration_system: float
    save_name: str
    source: str  # file the record came from
    position: int  # index of the record in that file
    weather_id: str = ""

    @property
    def scenario_type(self) -> str:
        """Scenario type from the record's scenario name ('ParkingCutIn_1' -> 'ParkingCutIn')."""
        return SCENARIO_SUFFIX.sub("", self.scenario_name)

    @property
    def is_complete(self) -> bool:
        return self.status not in INCOMPLETE_STATUSES

    @property
    def failing_infractions(self) -> dict[str, int]:
        """Non-empty infraction lists that make the route fail the success criterion."""
        return {k: len(v) for k, v in self.infractions.items() if v and k not in NON_FAILING_INFRACTIONS}

    @property
    def success(self) -> bool:
        """Bench2Drive's success: Completed/Perfect and no infraction list except min-speed non-empty."""
        return self.status in SUCCESS_STATUSES and not self.failing_infractions


@dataclass(frozen=True)
class MergedResults:
    """All routes of a run, one record per route (the last complete attempt), with what was done."""

    records: tuple[RouteRecord, ...]
    sources: tuple[str, ...]  # files that were read successfully
    errors: tuple[str, ...] = ()  # unreadable files / invalid records, each naming the file
    notes: tuple[str, ...] = ()  # what merging did (duplicates replaced, files skipped)
    by_key: Mapping[str, RouteRecord] = field(default_factory=dict, repr=False, compare=False)
    run_folders: tuple[str, ...] = ()  # `bench2drive-eval run` folders read: they know their own route set

    def get(self, route_id: str, repetition: int = 0) -> RouteRecord | None:
        return self.by_key.get(route_key(route_id, repetition))


def route_key(route_id: str, repetition: int = 0) -> str:
    return f"RouteScenario_{route_id}_rep{repetition}"


class NotAResultFile(JSONFileError):
    """Valid JSON, but without `_checkpoint.records`: some other file of a run folder."""


class RecordError(ValueError):
    """A record in a result file lacks a field or has a wrong type; the message names file and record."""


# What the leaderboard's statistics manager can write: route completion in %, the penalty a product of
# factors in [0, 1], the composed score max(route x penalty, 0). Anything else is a corrupt record.
SCORE_RANGES: dict[str, tuple[float, float]] = {
    "score_route": (0.0, 100.0),
    "score_penalty": (0.0, 1.0),
    "score_composed": (0.0, 100.0),
}
# score_composed is written rounded to 6 digits from a score_route rounded by the leaderboard; the
# published files agree with score_route x score_penalty to 5e-5.
COMPOSED_TOLERANCE = 0.01


def _number(value: Any, where: str, low: float | None = None, high: float | None = None) -> float:
    """A finite number (within [low, high] where given); RecordError naming the field and value otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError(f"{where} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer with hundreds of digits
        number = math.inf
    if not math.isfinite(number):
        raise RecordError(f"{where} is {number!r}: it must be a finite number")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise RecordError(f"{where} is {value!r}, outside {bounds}")
    return number


def _scores(scores: dict, where: str) -> dict[str, float]:
    values = {name: _number(scores.get(name), f"{where}: scores.{name}", low, high)
              for name, (low, high) in SCORE_RANGES.items()}
    expected = values["score_route"] * values["score_penalty"]
    if abs(values["score_composed"] - expected) > COMPOSED_TOLERANCE:
        raise RecordError(f"{where}: scores.score_composed is {values['score_composed']!r}, but score_route x "
                          f"score_penalty is {expected:.6g}: the record is inconsistent")
    return values


def parse_record(raw: Any, source: str, position: int) -> RouteRecord:
    """Validate one raw record dict; raise RecordError naming the file, record index and field."""
    where = f"{source}: record {position}"
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: expected an object, got {type(raw).__name__}")
    key = raw.get("route_id")
    match = ROUTE_ID_PATTERN.match(key) if isinstance(key, str) else None
    if match is None:
        raise RecordError(f"{where}: route_id {key!r} is not of the form RouteScenario_<id>_rep<n>")
    where = f"{source}: record {position} ({key})"
    status = raw.get("status")
    if not isinstance(status, str):
        raise RecordError(f"{where}: status must be a string, got {status!r}")
    infractions_raw = raw.get("infractions")
    if not isinstance(infractions_raw, dict):
        raise RecordError(f"{where}: infractions must be an object, got {infractions_raw!r}")
    infractions: dict[str, tuple[str, ...]] = {}
    for name, events in infractions_raw.items():
        if not isinstance(events, list):
            raise RecordError(f"{where}: infractions.{name} must be a list, got {events!r}")
        infractions[name] = tuple(str(event) for event in events)
    scores = raw.get("scores")
    if not isinstance(scores, dict):
        raise RecordError(f"{where}: scores must be an object, got {scores!r}")
    meta = raw.get("meta") if isinstance(raw.get("meta"), dict) else {}
    values = _scores(scores, where)
    return RouteRecord(
        route_key=key,
        route_id=match.group("id"),
        repetition=int(match.group("rep")),
        scenario_name=str(raw.get("scenario_name", "")),
        town=str(raw.get("town_name", "")),
        status=status,
        infractions=infractions,
        score_route=values["score_route"],
        score_penalty=values["score_penalty"],
        score_composed=values["score_composed"],
        route_length=_number(meta.get("route_length", 0.0), f"{where}: meta.route_length", low=0.0),
        duration_game=_number(meta.get("duration_game", 0.0), f"{where}: meta.duration_game"),
        duration_system=_number(meta.get("duration_system", 0.0), f"{where}: meta.duration_system"),
        save_name=str(raw.get("save_name", "")),
        source=source,
        position=position,
        weather_id=str(raw.get("weather_id", "")),
    )


def load_result_file(path: str | os.PathLike) -> tuple[list[RouteRecord], list[str]]:
    """Read one result JSON; return its valid records and one error line per invalid record.

    Raises JSONFileError (naming the file) when the file is unreadable or not a result file.
    """
    path = Path(path)
    data = read_json(path)
    checkpoint = data.get("_checkpoint") if isinstance(data, dict) else None
    records = checkpoint.get("records") if isinstance(checkpoint, dict) else None
    if not isinstance(records, list):
        raise NotAResultFile(f"{path}: not a Bench2Drive result file (no _checkpoint.records list)")
    valid: list[RouteRecord] = []
    errors: list[str] = []
    for position, raw in enumerate(records):
        try:
            valid.append(parse_record(raw, str(path), position))
        except RecordError as error:
            errors.append(f"{error}; record skipped")
    return valid, errors


def expand_paths(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path], list[str], list[Path]]:
    """Turn run folders and files into result files to read: (named files, files found in folders, notes,
    `bench2drive-eval run` folders among them)."""
    files: list[Path] = []
    scanned: list[Path] = []
    notes: list[str] = []
    run_folders: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir() and (path / "seeds.json").is_file():
            # A `run --seeds` folder: merging its sub-runs would mix the seeds route by route (see seeds.py).
            raise EvalError(f"{path}: a multi-seed run folder; score one {path}/seed_<n> at a time, or compare "
                            "it as a group (bench2drive-eval compare --a/--b)")
        if path.is_dir() and (path / RUN_STATE_FILE).is_file() and (path / RUN_RESULTS_DIR).is_dir():
            # A `bench2drive-eval run` folder: its split results live in results/; the rest is bookkeeping.
            notes.append(f"{path}: run folder, reading its {RUN_RESULTS_DIR}/ only")
            run_folders.append(path)
            path = path / RUN_RESULTS_DIR
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*.json")
                if p.name not in SKIPPED_FILE_NAMES and not p.name.endswith(SKIPPED_FILE_SUFFIXES)
                and not p.name.startswith(".")
            )
            merged = [p for p in found if p.name == "merged.json"]
            if merged and len(found) > len(merged):
                # Upstream's merge output beside the split files it was made from: reading both would only
                # add duplicates.
                found = [p for p in found if p.name != "merged.json"]
                notes.append(f"{path}: skipped merged.json, reading the {len(found)} split result files instead")
            if not found:
                raise FileNotFoundError(f"{path}: no result JSON files in this folder")
            scanned.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files, scanned, notes, run_folders


def _attempt_order(record: RouteRecord, file_rank: Mapping[str, int]) -> tuple[int, int]:
    return file_rank[record.source], record.position


def merge_records(
    records: Sequence[RouteRecord], file_rank: Mapping[str, int]
) -> tuple[dict[str, RouteRecord], list[str]]:
    """One record per route: the last complete attempt, else the last attempt. Returns notes per duplicate."""
    attempts: dict[str, list[RouteRecord]] = {}
    for record in sorted(records, key=lambda r: _attempt_order(r, file_rank)):
        attempts.setdefault(record.route_key, []).append(record)
    chosen: dict[str, RouteRecord] = {}
    notes: list[str] = []
    for key, tries in attempts.items():
        complete = [r for r in tries if r.is_complete]
        winner = complete[-1] if complete else tries[-1]
        chosen[key] = winner
        if len(tries) > 1:
            dropped = ", ".join(f"'{r.status}' ({Path(r.source).name}#{r.position})" for r in tries if r is not winner)
            notes.append(
                f"{key}: {len(tries)} attempts; kept '{winner.status}' from "
                f"{Path(winner.source).name}#{winner.position}, dropped {dropped}"
            )
    return chosen, notes


def load_run(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> MergedResults:
    """Load result JSONs from files and/or run folders and merge them by route id.

    Unreadable files and invalid records are reported in `errors` and the rest is still merged; a
    FileNotFoundError is raised only when a given path does not exist or nothing at all could be read.
    Files are ordered by modification time (then name), so a later attempt of a route wins.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    named, scanned, notes, run_folders = expand_paths(paths)
    errors: list[str] = []
    records: list[RouteRecord] = []
    sources: list[str] = []
    for path in named + scanned:
        try:
            valid, record_errors = load_result_file(path)
        except NotAResultFile as error:
            if path in named:
                errors.append(str(error))
            else:
                notes.append(f"skipped {path}: valid JSON but not a result file")
            continue
        except JSONFileError as error:
            errors.append(str(error))
            continue
        sources.append(str(path))
        records.extend(valid)
        errors.extend(record_errors)
    if not sources:
        raise FileNotFoundError("no readable result file: " + "; ".join(errors))
    ordered = sorted(sources, key=lambda s: (os.stat(s).st_mtime_ns, s))
    rank = {source: i for i, source in enumerate(ordered)}
    chosen, merge_notes = merge_records(records, rank)
    notes.extend(merge_notes)
    merged = tuple(sorted(chosen.values(), key=lambda r: (_numeric_id(r.route_id), r.repetition)))
    return MergedResults(
        records=merged,
        sources=tuple(sources),
        errors=tuple(errors),
        notes=tuple(notes),
        by_key={r.route_key: r for r in merged},
        run_folders=tuple(str(p) for p in run_folders),
    )


def _numeric_id(route_id: str) -> tuple[int, str]:
    return (int(route_id), route_id) if route_id.isdigit() else (1 << 62, route_id)


def record_to_json(record: RouteRecord) -> dict[str, Any]:
    """The record in the leaderboard's format (as written by upstream's merge tool, without `index`)."""
    return {
        "route_id": record.route_key,
        "scenario_name": record.scenario_name,
        "weather_id": record.weather_id,
        "save_name": record.save_name,
        "status": record.status,
        "num_infractions": sum(len(v) for v in record.infractions.values()),
        "infractions": {k: list(v) for k, v in record.infractions.items()},
        "scores": {
            "score_route": record.score_route,
            "score_penalty": record.score_penalty,
            "score_composed": record.score_composed,
        },
        "meta": {
            "route_length": record.route_length,
            "duration_game": record.duration_game,
            "duration_system": record.duration_system,
        },
        "town_name": record.town,
    }
