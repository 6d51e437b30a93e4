"""Bench2Drive benchmark metrics from merged results: driving score, success rate, efficiency, comfort, abilities, tables."""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from bench2drive_eval.abilities import AbilityResults, JunctionLookup, compute_abilities, canonical_scenario_type
from bench2drive_eval.cli import EvalError
from bench2drive_eval.results import MergedResults, RouteRecord
from bench2drive_eval.routes import Route, load_routes
from bench2drive_eval.run_routes import routes_of_run_folders

BENCHMARK_ROUTE_COUNT = 220  # upstream divides by 220 whatever the number of records
EFFICIENCY_PATTERN = re.compile(r"\b\d+\.?\d*%")
EFFICIENCY_MAX_PERCENT = 1000.0  # upstream skips larger values
CRASH_STATUS_MARKERS = ("Simulation crashed", "Agent crashed", "couldn't be set up", "sensors were invalid")
# Leaderboard infraction keys, with the labels of its global record.
INFRACTION_LABELS: dict[str, str] = {
    "collisions_pedestrian": "Collisions with pedestrians",
    "collisions_vehicle": "Collisions with vehicles",
    "collisions_layout": "Collisions with layout",
    "red_light": "Red lights infractions",
    "stop_infraction": "Stop sign infractions",
    "outside_route_lanes": "Off-road infractions",
    "route_dev": "Route deviations",
    "route_timeout": "Route timeouts",
    "vehicle_blocked": "Agent blocked",
    "yield_emergency_vehicle_infractions": "Yield emergency vehicles infractions",
    "scenario_timeouts": "Scenario timeouts",
    "min_speed_infractions": "Min speed infractions",
}


@dataclass(frozen=True)
class GroupRow:
    """Scores of one scenario type or town, over its evaluated routes."""

    name: str
    routes: int  # routes of this group in the route file (or evaluated, without one)
    evaluated: int
    successes: int
    driving_score: float  # mean score_composed over evaluated routes, 0-100
    success_rate: float  # over evaluated routes, 0-100 (as upstream's per-scenario table)


@dataclass(frozen=True)
class RouteScore:
    route_id: str
    scenario_type: str
    town: str
    status: str
    success: bool
    driving_score: float
    route_completion: float
    penalty: float
    infractions: dict[str, int]
    efficiency: float | None
    smoothness: float | None


@dataclass(frozen=True)
class Metrics:
    benchmark: str
    total_routes: int  # denominator of driving score and success rate
    evaluated_routes: int
    driving_score: float  # 0-100
    success_rate: float  # 0-100
    route_completion: float  # mean score_route over total_routes, 0-100
    infraction_penalty: float  # sum of score_penalty / total_routes, as the leaderboard (missing route = 0)
    efficiency: float | None  # mean ego/traffic speed %, None when no min-speed messages
    efficiency_routes: int
    smoothness: float | None  # 0-100, None without --save-path
    smoothness_routes: int
    abilities: dict[str, float | None]  # 0-100
    ability_counts: dict[str, tuple[int, int]]  # successes, denominator
    ability_mean: float | None  # 0-100, None if an ability is not computable
    ability_mean_of_computable: float | None
    infractions_per_km: dict[str, float]
    km_driven: float
    per_scenario: tuple[GroupRow, ...]
    per_town: tuple[GroupRow, ...]
    per_route: tuple[RouteScore, ...]
    missing_routes: tuple[str, ...]  # in the route file, no record
    crashed_routes: tuple[str, ...]  # final record is a crash / unfinished attempt
    sources: tuple[str, ...]
    errors: tuple[str, ...]
    notes: tuple[str, ...]
    infraction_penalty_evaluated: float | None = None  # mean score_penalty over evaluated routes only

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ability_counts"] = {k: list(v) for k, v in self.ability_counts.items()}
        return data


def route_efficiency(record: RouteRecord) -> tuple[float | None, list[str]]:
    """Mean of the 'X%' values in a route's min-speed messages (X > 1000 skipped), with problems found."""
    values: list[float] = []
    problems: list[str] = []
    for message in record.infractions.get("min_speed_infractions", ()):
        match = EFFICIENCY_PATTERN.search(message)
        if match is None:
            problems.append(f"route {record.route_id}: min-speed message without a percentage: {message!r}")
            continue
        value = float(match.group().rstrip("%"))
        if value > EFFICIENCY_MAX_PERCENT:
            continue
        values.append(value)
    if not values:
        if record.infractions.get("min_speed_infractions"):
            problems.append(f"route {record.route_id}: no usable min-speed percentage; left out of efficiency")
        return None, problems
    return sum(values) / len(values), problems


def is_crashed(record: RouteRecord) -> bool:
    return not record.is_complete or any(marker in record.status for marker in CRASH_STATUS_MARKERS)


def offroad_km(record: RouteRecord) -> float | None:
    """Off-route distance in km, from the 9th word of the first off-road message as the leaderboard reads it
    ("Agent went outside its route lanes for about X meters ..."); 0 without one, None when unreadable."""
    events = record.infractions.get("outside_route_lanes", ())
    if not events:
        return 0.0
    try:
        metres = float(events[0].split(" ")[8])
    except (IndexError, ValueError):
        return None
    return metres / 1000.0 if math.isfinite(metres) and metres >= 0 else None


def infraction_value(record: RouteRecord, key: str) -> float:
    if key == "outside_route_lanes":
        # The leaderboard sums the off-route distance (km) instead of counting events.
        return offroad_km(record) or 0.0
    return float(len(record.infractions.get(key, ())))


def infractions_per_km(records: Sequence[RouteRecord]) -> tuple[dict[str, float], float]:
    """As the leaderboard's global record: events per km driven (km = length x completion); off-road in km."""
    km = sum(r.route_length / 1000.0 * r.score_route / 100.0 for r in records)
    km = max(km, 0.001)
    totals = {key: sum(infraction_value(r, key) for r in records) for key in INFRACTION_LABELS}
    return {k: (v if k == "outside_route_lanes" else v / km) for k, v in totals.items()}, km


def _group_rows(records: Sequence[RouteRecord], keys: Mapping[str, str], counts: Mapping[str, int]) -> tuple[GroupRow, ...]:
    groups: dict[str, list[RouteRecord]] = {}
    for record in records:
        groups.setdefault(keys[record.route_key], []).append(record)
    rows = []
    for name in sorted(set(groups) | set(counts)):
        members = groups.get(name, [])
        n = len(members)
        successes = sum(r.success for r in members)
        rows.append(GroupRow(
            name=name, routes=counts.get(name, n), evaluated=n, successes=successes,
            driving_score=sum(r.score_composed for r in members) / n if n else 0.0,
            success_rate=100.0 * successes / n if n else 0.0,
        ))
    return tuple(rows)


def ability_records(records: Sequence[RouteRecord]) -> dict[str, RouteRecord]:
    """Per route id, the record Bench2Drive's ability tool reads.

    Its get_route_result takes the first record of the merged file whose id matches, and merge_route_json
    sorts that file by the route_id string, descending: the largest 'RouteScenario_<id>_rep<n>' string wins
    (the highest repetition; compared as text, so rep9 comes before rep10).
    """
    chosen: dict[str, RouteRecord] = {}
    for record in records:
        current = chosen.get(record.route_id)
        if current is None or record.route_key > current.route_key:
            chosen[record.route_id] = record
    return chosen


def _routes_from_records(records: Mapping[str, RouteRecord]) -> list[Route]:
    return [Route(r.route_id, r.town, (r.scenario_type,), ()) for r in records.values()]


def compute_metrics(
    merged: MergedResults,
    routes: Mapping[str, Route] | str | os.PathLike | None = None,
    benchmark: str = "v0.0.3",
    carla_root: str | os.PathLike | None = None,
    save_path: str | os.PathLike | None = None,
    junction_lookup: JunctionLookup | None = None,
    route_set_source: str = "",
) -> Metrics:
    """Score merged results like Bench2Drive's tools (merge_route_json, ability_benchmark, efficiency_smoothness).

    `routes` (a route XML path or parsed routes) fixes the route set: routes without a record count 0 and
    are listed as missing; records of other routes are left out (and noted). Without it, results read from
    `bench2drive-eval run` folders are scored on the routes those runs ran, anything else on 220 as upstream.
    `carla_root` enables the Traffic_Signs junction check; `save_path` the comfort metric.
    `route_set_source` says in the notes where `routes` came from when it is not a user's --routes.
    """
    if benchmark not in ("v0.0.3", "v0.0.4"):
        raise ValueError(f"--benchmark must be v0.0.3 or v0.0.4, got {benchmark!r}")
    notes: list[str] = list(merged.notes)
    errors: list[str] = list(merged.errors)
    route_map = load_routes(routes) if isinstance(routes, (str, os.PathLike)) else routes
    if route_map is None and merged.run_folders:
        route_map, route_set_source = routes_of_run_folders(merged.run_folders) or (None, "")
    records = list(merged.records)
    if route_set_source:
        notes.append(f"route set: {route_set_source}")
    if route_map is not None:
        outside = [r for r in records if r.route_id not in route_map]
        if outside:
            if len(outside) * 2 > len(records):
                notes.append("WARNING: most records are for routes not in the route file: wrong --routes?")
            notes.append(f"{len(outside)} record(s) for routes not in the route file left out: "
                         + ", ".join(r.route_key for r in outside[:20]) + (" ..." if len(outside) > 20 else ""))
        records = [r for r in records if r.route_id in route_map]
        total = len(route_map)
        route_list = list(route_map.values())
    else:
        total = max(BENCHMARK_ROUTE_COUNT, len(records))
        if len(records) > BENCHMARK_ROUTE_COUNT:
            notes.append(f"{len(records)} routes evaluated: dividing by {len(records)} instead of upstream's 220")
        route_list = _routes_from_records(ability_records(records))
        notes.append("no route file: scenario types and towns taken from the records; "
                     "missing routes cannot be listed (give --routes)")
    if total == 0:
        raise EvalError("the route set is empty: there is nothing to score")
    if len(records) < total:
        notes.append(f"{total - len(records)} of {total} routes have no result: they count 0 in DS and SR")

    by_route = ability_records(records)
    if {r.repetition for r in records} - {0}:
        notes.append("several repetitions present: DS, SR, route completion and penalty sum every record over "
                     f"the {total} routes (as upstream's merge tool); abilities use per route the record upstream's "
                     "merged file lists first (route_id sorted descending as text: the highest repetition)")

    driving_score = sum(r.score_composed for r in records) / total
    success_rate = 100.0 * sum(r.success for r in records) / total
    route_completion = sum(r.score_route for r in records) / total
    # The leaderboard's global record divides each mean by its total route count: a route without a
    # record adds 0 to the penalty too.
    penalty = sum(r.score_penalty for r in records) / total
    penalty_evaluated = sum(r.score_penalty for r in records) / len(records) if records else None

    efficiencies: dict[str, float] = {}
    for record in records:
        value, problems = route_efficiency(record)
        notes.extend(problems)
        if value is not None:
            efficiencies[record.route_key] = value
    efficiency = sum(efficiencies.values()) / len(efficiencies) if efficiencies else None

    smoothness_by_save: dict[str, float] = {}
    smoothness: float | None = None
    if save_path is not None:
        from bench2drive_eval.comfort import compute_comfort

        comfort = compute_comfort(save_path, [r.save_name for r in records])
        smoothness_by_save = comfort.per_route
        if comfort.problems:
            notes.append(f"comfort: {len(comfort.problems)} route(s) without a usable metric_info.json left out "
                         f"(upstream stops at the first): " + "; ".join(comfort.problems[:5])
                         + (" ..." if len(comfort.problems) > 5 else ""))
        smoothness = None if comfort.smoothness is None else 100.0 * comfort.smoothness

    lookup = junction_lookup
    if lookup is None and carla_root is not None:
        from bench2drive_eval.junctions import JunctionChecker

        lookup = JunctionChecker(carla_root)
    ability_results: AbilityResults = compute_abilities(route_list, by_route, benchmark, lookup)
    notes.extend(ability_results.notes)
    for score in ability_results.scores:
        if score.note:
            notes.append(f"ability {score.name}: {score.note}")
    planner_note = getattr(lookup, "planner_note", None)
    if planner_note:
        notes.append(planner_note)

    unreadable = [r.route_key for r in records if offroad_km(r) is None]
    if unreadable:
        notes.append("off-road distance unreadable in the first outside_route_lanes message (upstream stops "
                     f"there); counted as 0 km for: {', '.join(unreadable)}")
    per_km, km = infractions_per_km(records)
    scenario_of = {r.route_key: canonical_scenario_type(route_map[r.route_id].scenario_type if route_map else r.scenario_type)
                   for r in records}
    town_of = {r.route_key: (route_map[r.route_id].town if route_map else r.town) for r in records}
    scenario_counts: dict[str, int] = {}
    town_counts: dict[str, int] = {}
    if route_map is not None:
        for route in route_map.values():
            key = canonical_scenario_type(route.scenario_type)
            scenario_counts[key] = scenario_counts.get(key, 0) + 1
            town_counts[route.town] = town_counts.get(route.town, 0) + 1

    per_route = tuple(
        RouteScore(
            route_id=r.route_id if r.repetition == 0 else r.route_key,
            scenario_type=scenario_of[r.route_key], town=town_of[r.route_key], status=r.status,
            success=r.success, driving_score=r.score_composed, route_completion=r.score_route,
            penalty=r.score_penalty, infractions={k: len(v) for k, v in r.infractions.items() if v},
            efficiency=efficiencies.get(r.route_key),
            smoothness=None if r.save_name not in smoothness_by_save else 100.0 * smoothness_by_save[r.save_name],
        )
        for r in records
    )
    missing = tuple(rid for rid in (route_map or {}) if rid not in by_route)
    return Metrics(
        benchmark=benchmark,
        total_routes=total,
        evaluated_routes=len(records),
        driving_score=driving_score,
        success_rate=success_rate,
        route_completion=route_completion,
        infraction_penalty=penalty,
        efficiency=efficiency,
        efficiency_routes=len(efficiencies),
        smoothness=smoothness,
        smoothness_routes=len(smoothness_by_save),
        abilities={s.name: None if s.rate is None else 100.0 * s.rate for s in ability_results.scores},
        ability_counts={s.name: (s.successes, s.total) for s in ability_results.scores},
        ability_mean=None if ability_results.mean is None else 100.0 * ability_results.mean,
        ability_mean_of_computable=(None if ability_results.mean_of_computable is None
                                    else 100.0 * ability_results.mean_of_computable),
        infractions_per_km=per_km,
        km_driven=km,
        per_scenario=_group_rows(records, scenario_of, scenario_counts),
        per_town=_group_rows(records, town_of, town_counts),
        per_route=per_route,
        missing_routes=missing,
        crashed_routes=tuple(r.route_id for r in records if is_crashed(r)),
        sources=merged.sources,
        errors=tuple(errors),
        notes=tuple(notes),
        infraction_penalty_evaluated=penalty_evaluated,
    )


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(row[i])) for row in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _group_table(rows: Sequence[GroupRow]) -> str:
    return format_table(
        ["name", "routes", "evaluated", "success", "DS", "SR %"],
        [[r.name, r.routes, r.evaluated, r.successes, f"{r.driving_score:.2f}", f"{r.success_rate:.2f}"] for r in rows],
    )


def format_metrics(metrics: Metrics) -> str:
    """Human-readable summary: headline numbers, abilities, tables, infractions, missing/crashed routes, notes."""
    m = metrics
    lines = [
        f"Bench2Drive {m.benchmark}: {m.evaluated_routes} of {m.total_routes} routes evaluated",
        f"Driving Score        {m.driving_score:.2f}",
        f"Success Rate (%)     {m.success_rate:.2f}",
        f"Route completion     {m.route_completion:.2f}",
        f"Infraction penalty   {m.infraction_penalty:.4f}  (sum over the {m.total_routes} routes, as the leaderboard; "
        f"mean over the {m.evaluated_routes} evaluated: {_fmt(m.infraction_penalty_evaluated, 4)})",
        f"Efficiency           {_fmt(m.efficiency)}  ({m.efficiency_routes} routes with min-speed checks)",
        f"Comfort/Smoothness   {_fmt(m.smoothness)}"
        + ("  (needs --save-path)" if m.smoothness is None else f"  ({m.smoothness_routes} routes)"),
        "",
        "Abilities (success rate %):",
    ]
    for name, rate in m.abilities.items():
        successes, total = m.ability_counts[name]
        lines.append(f"  {name:<16} {_fmt(rate):>7}  ({successes}/{total})" if rate is not None
                     else f"  {name:<16} {'n/a':>7}  (not computable)")
    lines.append(f"  {'Mean':<16} {_fmt(m.ability_mean):>7}"
                 + ("" if m.ability_mean is not None or m.ability_mean_of_computable is None
                    else f"  (mean of the computable ones: {m.ability_mean_of_computable:.2f})"))
    lines += ["", "Per scenario type:", _group_table(m.per_scenario), "", "Per town:", _group_table(m.per_town), "",
              f"Infractions per km ({m.km_driven:.2f} km driven; off-road in km):"]
    lines += [f"  {INFRACTION_LABELS[k]:<38} {v:.3f}" for k, v in m.infractions_per_km.items()]
    lines.append("")
    lines.append(f"Missing routes ({len(m.missing_routes)}): " + (", ".join(m.missing_routes) or "none"))
    lines.append(f"Crashed routes ({len(m.crashed_routes)}): " + (", ".join(m.crashed_routes) or "none"))
    if m.errors:
        lines += ["", "Input problems:"] + [f"  - {e}" for e in m.errors]
    if m.notes:
        lines += ["", "Notes (what was done):"] + [f"  - {n}" for n in m.notes]
    return "\n".join(lines)
