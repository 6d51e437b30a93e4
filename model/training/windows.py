"""The training windows of one clip: which frames form them and the values they hold.

Geometry (the DriveMoE authors' `window.py 5 10`): a clip of N annotations gives N - 10 windows,
current frame t = 0 … N - 11. The conditioning steps are t-4 … t with frames before the first one
replaced by frame 0 (t = 1 uses frames 0, 0, 0, 0, 1); the future is t … t+9, so the last
annotation is never used. Values per frame (`read_frame`): the ego position from the ego box
(`bounding_boxes[0]['location']`, where the authors read it; the annotation's `x`/`y` is the GNSS
antenna, 1.4 m behind it), compass `theta`, `speed`, `acceleration`, `angular_velocity` and the far
command. A value that is missing, None or not finite makes every window that uses that frame for
that field unusable: `window_problem` names the frame and the field, and the window is skipped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from model.ego_state import EgoWorldRecord, ego_history_from_world_records, world_to_ego
from model.training.index import COND_STEPS, HORIZON_STEPS

DEFAULT_LAYOUT = "default"
AUTHORS_LAYOUT = "authors"
LAYOUTS: tuple[str, ...] = (DEFAULT_LAYOUT, AUTHORS_LAYOUT)
MIN_FRAMES = HORIZON_STEPS + 1  # one window needs 10 future frames plus the dropped last annotation
EGO_BOX_LOCATION = "bounding_boxes[0]['location']"
# Fields read from the conditioning frames; the ego position is read from the current and future frames.
HISTORY_FIELDS: tuple[str, ...] = ("theta", "speed", "acceleration", "angular_velocity", "x_command_far", "y_command_far")


def window_starts(num_frames: int) -> range:
    """Positions (0-based, into the clip's frames) of the current frame of every window."""
    return range(max(0, num_frames - HORIZON_STEPS))


def history_positions(t: int) -> list[int]:
    """Positions of the conditioning steps t-4 … t, repeating position 0 before the clip starts."""
    return [max(t - back, 0) for back in range(COND_STEPS - 1, -1, -1)]


def future_positions(t: int) -> range:
    return range(t, t + HORIZON_STEPS)


@dataclass(frozen=True)
class FrameValues:
    """The values of one annotation; a field that could not be read is None and explained in `problems`."""

    position: tuple[float, float] | None
    values: dict[str, object]
    problems: dict[str, str] = field(default_factory=dict)


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_MISSING = object()


def _describe(value: object) -> str:
    return "missing" if value is _MISSING else f"{value!r}"


def _ego_position(annotation: dict) -> tuple[tuple[float, float] | None, str | None]:
    boxes = annotation.get("bounding_boxes")
    if not isinstance(boxes, list) or not boxes or not isinstance(boxes[0], dict):
        return None, f"annotation field 'bounding_boxes' is {_describe(annotation.get('bounding_boxes', _MISSING))}, expected the ego box first"
    box = boxes[0]
    if box.get("class", "ego_vehicle") != "ego_vehicle":
        return None, f"bounding_boxes[0] has class {box.get('class')!r}, expected 'ego_vehicle'"
    location = box.get("location", _MISSING)
    if not (isinstance(location, list) and len(location) >= 2 and all(_finite_number(v) for v in location[:2])):
        return None, f"annotation field {EGO_BOX_LOCATION} is {_describe(location)}, expected finite x, y"
    return (float(location[0]), float(location[1])), None


def read_frame(annotation: dict) -> FrameValues:
    """Every value a window may take from this annotation, each checked on its own."""
    values: dict[str, object] = {}
    problems: dict[str, str] = {}
    for key in ("theta", "speed", "x_command_far", "y_command_far"):
        value = annotation.get(key, _MISSING)
        if _finite_number(value):
            values[key] = float(value)
        else:
            problems[key] = f"annotation field {key!r} is {_describe(value)}, expected a finite number"
    for key in ("acceleration", "angular_velocity"):
        value = annotation.get(key, _MISSING)
        if isinstance(value, list) and len(value) == 3 and all(_finite_number(v) for v in value):
            values[key] = tuple(float(v) for v in value)
        else:
            problems[key] = f"annotation field {key!r} is {_describe(value)}, expected 3 finite numbers"
    position, problem = _ego_position(annotation)
    if problem is not None:
        problems[EGO_BOX_LOCATION] = problem
    return FrameValues(position=position, values=values, problems=problems)


def window_problem(frames: list[FrameValues], frame_ids: tuple[int, ...] | list[int], t: int) -> str | None:
    """Why the window at position t cannot be built (first bad frame and field), or None."""
    for p in sorted(set(history_positions(t))):
        for key in HISTORY_FIELDS:
            if key in frames[p].problems:
                return f"frame {frame_ids[p]}: {frames[p].problems[key]}"
    for p in future_positions(t):
        if EGO_BOX_LOCATION in frames[p].problems:
            return f"frame {frame_ids[p]}: {frames[p].problems[EGO_BOX_LOCATION]}"
    return None


def _record(frame: FrameValues) -> EgoWorldRecord:
    v = frame.values
    assert frame.position is not None
    return EgoWorldRecord(
        x=frame.position[0],
        y=frame.position[1],
        compass=v["theta"],
        speed=v["speed"],
        acceleration=v["acceleration"],
        angular_velocity=v["angular_velocity"],
        command_far=(v["x_command_far"], v["y_command_far"]),
    )


def build_window(frames: list[FrameValues], t: int, layout: str = DEFAULT_LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    """(ego_state [5, 10] raw, actions [10, 2] metres) of the window at position t (check it first).

    Default layout: theta = wrap(compass_step - compass_t) (model.ego_state, as the agent computes
    it live). Authors' layout: the plain difference, which jumps by 2π when the history crosses north.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {LAYOUTS}")
    history = [_record(frames[p]) for p in history_positions(t)]
    ego = ego_history_from_world_records(history).as_array()
    if layout == AUTHORS_LAYOUT:
        now = history[-1].compass - math.pi / 2.0
        ego[:, 7] = np.array([(r.compass - math.pi / 2.0) - now for r in history], dtype=np.float32)
    current = history[-1]
    future = np.array([frames[p].position for p in future_positions(t)], dtype=np.float64)
    actions = world_to_ego(future, np.array([current.x, current.y]), current.compass).astype(np.float32)
    return ego, actions
