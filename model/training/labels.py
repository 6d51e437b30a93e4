"""Camera and scenario (skill) label files, in the DriveMoE authors' per-clip format.

Camera labels: `<clip name>.json`, a JSON object mapping the 10 Hz frame index (a string) to a
camera name ("CAM_FRONT_LEFT", ...) or "NULL"; NULL is trained as CAM_BACK (router class 2).
Scenario labels (optional): `<clip name>.json` mapping the frame index to a label name. The
authors' released files use the names of their camera_scenario_map.py (MERGING, MERGING_HIGHWAY,
MERGING_JUNCTION, PARKING_EXIT, OVERTAKING, EMERGENCY_BRAKE, GIVEWAY, GIVEWAY_HIGHWAY,
TRAFFIC_LIGHT -> TRAFFIC_SIGN, TRAFFIC_SIGN, NORMAL; model.skills.AUTHORS_LABEL_NAMES); a scenario
type ("Accident"), a class id (0-6) or a list of these (a composite scene; the most
safety-critical one wins) are accepted too. Without a scenario label file the skill comes from the
clip's scenario type plus stop-sign / traffic-light influence read from the annotation.
"""
from __future__ import annotations

import json
from pathlib import Path

from model.cameras import router_class_of_label
from model.errors import DriveMoEError
from model.skills import Skill, frame_skill, most_critical, skill_from_name


class LabelError(DriveMoEError):
    """A label file is missing, unreadable, or holds a value we do not know."""


def _read_frame_map(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelError(f"label file missing: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LabelError(f"label file {path} is not readable JSON ({error})") from None
    if not isinstance(value, dict):
        raise LabelError(f"label file {path}: expected a JSON object frame -> label, got {type(value).__name__}")
    out = {}
    for key, label in value.items():
        try:
            out[int(key)] = label
        except ValueError:
            raise LabelError(f"label file {path}: frame key {key!r} is not an integer") from None
    return out


def check_labels_cover_clip(path: Path, labels: dict, frames: tuple[int, ...]) -> None:
    """LabelError unless the file labels exactly the clip's frames (the authors' generate_action.py
    rejects a clip whose label count differs from its annotation count)."""
    missing = sorted(set(frames) - set(labels))
    extra = sorted(set(labels) - set(frames))
    if missing or extra:
        raise LabelError(
            f"label file {path}: labels {len(labels)} frames, the clip has {len(frames)}"
            f"{f'; missing frames {missing[:5]}' if missing else ''}{f'; extra frames {extra[:5]}' if extra else ''}"
            " (--layout authors skips such clips, as the authors' pipeline does)"
        )


def label_file(label_dir: Path, clip_name: str) -> Path:
    return Path(label_dir) / f"{clip_name}.json"


def read_camera_labels(path: Path) -> dict[int, int]:
    """frame index -> camera-router class (0..4) from an authors' camera label file."""
    classes = {}
    for frame, label in _read_frame_map(Path(path)).items():
        if not isinstance(label, str):
            raise LabelError(f"camera label file {path}: frame {frame} has non-string label {label!r}")
        try:
            classes[frame] = router_class_of_label(label)
        except ValueError as error:
            raise LabelError(f"camera label file {path}: frame {frame}: {error}") from None
    return classes


def _skill_of_value(value: object, path: Path, frame: int) -> Skill:
    if isinstance(value, list):
        return most_critical(_skill_of_value(v, path, frame) for v in value)
    if isinstance(value, bool):
        raise LabelError(f"scenario label file {path}: frame {frame} has label {value!r}")
    if isinstance(value, int):
        if not 0 <= value < len(Skill):
            raise LabelError(f"scenario label file {path}: frame {frame} has class {value}, expected 0..{len(Skill) - 1}")
        return Skill(value)
    if isinstance(value, str):
        try:
            return skill_from_name(value)
        except ValueError as error:
            raise LabelError(f"scenario label file {path}: frame {frame}: {error}") from None
    raise LabelError(f"scenario label file {path}: frame {frame} has label {value!r} of type {type(value).__name__}")


def read_scenario_labels(path: Path) -> dict[int, Skill]:
    """frame index -> skill class from a scenario label file (see the module docstring)."""
    return {frame: _skill_of_value(v, Path(path), frame) for frame, v in _read_frame_map(Path(path)).items()}


def traffic_control_active(annotation: dict) -> bool:
    """Whether a stop sign or a red/yellow traffic light affects the ego in this annotation.

    Bench2Drive boxes of class traffic_sign / traffic_light carry `affects_ego`; stop signs have a
    `type_id` containing 'stop', lights a `state` (0 red, 1 yellow, 2 green in CARLA's enum order).
    """
    for box in annotation.get("bounding_boxes") or ():
        if not isinstance(box, dict) or not box.get("affects_ego"):
            continue
        kind = box.get("class")
        if kind == "traffic_sign" and "stop" in str(box.get("type_id", "")).lower():
            return True
        if kind == "traffic_light" and box.get("state") in (0, 1, "Red", "Yellow"):
            return True
    return False


def skill_of_frame_annotation(scenario_type: str | None, annotation: dict) -> Skill:
    """Skill of a frame without a scenario label file: scenario type and traffic control."""
    return frame_skill(scenario_type, traffic_control_active(annotation))
