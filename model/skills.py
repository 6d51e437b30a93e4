"""Driving-skill classes of the action router and the Bench2Drive scenario-type -> skill mapping.

Classes and the mapping follow the DriveMoE authors (see docs/training.md). A clip name is
`<Scenario>_<Town>_Route<id>_Weather<id>`; its scenario type gives the skill of the clip's frames,
frames influenced by a stop sign or a traffic light are TRAFFIC_SIGN, and when several labels
apply to one frame the most safety-critical one wins (SAFETY_PRIORITY).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from enum import IntEnum


class Skill(IntEnum):
    """Action-router class ids (the order of the authors' scenario labels and focal-loss counts)."""

    MERGING = 0
    PARKING_EXIT = 1
    OVERTAKING = 2
    EMERGENCY_BRAKE = 3
    GIVEWAY = 4
    TRAFFIC_SIGN = 5
    NORMAL = 6


SKILL_NAMES: tuple[str, ...] = tuple(s.name for s in Skill)
NUM_SKILLS = len(SKILL_NAMES)


def expert_names(num_experts: int) -> tuple[str, ...]:
    """Names of an action router's experts: the skill names (Skill order) when there is one expert per
    skill (7); any other count has no expert-to-skill correspondence, so the experts are "expert 0".."expert N-1"."""
    return SKILL_NAMES if num_experts == NUM_SKILLS else tuple(f"expert {e}" for e in range(num_experts))

# Most safety-critical first: an imminent-collision response beats yielding, yielding beats a
# planned manoeuvre around an obstacle, which beats merging into flow; NORMAL only when nothing applies.
SAFETY_PRIORITY: tuple[Skill, ...] = (
    Skill.EMERGENCY_BRAKE,
    Skill.GIVEWAY,
    Skill.OVERTAKING,
    Skill.MERGING,
    Skill.PARKING_EXIT,
    Skill.TRAFFIC_SIGN,
    Skill.NORMAL,
)

_EXACT: dict[str, Skill] = {}
for _skill, _names in {
    Skill.MERGING: (
        "LaneChange",
        "SequentialLaneChange",
        "HighwayExit",
        "InterurbanActorFlow",
        "MergerIntoSlowTraffic",
        "MergerIntoSlowTrafficV2",
        "CrossingBicycleFlow",
        "EnterActorFlow",
        "EnterActorFlowV2",
        "NonSignalizedJunctionLeftTurn",
        "NonSignalizedJunctionRightTurn",
        "NonSignalizedJunctionLeftTurnEnterFlow",
        "SignalizedJunctionLeftTurn",
        "SignalizedJunctionRightTurn",
        "SignalizedJunctionLeftTurnEnterFlow",
    ),
    Skill.PARKING_EXIT: ("ParkingExit",),
    Skill.EMERGENCY_BRAKE: (
        "BlockedIntersection",
        "DynamicObjectCrossing",
        "PedestrianCrossing",
        "ParkingCrossingPedestrian",
        "VehicleTurningRoute",
        "VehicleTurningRoutePedestrian",
        "OppositeVehicleTakingPriority",
        "OppositeVehicleRunningRedLight",
        "HardBreakRoute",
        "ParkingCutIn",
        "StaticCutIn",
        "ControlLoss",
    ),
    Skill.GIVEWAY: (
        "InvadingTurn",
        "YieldToEmergencyVehicle",
        "HighwayCutIn",
        "InterurbanAdvancedActorFlow",
    ),
    Skill.TRAFFIC_SIGN: (
        "VanillaNonSignalizedTurnEncounterStopsign",
        "VanillaSignalizedTurnEncounterRedLight",
        "VanillaSignalizedTurnEncounterGreenLight",
    ),
    # Bench2Drive-Base names its T-junction clips "TJunction_..." (docs/bench2drive_base_1000.json).
    Skill.NORMAL: ("T_Junction", "TJunction", "VanillaNonSignalizedTurn", "VanillaSignalizedTurn", "NORMAL"),
}.items():
    for _name in _names:
        _EXACT[_name] = _skill
# Families: every variant (TwoWays, ...) of these obstacle scenarios is an overtaking scene.
_OVERTAKING_PREFIXES: tuple[str, ...] = (
    "Accident",
    "ConstructionObstacle",
    "HazardAtSideLane",
    "ParkedObstacle",
    "VehicleOpensDoor",
)
# The label names of the authors' released scenario-label files and the class each maps to, as in
# their src/data/camera_scenario_map.py (get_scenario_id). Their data/data.md puts traffic-light
# scenes under NORMAL; their code maps TRAFFIC_LIGHT to TRAFFIC_SIGN, and the code is what trained.
AUTHORS_LABEL_NAMES: dict[str, Skill] = {
    "MERGING": Skill.MERGING,
    "MERGING_HIGHWAY": Skill.MERGING,
    "MERGING_JUNCTION": Skill.MERGING,
    "PARKING_EXIT": Skill.PARKING_EXIT,
    "OVERTAKING": Skill.OVERTAKING,
    "EMERGENCY_BRAKE": Skill.EMERGENCY_BRAKE,
    "GIVEWAY": Skill.GIVEWAY,
    "GIVEWAY_HIGHWAY": Skill.GIVEWAY,
    "TRAFFIC_LIGHT": Skill.TRAFFIC_SIGN,
    "TRAFFIC_SIGN": Skill.TRAFFIC_SIGN,
    "NORMAL": Skill.NORMAL,
}
# The scenario is everything before "_Town<id>"; the rest is checked loosely because one
# Bench2Drive-Base folder is cut short ("VehicleTurningRoutePedestrian_Town15_Route523_Weathe").
_CLIP_NAME = re.compile(r"^(?P<scenario>.+?)_(?P<town>Town\d+[A-Za-z0-9]*)_Route(?P<route>\d+)(_W[a-z]*\d*)?$")


def scenario_of_clip_name(clip_name: str) -> str:
    """Scenario type of a Bench2Drive-Base clip folder name, e.g. 'Accident' from
    'Accident_Town03_Route101_Weather23'."""
    match = _CLIP_NAME.match(clip_name)
    if match is None:
        raise ValueError(
            f"clip name {clip_name!r} does not follow <Scenario>_<Town>_Route<id>_Weather<id>"
        )
    return match.group("scenario")


def skill_of_scenario(scenario_type: str) -> Skill:
    """Skill of a Bench2Drive scenario type; ValueError naming the type if it is unknown."""
    if scenario_type in _EXACT:
        return _EXACT[scenario_type]
    if scenario_type.startswith(_OVERTAKING_PREFIXES):
        return Skill.OVERTAKING
    raise ValueError(f"unknown Bench2Drive scenario type {scenario_type!r}: no skill mapping for it")


def skill_from_name(name: str) -> Skill:
    """A skill given by class name ('OVERTAKING'), by a label name of the authors' scenario-label
    files ('MERGING_HIGHWAY', 'TRAFFIC_LIGHT', ...) or by scenario type ('Accident')."""
    if name in AUTHORS_LABEL_NAMES:
        return AUTHORS_LABEL_NAMES[name]
    if name in SKILL_NAMES:
        return Skill[name]
    try:
        return skill_of_scenario(name)
    except ValueError:
        raise ValueError(
            f"unknown skill label {name!r}: expected one of {sorted(AUTHORS_LABEL_NAMES)} or a Bench2Drive scenario type"
        ) from None


def most_critical(skills: Iterable[Skill | int]) -> Skill:
    """The most safety-critical of several applicable skills; NORMAL when none is given."""
    present = {Skill(int(s)) for s in skills}
    for skill in SAFETY_PRIORITY:
        if skill in present:
            return skill
    return Skill.NORMAL


def frame_skill(scenario_type: str | None, traffic_control_active: bool = False) -> Skill:
    """Skill label of one frame: the scenario's skill, TRAFFIC_SIGN if a stop sign or traffic
    light influences the ego at that frame, the most safety-critical of these."""
    labels: list[Skill] = []
    if scenario_type is not None:
        labels.append(skill_of_scenario(scenario_type))
    if traffic_control_active:
        labels.append(Skill.TRAFFIC_SIGN)
    return most_critical(labels)
