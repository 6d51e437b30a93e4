"""Bench2Drive's five ability success rates (v0.0.3 and v0.0.4 rules), including the Traffic_Signs junction check."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from tqdm import tqdm

from bench2drive_eval.results import RouteRecord
from bench2drive_eval.routes import Route

# Scenario types per ability, as in Bench2Drive's tools/ability_benchmark.py (order as there; upstream's
# Traffic_Signs list repeats some names, which does not matter for membership).
ABILITIES: dict[str, frozenset[str]] = {
    "Overtaking": frozenset({
        "Accident", "AccidentTwoWays", "ConstructionObstacle", "ConstructionObstacleTwoWays",
        "HazardAtSideLaneTwoWays", "HazardAtSideLane", "ParkedObstacleTwoWays", "ParkedObstacle",
        "VehicleOpensDoorTwoWays",
    }),
    "Merging": frozenset({
        "CrossingBicycleFlow", "EnterActorFlow", "HighwayExit", "InterurbanActorFlow", "HighwayCutIn",
        "InterurbanAdvancedActorFlow", "MergerIntoSlowTrafficV2", "MergerIntoSlowTraffic",
        "NonSignalizedJunctionLeftTurn", "NonSignalizedJunctionRightTurn",
        "NonSignalizedJunctionLeftTurnEnterFlow", "ParkingExit", "SequentialLaneChange",
        "SignalizedJunctionLeftTurn", "SignalizedJunctionRightTurn", "SignalizedJunctionLeftTurnEnterFlow",
    }),
    "Emergency_Brake": frozenset({
        "BlockedIntersection", "DynamicObjectCrossing", "HardBreakRoute", "OppositeVehicleTakingPriority",
        "OppositeVehicleRunningRedLight", "ParkingCutIn", "PedestrianCrossing", "ParkingCrossingPedestrian",
        "StaticCutIn", "VehicleTurningRoute", "VehicleTurningRoutePedestrian", "ControlLoss",
    }),
    "Give_Way": frozenset({"InvadingTurn", "YieldToEmergencyVehicle"}),
    "Traffic_Signs": frozenset({
        "BlockedIntersection", "OppositeVehicleTakingPriority", "OppositeVehicleRunningRedLight",
        "PedestrianCrossing", "VehicleTurningRoute", "VehicleTurningRoutePedestrian", "EnterActorFlow",
        "CrossingBicycleFlow", "NonSignalizedJunctionLeftTurn", "NonSignalizedJunctionRightTurn",
        "NonSignalizedJunctionLeftTurnEnterFlow", "SignalizedJunctionLeftTurn", "SignalizedJunctionRightTurn",
        "SignalizedJunctionLeftTurnEnterFlow", "T_Junction", "VanillaNonSignalizedTurn",
        "VanillaSignalizedTurnEncounterGreenLight", "VanillaSignalizedTurnEncounterRedLight",
        "VanillaNonSignalizedTurnEncounterStopsign",
    }),
}
ABILITY_NAMES: tuple[str, ...] = tuple(ABILITIES)
KNOWN_SCENARIO_TYPES: frozenset[str] = frozenset().union(*ABILITIES.values())
BENCHMARKS = ("v0.0.3", "v0.0.4")
# Upstream: "+8 to ensure the ego pass the trigger volume".
JUNCTION_MARGIN_WAYPOINTS = 8

# (first_junction_count, dense_route_length) for a route, where count is 1-based as upstream counts it.
JunctionLookup = Callable[[Route], "tuple[int, int] | None"]


class JunctionUnavailable(RuntimeError):
    """The junction check cannot run (no carla client, CARLA's planner or maps); Traffic_Signs is then not computable."""


class RouteTraceError(RuntimeError):
    """CARLA's planner failed on one route: that route gets no junction credit (upstream stops there)."""


@dataclass(frozen=True)
class AbilityScore:
    name: str
    successes: int
    total: int
    rate: float | None  # 0-1, None when not computable
    note: str = ""

    @property
    def computable(self) -> bool:
        return self.rate is not None


@dataclass(frozen=True)
class AbilityResults:
    benchmark: str
    scores: tuple[AbilityScore, ...]
    mean: float | None  # mean of the five, None if any is not computable
    mean_of_computable: float | None
    crashed: tuple[tuple[str, str], ...]  # (scenario type, route id) of routes without a record
    notes: tuple[str, ...]

    def rate(self, name: str) -> float | None:
        return next(s.rate for s in self.scores if s.name == name)


def canonical_scenario_type(name: str) -> str:
    """Map a scenario type to the spelling used in the ability lists (case-insensitive), if one exists."""
    if name in KNOWN_SCENARIO_TYPES:
        return name
    lowered = {known.lower(): known for known in KNOWN_SCENARIO_TYPES}
    return lowered.get(name.lower(), name)


def junction_passes(record: RouteRecord, count: int, length: int) -> bool:
    """Upstream's partial credit: completion beyond the first junction (+8 m) and no stop/red-light infraction."""
    junction_completion = float(count + JUNCTION_MARGIN_WAYPOINTS) / length
    return (
        record.score_route / 100.0 > junction_completion
        and not record.infractions.get("stop_infraction")
        and not record.infractions.get("red_light")
    )


def compute_abilities(
    routes: Sequence[Route],
    records: Mapping[str, RouteRecord],
    benchmark: str = "v0.0.3",
    junction_lookup: JunctionLookup | None = None,
) -> AbilityResults:
    """Ability success rates over `routes` (one scenario type each, the first), with records keyed by route id.

    v0.0.3: every Traffic_Signs route counts twice in the denominator: once for full success and once for the
    junction check. v0.0.4: the junction check only gives credit to failed routes, each counted once.
    Routes without a record leave the denominators and are listed in `crashed`. Without a junction lookup
    (no maps) Traffic_Signs is reported as not computable.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {', '.join(BENCHMARKS)}, got {benchmark!r}")
    successes = {name: 0 for name in ABILITY_NAMES}
    totals = {name: 0 for name in ABILITY_NAMES}
    crashed: list[tuple[str, str]] = []
    notes: list[str] = []
    traffic_sign_problem = "" if junction_lookup is not None else "needs the junction check on CARLA maps (--carla-root)"
    unknown_types: set[str] = set()
    respelt: set[str] = set()
    # Only the junction check (map loading, route tracing) is slow enough to need a progress bar.
    progress = tqdm(routes, desc="abilities (junction check)", unit="route", disable=None if junction_lookup else True)
    for route in progress:
        scenario = canonical_scenario_type(route.scenario_type)
        if scenario != route.scenario_type:
            respelt.add(f"{route.scenario_type} -> {scenario}")
        record = records.get(route.route_id)
        if record is None:
            crashed.append((scenario, route.route_id))
            continue
        success = record.success
        member_of = [name for name in ABILITY_NAMES if scenario in ABILITIES[name]]
        if not member_of:
            unknown_types.add(scenario)
        for name in member_of:
            totals[name] += 1
            successes[name] += int(success)
        if scenario not in ABILITIES["Traffic_Signs"]:
            continue
        needs_check = benchmark == "v0.0.3" or not success
        if not needs_check:
            continue
        if benchmark == "v0.0.3":
            totals["Traffic_Signs"] += 1
        if traffic_sign_problem:
            continue
        try:
            found = junction_lookup(route)  # type: ignore[misc]
        except JunctionUnavailable as error:
            traffic_sign_problem = str(error)
            continue
        except RouteTraceError as error:
            notes.append(f"route {route.route_id}: {error}; no junction credit (upstream stops here)")
            continue
        if found is None:
            # Upstream raises here and stops; we give no partial credit and say so.
            notes.append(f"route {route.route_id}: no junction waypoint on the dense route; no junction credit")
            continue
        count, length = found
        successes["Traffic_Signs"] += int(junction_passes(record, count, length))
    if unknown_types:
        notes.append("scenario types in no ability (counted nowhere): " + ", ".join(sorted(unknown_types)))
    if respelt:
        notes.append("scenario type spellings normalised: " + ", ".join(sorted(respelt)))
    if crashed:
        notes.append(f"{len(crashed)} route(s) without a result leave the ability denominators (upstream's 'crashed')")
    scores = []
    for name in ABILITY_NAMES:
        if name == "Traffic_Signs" and traffic_sign_problem:
            scores.append(AbilityScore(name, successes[name], totals[name], None, f"not computable: {traffic_sign_problem}"))
        elif totals[name] == 0:
            scores.append(AbilityScore(name, 0, 0, None, "no evaluated route of this ability"))
        else:
            scores.append(AbilityScore(name, successes[name], totals[name], successes[name] / totals[name]))
    rates = [s.rate for s in scores if s.rate is not None]
    mean = sum(rates) / len(rates) if len(rates) == len(scores) else None
    mean_of_computable = sum(rates) / len(rates) if rates else None
    return AbilityResults(benchmark, tuple(scores), mean, mean_of_computable, tuple(crashed), tuple(notes))
